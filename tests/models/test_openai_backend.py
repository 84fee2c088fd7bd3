"""The OpenAI-compatible backend against a fake server on 127.0.0.1: requests, retries, limits, secrets.

Also the promise the issue makes about a server that is down: the bot apologises, keeps the message, and the
memory jobs wait (nothing is lost); and the whole `membot chat` path with `backend = "openai"`.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.app import App
from bot.config import load_settings
from bot.dispatcher import APOLOGY
from bot.incoming import IncomingMessage
from models.base import BackendError, Cancelled, GenParams, Prompt
from models.factory import build_backend
from models.openai_backend import OpenAIBackend, retry_after
from models.profiles import get_profile
from models.profiles.base import ReplyInput, SessionInput
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-SECRET-4242"
GREEDY = GenParams(max_new_tokens=16)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=KEY) as srv:
        yield srv


def _backend(server: FakeOpenAIServer, **kwargs: object) -> OpenAIBackend:
    options: dict[str, object] = {"api_key": KEY, "backoff": 0.05, "timeout": 5.0}
    options.update(kwargs)
    return OpenAIBackend(server.base_url, "fake-model", **options)  # type: ignore[arg-type]


def _chat(text: str) -> Prompt:
    return Prompt(messages=(("system", "be nice"), ("user", text)))


def test_chat_prompts_go_to_chat_completions_with_the_key(server: FakeOpenAIServer) -> None:
    backend = _backend(server)
    try:
        out = backend.generate([_chat("Hello there")], GREEDY)
    finally:
        backend.close()
    assert out[0].text == "echo: Hello there" and out[0].new_tokens == 3
    [request] = server.posts()
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": "fake-model", "max_tokens": 16, "temperature": 0.0,
        "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Hello there"}],
    }


def test_text_prompts_go_to_completions_with_the_profiles_settings(server: FakeOpenAIServer) -> None:
    """COMEDY's raw prompt: its own <s>, so no BOS from the server; the published sampling settings."""
    comedy = get_profile("comedy")
    item = SessionInput("Ann", "Membot", "3 March 2024", (("Ann", "我喜欢猫"), ("Membot", "真好")))
    server.replies = ["【Ann喜欢猫|Membot觉得真好】"]
    backend = _backend(server)
    try:
        out = backend.generate([comedy.session_memory_prompt(item)], comedy.memory_params(64, 0))
    finally:
        backend.close()
    assert comedy.parse_session_memory(out[0].text, item) == ["Ann喜欢猫", "Membot觉得真好"]
    [request] = server.posts()
    assert request.path == "/v1/completions"
    assert request.body["prompt"] == comedy.session_memory_prompt(item).text
    assert request.body["add_special_tokens"] is False
    assert {k: request.body[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")} == {
        "temperature": 0.5, "top_p": 0.85, "top_k": 30, "repetition_penalty": 1.1, "max_tokens": 64,
    }


def test_a_server_that_rejects_extra_settings_gets_plain_openai_ones(server: FakeOpenAIServer) -> None:
    server.strict = True
    backend = _backend(server)
    params = GenParams(max_new_tokens=8, do_sample=True, temperature=0.5, top_k=30, repetition_penalty=1.1)
    try:
        assert backend.generate([_chat("hi")], params)[0].text == "echo: hi"
        assert backend.generate([_chat("again")], params)[0].text == "echo: again"
    finally:
        backend.close()
    first, second, third = server.posts()
    assert "top_k" in first.body and "top_k" not in second.body and "repetition_penalty" not in third.body
    assert len(server.posts()) == 3  # the rejection was learnt once


def test_500_then_success_is_retried(server: FakeOpenAIServer) -> None:
    server.fail(500)
    backend = _backend(server)
    try:
        assert backend.generate([_chat("hi")], GREEDY)[0].text == "echo: hi"
    finally:
        backend.close()
    assert len(server.posts()) == 2


def test_429_waits_for_retry_after(server: FakeOpenAIServer) -> None:
    server.fail(429, headers={"Retry-After": "1"})
    backend = _backend(server)
    started = time.monotonic()
    try:
        assert backend.generate([_chat("hi")], GREEDY)[0].text == "echo: hi"
    finally:
        backend.close()
    assert time.monotonic() - started >= 0.95
    assert len(server.posts()) == 2


def test_retry_after_header_forms() -> None:
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: go now


def test_too_many_failures_raise_backend_error(server: FakeOpenAIServer) -> None:
    server.fail(503, times=10)
    backend = _backend(server, max_retries=2)
    try:
        with pytest.raises(BackendError, match="unavailable: HTTP 503 after 3 attempt"):
            backend.generate([_chat("hi")], GREEDY)
    finally:
        backend.close()
    assert len(server.posts()) == 3


def test_a_down_server_raises_backend_error_quickly() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", backoff=0.01, max_retries=2)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError, match="cannot reach"):
            backend.generate([_chat("hi")], GREEDY)
    finally:
        backend.close()
    assert time.monotonic() - started < 5
    unnamed = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", None, backoff=0.01, max_retries=1)
    try:
        with pytest.raises(BackendError, match="cannot reach"):  # asking the server for its model name
            unnamed.generate([_chat("hi")], GREEDY)
    finally:
        unnamed.close()


def test_a_slow_server_times_out_without_retrying(server: FakeOpenAIServer) -> None:
    server.delay = 2.0
    backend = _backend(server, timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError, match=r"did not answer within 0\.5s"):
            backend.generate([_chat("hi")], GREEDY)
    finally:
        backend.close()
    assert time.monotonic() - started < 1.8
    assert len(server.posts()) == 1


def test_a_batch_runs_concurrently_within_the_limit(server: FakeOpenAIServer) -> None:
    server.delay = 0.3
    backend = _backend(server, concurrency=3)
    prompts = [_chat(f"message {i}") for i in range(9)]
    started = time.monotonic()
    try:
        out = backend.generate(prompts, GREEDY)
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    assert [g.text for g in out] == [f"echo: message {i}" for i in range(9)]  # in the batch's order
    assert server.max_in_flight == 3
    assert 0.85 < elapsed < 2.0  # three waves of 0.3 s, not nine


def test_wrong_key_is_reported_and_the_key_never_logged(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.fail(500)
    good = _backend(server)
    try:
        good.generate([_chat("hi")], GREEDY)
        assert KEY not in repr(good)
    finally:
        good.close()
    bad = _backend(server, api_key="sk-wrong")
    try:
        with pytest.raises(BackendError, match="refused the API key") as error:
            bad.generate([_chat("hi")], GREEDY)
    finally:
        bad.close()
    assert "sk-wrong" not in str(error.value)
    assert "retrying" in caplog.text  # the retry was logged...
    assert KEY not in caplog.text and "sk-wrong" not in caplog.text  # ...and no key ever was


def test_the_model_name_is_asked_from_the_server_when_not_configured(server: FakeOpenAIServer) -> None:
    backend = OpenAIBackend(server.base_url, None, api_key=KEY)
    try:
        assert backend.generate([_chat("hi")], GREEDY)[0].text == "echo: hi"
    finally:
        backend.close()
    assert backend.name == "fake-model" and server.posts()[0].body["model"] == "fake-model"


def test_streaming_grows_the_text(server: FakeOpenAIServer) -> None:
    seen: list[str] = []
    backend = _backend(server)
    try:
        out = backend.generate([_chat("one two three")], GREEDY, on_text=seen.append)[0]
    finally:
        backend.close()
    assert out.text == "echo: one two three"
    assert seen[-1] == out.text and len(seen) == 4 and all(b.startswith(a) for a, b in itertools.pairwise(seen))
    assert server.posts()[0].body["stream"] is True


def test_an_empty_dialogpt_reply_is_sampled_again(server: FakeOpenAIServer) -> None:
    dialogpt = get_profile("dialogpt")
    server.replies = ["", "  ", "Hi!"]
    backend = _backend(server)
    item = ReplyInput("Membot", "", "Ann", "", (), (("user", "Hello"),))
    try:
        out = backend.generate([dialogpt.reply_prompt(item)], dialogpt.reply_params(20, 0, 1, 1))
    finally:
        backend.close()
    assert dialogpt.clean_reply(out[0].text) == "Hi!" and len(server.posts()) == 3


def test_from_settings_reads_the_key_from_the_named_variable(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_MODEL_KEY", KEY)
    settings = SimpleNamespace(backend="openai", base_url=server.base_url, name="fake-model",
                               api_key_env="MY_MODEL_KEY", timeout=5.0, concurrency=2)
    backend = build_backend(settings)
    try:
        assert backend.generate([_chat("hi")], GREEDY)[0].text == "echo: hi"
    finally:
        backend.close()
    with pytest.raises(BackendError, match="base_url"):
        build_backend(SimpleNamespace(**{**vars(settings), "base_url": None}))


def test_closing_stops_waiting_retries() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", backoff=5.0, max_retries=3)
    threading.Timer(0.3, backend.close).start()
    started = time.monotonic()
    with pytest.raises(BackendError):
        backend.generate([_chat("hi")], GREEDY)
    assert time.monotonic() - started < 3


async def test_server_down_means_an_apology_and_waiting_jobs(tmp_path: Path) -> None:
    """Nothing is lost: the message is stored, the reply is an apology, the memory job is postponed."""
    settings = load_settings(None, overrides={
        "storage.path": str(tmp_path / "db.sqlite3"), "model.backend": "openai",
        "model.base_url": f"http://127.0.0.1:{free_port()}/v1", "model.name": "m",
        "sessions.inactivity_timeout": 60, "logging.level": "WARNING",
    })
    app = await App.create(settings)
    app.worker.backend.backoff = 0.01  # type: ignore[attr-defined]
    await app.start(schedule=False)
    try:
        msg = IncomingMessage(platform="console", user_id="ann", display_name="Ann", chat_id="console:ann",
                              chat_kind="console", text="I have a cat called Pixel.", is_admin=True)
        reply = await app.dispatcher.handle(msg)
        assert reply.text == APOLOGY and reply.kind == "apology"
        stored = await app.store.fetchone("SELECT text FROM messages WHERE author = 'user'")
        assert stored[0] == "I have a cat called Pixel."
        await app.dispatcher.handle(IncomingMessage(**{**vars(msg), "text": "/end"}))
        report = await app.jobs.run_until_idle()
        assert report.session_memories.waiting == 1 and report.session_memories.written == 0
        job = await app.store.fetchone("SELECT state, last_error FROM jobs WHERE kind = 'session_memory'")
        assert job[0] == "pending" and "unavailable" in job[1]
    finally:
        await app.close()


def test_membot_chat_against_the_fake_server(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """`membot chat` with backend = "openai", piped stdin, the key from the environment."""
    config = tmp_path / "membot.toml"
    config.write_text(
        f'[model]\nbackend = "openai"\nbase_url = "{server.base_url}"\nname = "fake-model"\n'
        f'api_key_env = "FAKE_OPENAI_KEY"\nmax_new_tokens = 24\n'
        f'[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[logging]\nlevel = "DEBUG"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEMBOT_CONFIG": str(config), "FAKE_OPENAI_KEY": KEY}
    chat = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat", "--user", "ann"], input="Hello there\nI like tea.\n/end\n",
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert lines[:2] == ["echo: Hello there", "echo: I like tea."] and "ended" in lines[2]
    assert KEY not in chat.stderr and KEY not in chat.stdout
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in server.posts())
    assert {r.path for r in server.posts()} == {"/v1/chat/completions"}


def test_a_withdrawn_request_stops_waiting_for_the_server(server: FakeOpenAIServer) -> None:
    """The caller gave up: a batch waiting on a slow server and a streamed reply both stop at once."""
    server.delay = 2.0
    backend = _backend(server, timeout=10)
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            backend.generate([_chat("a"), _chat("b")], GREEDY, cancelled=lambda: time.monotonic() - started > 0.2)
        waited = time.monotonic() - started
        server.delay = 0.0
        seen: list[str] = []
        with pytest.raises(Cancelled):
            backend.generate([_chat("one two three")], GREEDY, on_text=seen.append, cancelled=lambda: bool(seen))
    finally:
        backend.close()
    assert waited < 1.5  # not the server's 2 s
    assert len(seen) == 1  # the stream was left after its first piece
