"""Outages: the model server down or slow, the database disk full, Telegram and Discord failing or rate
limiting. In each: the person gets a short message where one is due, the bot keeps running, memory jobs
back off and retry, and nothing already stored is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App
from bot.config import TelegramSettings, load_settings
from bot.discord_adapter import DiscordAdapter
from bot.dispatcher import APOLOGY, STORE_APOLOGY
from bot.incoming import IncomingMessage
from bot.telegram_adapter import TelegramAdapter
from models.fake import FakeBackend
from tests.discord.helpers import MESSAGES
from tests.fakes.clock import ManualClock
from tests.fakes.discord_payloads import BOT_ID, GUILD_ID, message_payload
from tests.fakes.discord_server import FakeDiscordServer, patch_discord_urls
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.telegram_api import FakeTelegramServer
from tests.ports import free_port

USER = 4242


def _msg(text: str, user: str = "ann") -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id=user, display_name=user.title(), chat_id=f"dm-{user}",
                           chat_kind="dm", text=text)


async def _count(app: App, sql: str) -> int:
    return int(await app.store.scalar(sql) or 0)


# -- the model ----------------------------------------------------------------------------------------


async def test_model_down_apologises_keeps_everything_and_jobs_back_off(
    app: App, fake_backend: FakeBackend, clock: ManualClock
) -> None:
    backoff = app.settings.jobs.retry_backoff
    fake_backend.fail_always = True
    facts = ["I keep bees on my roof", "my cat is called Pixel", "I play the violin on Sundays"]
    for fact in facts:
        reply = await app.dispatcher.handle(_msg(fact))
        assert (reply.kind, reply.text) == ("apology", APOLOGY) and len(reply.text) < 200
    assert await _count(app, "SELECT COUNT(*) FROM messages WHERE author = 'user'") == 3
    await app.dispatcher.end_session("telegram", "ann")
    report = await app.jobs.run_due()
    assert report.session_memories.waiting == 1 and report.session_memories.written == 0
    job = await app.store.fetchone("SELECT state, not_before, last_error FROM jobs")
    assert job[0] == "pending" and job[1] == pytest.approx(clock() + backoff) and "failure" in job[2]

    calls = len(fake_backend.calls)
    assert (await app.jobs.run_due()).session_memories.waiting == 0  # backing off: the model is not asked
    assert len(fake_backend.calls) == calls

    fake_backend.fail_always = False  # the model is back
    clock.advance(backoff + 1)
    report = await app.jobs.run_until_idle()
    assert report.session_memories.written == 1 and report.compressions.written >= 1
    assert (await app.dispatcher.handle(_msg("are you back?"))).text == "echo: are you back?"
    memory = await app.store.scalar("SELECT facts FROM session_memories")
    # Nothing said during the outage was lost: each statement is there, as a fact about Ann.
    assert all(word in memory for word in ("keeps bees on their roof", "cat is called Pixel", "violin on Sundays"))
    assert "Profile:" in (await app.dispatcher.handle(_msg("/memory"))).text


async def test_model_server_slow_then_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAIServer() as server:
        settings = load_settings(None, overrides={
            "storage.path": str(tmp_path / "db.sqlite3"), "model.backend": "openai",
            "model.base_url": server.base_url, "model.name": "fake-model", "model.timeout": "0.5s",
            "sessions.inactivity_timeout": 60,
        })
        app = await App.create(settings)
        await app.start(schedule=False)
        try:
            server.delay = 3.0  # far slower than the timeout
            started = time.monotonic()
            reply = await app.dispatcher.handle(_msg("hello, slow server"))
            assert reply.text == APOLOGY and time.monotonic() - started < 2.5  # no endless wait
            await app.dispatcher.end_session("telegram", "ann")
            assert (await app.jobs.run_due()).session_memories.waiting == 1  # the job waits too
            server.delay = 0.0
            assert (await app.dispatcher.handle(_msg("and now?"))).text == "echo: and now?"
            assert await _count(app, "SELECT COUNT(*) FROM messages WHERE author = 'user'") == 2
            assert await _count(app, "SELECT COUNT(*) FROM jobs WHERE state = 'pending'") == 1
        finally:
            await app.close()
    assert "did not answer within" in caplog.text


async def test_model_server_down_then_started(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(None, overrides={
        "storage.path": str(tmp_path / "db.sqlite3"), "model.backend": "openai",
        "model.base_url": f"http://127.0.0.1:{port}/v1", "model.name": "fake-model",
        "jobs.retry_backoff": "1s",
    })
    app = await App.create(settings)
    app.worker.backend.backoff = 0.01  # type: ignore[attr-defined]
    await app.start(schedule=False)
    try:
        assert (await app.dispatcher.handle(_msg("anyone there?"))).text == APOLOGY
        await app.dispatcher.end_session("telegram", "ann")
        assert (await app.jobs.run_due()).session_memories.waiting == 1
        with FakeOpenAIServer(port=port):
            assert (await app.dispatcher.handle(_msg("now?"))).text == "echo: now?"
            await asyncio.sleep(1.1)  # the job's back-off
            report = await app.jobs.run_until_idle()
            assert report.session_memories.written == 1
    finally:
        await app.close()


# -- the disk -----------------------------------------------------------------------------------------


async def _fill_the_disk(app: App) -> None:
    """SQLITE_FULL from now on for every write that needs a new page: the file may not grow any more."""
    pages = await app.store.scalar("PRAGMA page_count")
    await app.store.writer.execute(f"PRAGMA max_page_count = {pages}")


async def _free_the_disk(app: App) -> None:
    await app.store.writer.execute("PRAGMA max_page_count = 1073741823")


async def test_disk_full_tells_the_person_keeps_earlier_data_and_recovers(
    app: App, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    d = app.dispatcher
    # Long messages, so that their memory needs new pages once the disk is full (a short one may still fit).
    stories = [" ".join(f"harbour{i}boat{j}" for j in range(250)) for i in range(3)]
    for i in range(3):
        assert (await d.handle(_msg(f"before the outage {i} {stories[i]}"))).kind == "reply"
    await d.end_session("telegram", "ann")
    await d.handle(_msg("a new conversation before the outage"))
    before = await _count(app, "SELECT COUNT(*) FROM messages")
    await _fill_the_disk(app)

    replies = [await d.handle(_msg("x" * 3000 + f" during the outage {i}", user=f"u{i}")) for i in range(20)]
    failed = [r for r in replies if r.kind == "apology"]
    assert failed and all(r.text == STORE_APOLOGY for r in failed)  # short and clear
    assert "the database disk is full" in caplog.text
    # Commands: small writes may still fit in the file's free space; when one does not, the person is told.
    end = await d.handle(_msg("/end"))
    assert end.kind == "command" or "storage is unavailable" in end.text
    assert "I don't have a memory of you yet" in (await d.handle(_msg("/memory"))).text  # reads still work
    # The memory jobs fail, and hand their jobs back instead of leaving them claimed.
    clock.advance(120)
    with pytest.raises(Exception, match="disk is full"):
        await app.jobs.run_due()
    assert await _count(app, "SELECT COUNT(*) FROM jobs WHERE state = 'running'") == 0
    assert await app.store.integrity_ok()
    stored = await _count(app, "SELECT COUNT(*) FROM messages")
    assert stored >= before  # earlier data intact (and whatever fitted before the disk filled)

    await _free_the_disk(app)
    assert (await d.handle(_msg("after the outage"))).text == "echo: after the outage"
    clock.advance(app.settings.jobs.retry_backoff + 1)
    await app.jobs.run_until_idle()
    missing = await _count(app, "SELECT COUNT(*) FROM sessions s WHERE s.state = 'closed' AND NOT EXISTS "
                                "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id)")
    assert missing == 0  # every conversation, before and after, has its memory
    texts = [r[0] for r in await app.store.fetchall("SELECT text FROM messages WHERE author = 'user'")]
    assert all(f"before the outage {i} {stories[i]}" in texts for i in range(3)) and "after the outage" in texts


async def test_disk_full_on_telegram(app: App, caplog: pytest.LogCaptureFixture) -> None:
    async with _telegram(app) as server:
        await _fill_the_disk(app)
        answers = []
        for i in range(10):  # big messages, until one does not fit any more
            mark = len(server.calls)
            server.send_private_text(USER, f"message {i} " + "y " * 1500)
            answers.append((await server.wait_for_call("sendMessage", start=mark, done=True, timeout=20)).params)
            if answers[-1]["text"] == STORE_APOLOGY:
                break
        assert answers[-1]["text"] == STORE_APOLOGY
        assert all(a["text"].startswith("echo: message") for a in answers[:-1])
        await _free_the_disk(app)
        mark = len(server.calls)
        server.send_private_text(USER, "and now?")
        reply = await server.wait_for_call("sendMessage", start=mark, done=True, timeout=20)
        assert reply.params["text"] == "echo: and now?"
    assert "could not store a message: the database disk is full" in caplog.text
    assert await _count(app, "SELECT COUNT(*) FROM inbox") == 0  # every update was handled, none hangs


# -- Telegram -----------------------------------------------------------------------------------------


class _telegram:
    """The Telegram adapter polling a fake Bot API on 127.0.0.1."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __aenter__(self) -> FakeTelegramServer:
        self.server = await FakeTelegramServer(bot_token="123:ABC", bot_username="membot_test_bot").start()
        self.app.settings.telegram = TelegramSettings(base_url=self.server.base_url,
                                                      base_file_url=self.server.base_file_url, poll_timeout=1)
        self.adapter = TelegramAdapter(self.app, self.server.bot_token)
        self.adapter.send_retry_delays = (0.1, 0.2)
        await self.adapter.start()
        return self.server

    async def __aexit__(self, *exc: object) -> None:
        await self.adapter.stop()
        await self.server.stop()


