"""A fake OpenAI-compatible model server on 127.0.0.1 (aiohttp), for the `openai` backend's tests.

It speaks the part of the API the backend uses: `GET /v1/models`, `POST /v1/chat/completions` and
`POST /v1/completions`, plain JSON or server-sent events (`"stream": true`). It runs on its own event loop in
a background thread, so synchronous code (the backend inside the model worker's thread) and subprocesses
(`membot chat`) can both call it:

    with FakeOpenAIServer(api_key="sk-test") as server:
        backend = OpenAIBackend(server.base_url, "fake-model", api_key="sk-test")

Scripted trouble: `fail(status, times, headers)` answers the next requests with an error, `delay` slows every
answer, `strict = True` rejects settings outside the OpenAI API like OpenAI does (HTTP 400). It records every
request (path, headers, JSON body) and the most requests it ever had in flight at once.

Answers: chat → "echo: <last user message>", completion → "completion: <last 40 characters of the prompt>",
unless `responder(path, body)` is set; `replies` (a list) is consumed first when not empty.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OPENAI_PARAMS = frozenset({
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user", "logprobs", "top_logprobs",
    "response_format", "stream_options", "suffix", "echo", "best_of",
})


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class _Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


class FakeOpenAIServer:
    def __init__(self, *, api_key: str | None = None, model: str = "fake-model", port: int = 0) -> None:
        self.api_key = api_key
        self.model = model
        self.port = port
        self.delay = 0.0
        self.strict = False
        self.responder: Callable[[str, dict[str, Any]], str] | None = None
        self.replies: list[str] = []
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: list[_Failure] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # -- control --------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, status: int, times: int = 1, headers: dict[str, str] | None = None, body: str = "") -> None:
        with self._lock:
            self._failures.extend(_Failure(status, dict(headers or {}), body) for _ in range(times))

    def posts(self, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.path != "/v1/models" and (path is None or r.path == path)]

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server ---------------------------------------------------------------------------------------
    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completion)
        app.router.add_post("/v1/completions", self._completion)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _authorised(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(Recorded(request.path, dict(request.headers), {}))
        if not self._authorised(request):
            return _error(401, "Incorrect API key provided.")
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            with self._lock:
                failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                return _error(failure.status, failure.body or f"scripted failure {failure.status}", failure.headers)
            if not self._authorised(request):
                return _error(401, "Incorrect API key provided.")
            if self.strict:
                unknown = sorted(set(body) - OPENAI_PARAMS)
                if unknown:
                    return _error(400, f"Unrecognized request argument supplied: {unknown[0]}")
            chat = request.path.endswith("/chat/completions")
            text = self._answer(request.path, body)
            if body.get("stream"):
                return await self._stream(request, text, chat)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if chat else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            return web.json_response({
                "id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                "model": body.get("model"), "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1},
            })
        finally:
            self.in_flight -= 1

    def _answer(self, path: str, body: dict[str, Any]) -> str:
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
        if self.responder is not None:
            return self.responder(path, body)
        if "messages" in body:
            users = [m["content"] for m in body["messages"] if m.get("role") == "user"]
            return "echo: " + (users[-1] if users else "")
        return "completion: " + str(body.get("prompt", ""))[-40:]

    async def _stream(self, request: web.Request, text: str, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "fake", "code": status}}, status=status,
                             headers=headers)
