"""Crash safety: the crash drill (tests/reliability/crash_harness.py) in a short form, and the inbox that
makes "acknowledged to Telegram" mean "stored, or stored at the next start".

The CI run kills the bot 4 times, once per targeted moment (storing a burst, generating replies, writing
session memories, compressing); the documented full run is `python -m tests.reliability.crash_harness
--rounds 20` (figures in docs/reliability.md), `--backend postgresql` for PostgreSQL.

Every test here runs on both backends (the `backends` marker, tests/conftest.py): the drill's bot on a SQLite
file and on a new PostgreSQL database of the test cluster, the inbox tests on the `app` fixture's store.
"""

from __future__ import annotations

import json

import pytest

from bot.app import App
from bot.config import TelegramSettings
from bot.telegram_adapter import TelegramAdapter
from memory import inbox
from tests.fakes.telegram_api import FakeTelegramServer
from tests.reliability.crash_harness import MODES, parse_args, run_drill

pytestmark = pytest.mark.backends

CI_ROUNDS = 4


async def test_crash_drill_short(backend: str, storage_target: str) -> None:
    on = ["--postgres-url", storage_target] if backend == "postgresql" else []  # SQLite: a file of its own
    summary = await run_drill(parse_args(["--rounds", str(CI_ROUNDS), "--seed", "3", "--users", "6", *on]))
    rounds = summary.pop("per_round")
    print("\ncrash drill:", json.dumps(summary))
    assert summary["backend"] == backend
    assert summary["ok"], summary["first_violations"]
    assert summary["kills_by_mode"] == {mode: 1 for mode in MODES[:CI_ROUNDS]}
    assert summary["kills_at_target_moment"] == summary["kills_by_mode"], rounds  # each kill where aimed
    assert summary["messages_stored"] == summary["messages_sent"] > 0
    assert summary["session_memories"] == summary["closed_sessions"] > 0
    assert summary["compressive_versions"] > 0


async def test_an_update_kept_before_a_crash_is_handled_once_at_the_next_start(app: App) -> None:
    """The update was confirmed to Telegram (kept in the inbox) but the bot died before storing it."""
    async with FakeTelegramServer(bot_token="123:ABC", bot_username="membot_test_bot") as server:
        message = server.send_private_text(4242, "I was fetched, then the bot died", first_name="Ann")
        update = server.pending_updates[0]
        await inbox.keep(app.store, "telegram", update["update_id"], "4242", json.dumps(update))
        # Telegram never got the offset that confirms it, so it also sends it again: handled once all the same.
        app.settings.telegram = TelegramSettings(base_url=server.base_url, base_file_url=server.base_file_url,
                                                 poll_timeout=1)
        adapter = TelegramAdapter(app, server.bot_token)
        await adapter.start()
        try:
            reply = await server.wait_for_call("sendMessage", done=True)
            assert reply.params["text"] == "echo: I was fetched, then the bot died"
            await server.wait_until_consumed()
            server.send_private_text(4242, "next")
            await server.wait_for_call("sendMessage", lambda c: c.params["text"] == "echo: next", done=True)
        finally:
            await adapter.stop()
    assert server.sent_texts(4242) == ["echo: I was fetched, then the bot died", "echo: next"]
    rows = await app.store.fetchall(
        "SELECT text, platform_message_id FROM messages WHERE author = 'user' ORDER BY id")
    assert [r[0] for r in rows] == ["I was fetched, then the bot died", "next"]  # stored once each
    assert rows[0][1] == str(message["message_id"])
    assert await app.store.scalar("SELECT COUNT(*) FROM inbox") == 0


async def test_updates_are_kept_until_handled(app: App, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """While an update is being handled it is in the inbox; once handled it is gone."""
    async with FakeTelegramServer(bot_token="123:ABC", bot_username="membot_test_bot") as server:
        app.settings.telegram = TelegramSettings(base_url=server.base_url, base_file_url=server.base_file_url,
                                                 poll_timeout=1)
        adapter = TelegramAdapter(app, server.bot_token)
        seen: list[int] = []
        handle = adapter.dispatcher.handle

        async def watching(msg, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(int(await app.store.scalar("SELECT COUNT(*) FROM inbox")))
            return await handle(msg, **kwargs)

        monkeypatch.setattr(app.dispatcher, "handle", watching)
        await adapter.start()
        try:
            server.send_private_text(4242, "hello")
            await server.wait_for_call("sendMessage", done=True)
            await server.wait_until_consumed()
        finally:
            await adapter.stop()
    assert seen == [1]  # kept while it was handled ...
    assert await app.store.scalar("SELECT COUNT(*) FROM inbox") == 0  # ... and cleared after