async def test_telegram_errors_and_rate_limits(app: App) -> None:
    async with _telegram(app) as server:
        # Polling fails (server errors, a dropped connection): the bot keeps polling and answers.
        server.fail_next("getUpdates", error_code=500, times=2)
        server.fail_next("getUpdates", disconnect=True)
        server.send_private_text(USER, "first")
        reply = await server.wait_for_call("sendMessage", done=True, timeout=30)
        assert reply.params["text"] == "echo: first"
        # A reply hits a 502 and a dropped connection: it is sent again, once it gets through.
        server.fail_next("sendMessage", error_code=502)
        server.fail_next("sendMessage", disconnect=True)
        mark = len(server.calls)
        server.send_private_text(USER, "second")
        await server.wait_for_call("sendMessage", lambda c: c.ok, start=mark, done=True, timeout=30)
        assert server.sent_texts(USER) == ["echo: first", "echo: second"]
        # A rate limit: waited out, then sent.
        server.fail_next("sendMessage", retry_after=1)
        mark = len(server.calls)
        server.send_private_text(USER, "third")
        ok = await server.wait_for_call("sendMessage", lambda c: c.ok, start=mark, done=True, timeout=30)
        limited = [c for c in server.calls[mark:] if c.method == "sendMessage" and not c.ok]
        assert limited and ok.time - limited[0].time >= 1.0
        # Typing indicators failing never cost the reply.
        server.fail_next("sendChatAction", error_code=500, times=5)
        mark = len(server.calls)
        server.send_private_text(USER, "fourth")
        await server.wait_for_call("sendMessage", lambda c: c.ok, start=mark, done=True, timeout=30)
        assert server.sent_texts(USER) == ["echo: first", "echo: second", "echo: third", "echo: fourth"]
    assert await _count(app, "SELECT COUNT(*) FROM messages WHERE author = 'user'") == 4  # nothing lost
    assert await _count(app, "SELECT COUNT(*) FROM inbox") == 0  # every update handled


