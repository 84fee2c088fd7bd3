"""An OpenAI-compatible HTTP backend: vLLM, SGLang, llama.cpp server, Ollama, or any server speaking the API.

This is how a deployment outgrows one machine: several bot processes share one model server cluster.

- Chat prompts go to `POST {base_url}/chat/completions` (the server applies the model's chat template); raw
  text prompts (the seed formats: comedy, dialret, dialogpt, godel) to `POST {base_url}/completions`.
- A batch from the jobs is sent as concurrent requests, at most `concurrency` in flight (a thread pool over one
  pooled HTTP client); results come back in the batch's order.
- Every request has the configured timeout. Connection failures, 408, 429 and 5xx are retried with exponential
  backoff (a 429/503 `Retry-After` is honoured, capped); a request that times out is not retried, since the
  server is busy and a retry would only double the wait. When the attempts are used up a `BackendError` is
  raised: the dispatcher apologises and keeps the person's message; the jobs postpone and try later.
- The API key comes from the environment variable named by `model.api_key_env`, is sent as
  `Authorization: Bearer …` and never appears in logs or error messages.
- `count_tokens` is an estimate (the server's tokenizer is not here): ~4 characters per token for ASCII text,
  one per other character, never fewer than the words; it errs high, so prompts stay inside the budget.
- Settings beyond the OpenAI API (`top_k`, `repetition_penalty`, `min_tokens`, `add_special_tokens: false`
  for prompts that carry their own `<s>`) are sent when a profile needs them; vLLM and SGLang read them,
  llama.cpp and Ollama ignore what they do not know. A server that rejects them (HTTP 400 naming one) gets the
  request again without them, and from then on never sees them. `no_repeat_ngram_size` has no API equivalent.
- `stream()` uses server-sent events (`"stream": true`) for growing replies.

The model worker calls `generate` from its inference thread; the backend is synchronous (httpx's thread-safe
client and a thread pool), so it never touches the bot's event loop.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import httpx

from models.base import (
    BackendError,
    Capabilities,
    Generation,
    GenParams,
    Prompt,
    TokenizerInfo,
    estimate_tokens,
    stop_if_cancelled,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_EXTRA_KEYS = ("top_k", "repetition_penalty", "min_tokens", "add_special_tokens")


class _Retry(Exception):
    """One attempt failed in a way worth another try; `delay` is the server's Retry-After, if any."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class ServerRejected(BackendError):
    """The server answered with a client error (4xx other than 408/429): retrying the same request won't help."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    device = "remote"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        concurrency: int = 8,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise BackendError('model.base_url is required with backend = "openai" (e.g. "http://127.0.0.1:8000/v1")')
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model or "openai"
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._api_key = api_key or None
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, connect_timeout)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            transport=transport,
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="membot-openai")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._extras_ok = True

    @classmethod
    def from_settings(cls, settings: Any) -> OpenAIBackend:
        """`settings` is a bot.config.ModelSettings: base_url, name, api_key_env, timeout, concurrency."""
        env = settings.api_key_env
        api_key = os.environ.get(env) if env else None
        if env and not api_key:
            log.info("no API key in $%s; calling the model server without one", env)
        return cls(
            settings.base_url or "", settings.name, api_key=api_key, timeout=settings.timeout,
            concurrency=settings.concurrency,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # -- Engine protocol ------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def tokenizer_info(self) -> TokenizerInfo:
        return TokenizerInfo()  # the server's tokenizer is not ours to call: estimates

    capabilities = Capabilities(streaming=True)  # the server batches and schedules on its side

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams, *, on_text: Callable[[str], None] | None = None,
        between_steps: Callable[[], None] | None = None, max_rows: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Generation]:
        """`cancelled` is polled between streamed chunks, and every 50 ms while requests are out (a request
        already sent is left to finish on the server; its answer is dropped)."""
        if not prompts:
            return []
        if on_text is not None:
            if len(prompts) != 1:
                raise ValueError("streaming takes exactly one prompt")
            return [self._stream(prompts[0], params, on_text, cancelled)]
        self._check_open()
        model = self._model_name()
        futures = [self._pool.submit(self._complete, p, params, model) for p in prompts]
        try:
            while not all(f.done() for f in futures):
                stop_if_cancelled(cancelled)
                concurrent.futures.wait(futures, timeout=0.05, return_when=concurrent.futures.FIRST_EXCEPTION)
                if any(f.done() and f.exception() is not None for f in futures):
                    break
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _stream(self, prompt: Prompt, params: GenParams, on_text: Callable[[str], None],
                cancelled: Callable[[], bool] | None = None) -> Generation:
        """One prompt over server-sent events; `on_text` gets the growing text. Retried only before any text."""
        self._check_open()
        model = self._model_name()
        path, payload = self._payload(prompt, params, model)
        payload["stream"] = True
        pieces: list[str] = []
        chunks = 0

        def attempt(body: dict[str, Any]) -> None:
            nonlocal chunks
            for delta in self._sse(path, body):
                stop_if_cancelled(cancelled)  # raising leaves the loop, which closes the stream
                if delta:
                    pieces.append(delta)
                    chunks += 1
                    on_text("".join(pieces))

        self._send_with_extras(attempt, payload)
        text = _cut_at_stops("".join(pieces), params.stop)
        if not text.strip() and _retry_empty(params):
            result = self._complete(prompt, params, model)
            if result.text:
                on_text(result.text)
            return result
        return Generation(text=text, new_tokens=chunks or estimate_tokens(text))

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- requests -------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise BackendError("the model server connection is closed")

    def _model_name(self) -> str:
        """The configured model, or the server's first listed model (llama.cpp and single-model vLLM)."""
        with self._lock:
            if self.model:
                return self.model
            data = self._with_retries(lambda: self._json(self._get("models")))
            try:
                self.model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as exc:
                raise BackendError("model.name is not set and the model server lists no model") from exc
            self.name = self.model
            log.info("model server %s serves %s", self.base_url, self.model)
            return self.model

    def _payload(self, prompt: Prompt, params: GenParams, model: str) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "max_tokens": params.max_new_tokens}
        if prompt.messages is not None:
            path = "chat/completions"
            body["messages"] = [{"role": role, "content": content} for role, content in prompt.messages]
        else:
            path = "completions"
            body["prompt"] = prompt.text
            if not prompt.add_special_tokens:
                body["add_special_tokens"] = False  # the text carries its own <s> (vLLM, SGLang)
        if params.do_sample and params.temperature > 0:
            body["temperature"] = params.temperature
            if params.top_p < 1.0:
                body["top_p"] = params.top_p
            if params.top_k > 0:
                body["top_k"] = params.top_k
        else:
            body["temperature"] = 0.0
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if params.min_new_tokens:
            body["min_tokens"] = params.min_new_tokens
        if params.stop:
            body["stop"] = [s for s in params.stop if s][:4]
        if params.seed is not None:
            body["seed"] = params.seed
        return path, body

    def _complete(self, prompt: Prompt, params: GenParams, model: str) -> Generation:
        path, payload = self._payload(prompt, params, model)
        data = self._send_with_extras(lambda body: self._with_retries(lambda: self._json(self._post(path, body))),
                                      payload)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice.get("text")
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError("the model server's answer has no choices") from exc
        text = _cut_at_stops(str(text or ""), params.stop)
        usage = data.get("usage") or {}
        new_tokens = int(usage.get("completion_tokens") or estimate_tokens(text))
        retries = _retry_empty(params)
        if not text.strip() and retries:
            log.debug("empty completion; sampling again (%d left)", retries)
            again = replace(params, retry_empty=retries - 1, seed=None if params.seed is None else params.seed + 1)
            return self._complete(prompt, again, model)
        return Generation(text=text, new_tokens=new_tokens)

    def _send_with_extras(self, send: Callable[[dict[str, Any]], Any], payload: dict[str, Any]) -> Any:
        """Send with the non-OpenAI settings; if the server rejects one of them, without them from then on."""
        extras = [k for k in _EXTRA_KEYS if k in payload]
        if extras and not self._extras_ok:
            payload = {k: v for k, v in payload.items() if k not in extras}
            extras = []
        try:
            return send(payload)
        except ServerRejected as exc:
            named = [k for k in extras if k in exc.body] or (extras if "unrecognized" in exc.body.lower() else [])
            if exc.status not in (400, 422) or not named:
                raise
            log.warning("the model server rejects %s; sending plain OpenAI settings from now on", ", ".join(named))
            self._extras_ok = False
            return send({k: v for k, v in payload.items() if k not in extras})

    def _get(self, path: str) -> httpx.Response:
        try:
            return self._client.get(path)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            response = self._client.post(path, json=payload)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._raise_for_status(response)
        return response

    def _sse(self, path: str, payload: dict[str, Any]) -> Iterator[str]:
        """Deltas of a streamed completion. Before the first text, failures are retried like any request."""

        def open_stream() -> tuple[Any, httpx.Response]:
            context = self._client.stream("POST", path, json=payload)
            try:
                response = context.__enter__()
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
            if response.status_code != 200:
                response.read()
                context.__exit__(None, None, None)
                self._raise_for_status(response)
            return context, response

        context, response = self._with_retries(open_stream)
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    choice = json.loads(data)["choices"][0]
                except (ValueError, KeyError, IndexError, TypeError):
                    continue
                delta = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
                if delta:
                    yield str(delta)
        except httpx.HTTPError as exc:
            raise BackendError(f"the model server's stream broke off: {type(exc).__name__}") from exc
        finally:
            context.__exit__(None, None, None)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        self._raise_for_status(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise BackendError("the model server's answer is not JSON") from exc
        if not isinstance(data, dict):
            raise BackendError("the model server's answer is not a JSON object")
        return data

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        body = self._redact(response.text[:500])
        if status in RETRY_STATUSES:
            raise _Retry(f"HTTP {status}", retry_after(response.headers.get("retry-after")))
        if status in (401, 403):
            raise ServerRejected(f"the model server refused the API key (HTTP {status})", status, body)
        raise ServerRejected(f"the model server answered HTTP {status}: {body[:200]}", status, body)

    def _transport_error(self, exc: httpx.HTTPError) -> Exception:
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.RemoteProtocolError |
                      httpx.ReadError | httpx.WriteError):
            return _Retry(f"cannot reach {self.base_url} ({type(exc).__name__})")
        if isinstance(exc, httpx.TimeoutException):
            return BackendError(f"the model server did not answer within {self.timeout:g}s")
        return BackendError(f"request to the model server failed ({type(exc).__name__})")

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        last: _Retry | None = None
        for number in range(self.max_retries + 1):
            self._check_open()
            try:
                return attempt()
            except _Retry as exc:
                last = exc
            if number == self.max_retries:
                break
            delay = last.delay if last.delay is not None else self.backoff * 2**number * (1 + 0.1 * random.random())
            delay = min(delay, self.max_backoff)
            log.warning("model server: %s; retrying in %.1fs (%d/%d)", last.reason, delay, number + 1,
                        self.max_retries)
            if self._closed.wait(delay):
                break
        reason = last.reason if last else "closed"
        raise BackendError(f"the model server is unavailable: {reason} after {self.max_retries + 1} attempt(s)")

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _retry_empty(params: GenParams) -> int:
    return params.retry_empty if params.do_sample else 0


def _cut_at_stops(text: str, stops: Sequence[str]) -> str:
    for stop in stops:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