async def test_telegram_blocked_by_the_person_is_not_retried(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with _telegram(app) as server:
        server.fail_next("sendMessage", error_code=403)
        server.send_private_text(USER, "then I blocked the bot")
        await server.wait_for_call("sendMessage", done=True, timeout=20)
        await asyncio.sleep(0.5)
        assert len(server.calls_of("sendMessage")) == 1  # final: no retry storm
        server.send_private_text(USER, "unblocked")
        reply = await server.wait_for_call("sendMessage", lambda c: c.ok, done=True, timeout=20)
        assert reply.params["text"] == "echo: unblocked"
    assert "cannot write to chat" in caplog.text
    assert await _count(app, "SELECT COUNT(*) FROM messages WHERE author = 'user'") == 2


# -- Discord ------------------------------------------------------------------------------------------


@pytest.fixture
async def discord_server(app: App) -> AsyncIterator[FakeDiscordServer]:
    async with FakeDiscordServer() as server:
        yield server


async def test_discord_errors_and_rate_limits(app: App, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    adapter = DiscordAdapter(app, "fake-token")
    adapter.client._connection.guild_ready_timeout = 0.05
    with patch_discord_urls(server):
        await adapter.start()
        try:
            await server.wait_for_identify()
            await asyncio.wait_for(adapter.client.wait_until_ready(), 10)

            async def ask(text: str) -> None:
                since = len(server.requests)
                await server.dispatch("MESSAGE_CREATE", message_payload(
                    content=f"<@{BOT_ID}> {text}", guild_id=GUILD_ID, mentions=[server.bot_user]))
                await server.wait_for_request("POST", MESSAGES, status=200, since=since, timeout=20)

            server.fail_next("POST", MESSAGES, status=500)  # Discord's server error: retried
            await ask("one")
            server.fail_next("POST", MESSAGES, status=429, retry_after=0.2)  # rate limited: waited out
            await ask("two")
            server.fail_next("POST", r"/channels/\d+/typing", status=500, times=3)  # typing fails: no matter
            await ask("three")
            # The gateway drops: discord.py resumes, and the bot still answers.
            await server.close_gateway(4000)
            await asyncio.sleep(0.5)
            await asyncio.wait_for(adapter.client.wait_until_ready(), 10)
            await ask("four")
        finally:
            await adapter.stop()
    sent = [r.json["content"] for r in server.find_requests("POST", MESSAGES) if r.status == 200]
    assert sent == ["echo: one", "echo: two", "echo: three", "echo: four"]
    assert await _count(app, "SELECT COUNT(*) FROM messages WHERE author = 'user'") == 4

