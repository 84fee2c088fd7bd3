"""The platform-free dispatcher: replies, commands, admin checks, failures that lose nothing."""

from __future__ import annotations

import json

import pytest

from bot.app import App
from bot.dispatcher import APOLOGY, EMPTY, REFUSAL
from bot.incoming import IncomingMessage
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

pytestmark = pytest.mark.backends


def _msg(text: str, user: str = "alice", *, admin: bool = False, mid: str | None = None) -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id=user, display_name=user.title(), chat_id=f"dm-{user}",
                           chat_kind="dm", text=text, is_admin=admin, message_id=mid)


async def test_reply_is_stored_with_the_message(app: App) -> None:
    reply = await app.dispatcher.handle(_msg("Hello there"))
    assert reply.kind == "reply" and reply.text == "echo: Hello there"
    rows = await app.store.fetchall("SELECT author, text FROM messages ORDER BY id")
    assert [tuple(r) for r in rows] == [("user", "Hello there"), ("bot", "echo: Hello there")]


async def test_model_failure_apologises_and_keeps_the_message(app: App, fake_backend: FakeBackend) -> None:
    fake_backend.fail_next = 1
    reply = await app.dispatcher.handle(_msg("Please remember my bike is blue"))
    assert reply.kind == "apology" and reply.text == APOLOGY
    assert await app.store.scalar("SELECT text FROM messages") == "Please remember my bike is blue"
    assert (await app.dispatcher.handle(_msg("again"))).kind == "reply"  # the worker survived


async def test_empty_and_odd_input(app: App) -> None:
    assert (await app.dispatcher.handle(_msg("   \n\t "))).text == EMPTY
    reply = await app.dispatcher.handle(_msg("a\x00b\ud800c"))
    assert reply.kind == "reply"
    assert await app.store.scalar("SELECT text FROM messages WHERE author = 'user'") == "ab\ufffdc"


async def test_long_messages_are_cut_and_the_person_told(app: App) -> None:
    limit = app.settings.bot.max_message_chars
    reply = await app.dispatcher.handle(_msg("x" * (limit + 500)))
    assert str(limit) in reply.text
    assert await app.store.scalar("SELECT LENGTH(text) FROM messages WHERE author = 'user'") == limit


async def test_mass_mentions_from_the_model_are_defused(settings, clock: ManualClock) -> None:
    app = await App.create(settings, backend=FakeBackend(responder=lambda p: "hey @everyone and @here"), clock=clock)
    await app.start(schedule=False)
    try:
        reply = await app.dispatcher.handle(_msg("hi"))
        assert "@everyone" not in reply.text and "@here" not in reply.text
    finally:
        await app.close()


async def test_duplicate_delivery_gets_no_second_reply(app: App) -> None:
    first = await app.dispatcher.handle(_msg("hi", mid="7"))
    assert first.kind == "reply"
    await app.dispatcher.delivered(first, "900")  # the adapter sent it: the platform's message id
    assert (await app.dispatcher.handle(_msg("hi", mid="7"))).silent
    assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE author = 'user'") == 1


async def test_a_reply_stored_but_never_sent_is_sent_when_the_message_is_redelivered(app: App) -> None:
    """The process died between storing its reply and sending it (another process, or the next start, gets
    the message again): the stored reply is sent then, not generated again, and only once."""
    first = await app.dispatcher.handle(_msg("hi", mid="8"))
    again = await app.dispatcher.handle(_msg("hi", mid="8"))
    assert again.text == first.text and again.meta["reply_id"] == first.meta["reply_id"]
    assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE author = 'bot'") == 1
    await app.dispatcher.delivered(again, "901")
    assert (await app.dispatcher.handle(_msg("hi", mid="8"))).silent


async def test_a_message_stored_before_a_crash_but_never_answered_is_answered_when_redelivered(app: App) -> None:
    # The crash came after the message was committed and before the model answered (the inbox replays it).
    await app.sessions.record_user_message(platform="telegram", user_id="alice", display_name="Alice",
                                           chat_id="dm-alice", chat_kind="dm", text="hi", platform_message_id="8")
    reply = await app.dispatcher.handle(_msg("hi", mid="8"))
    assert reply.kind == "reply" and reply.text == "echo: hi"
    await app.dispatcher.delivered(reply, "900")
    assert (await app.dispatcher.handle(_msg("hi", mid="8"))).silent  # and only once
    rows = await app.store.fetchall("SELECT author, text FROM messages ORDER BY id")
    assert [tuple(r) for r in rows] == [("user", "hi"), ("bot", "echo: hi")]


async def test_user_commands(app: App, clock: ManualClock) -> None:
    d = app.dispatcher
    assert "/memory" in (await d.handle(_msg("/help"))).text
    assert "/stats" not in (await d.handle(_msg("/help"))).text
    assert "don't remember" in (await d.handle(_msg("/memory"))).text
    await d.handle(_msg("I keep bees on my roof."))
    assert "ended" in (await d.handle(_msg("/end"))).text
    assert "no conversation" in (await d.handle(_msg("/end"))).text
    await app.jobs.run_until_idle()
    memory = (await d.handle(_msg("/memory"))).text
    assert "Profile:" in memory and "Relationship:" in memory and "Events:" in memory and "bees" in memory
    export = await d.handle(_msg("/export"))
    data = json.loads(export.document or b"{}")
    assert data["user"]["id"] == "alice" and data["sessions"][0]["messages"][0]["text"] == "I keep bees on my roof."
    forget = await d.handle(_msg("/forget"))
    assert forget.confirm == "forget"
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 1  # nothing deleted before confirmation
    assert "deleted" in await d.forget("telegram", "alice")
    for table in ("users", "messages", "sessions", "session_memories", "compressive_memories", "jobs"):
        assert await app.store.scalar(f"SELECT COUNT(*) FROM {table}") == 0
    assert "/nope" in (await d.handle(_msg("/nope"))).text


async def test_admin_commands_only_for_admins(app: App) -> None:
    d = app.dispatcher
    await d.handle(_msg("hello", user="bob"))
    for command in ("/stats", "/compress_now", "/forget_user bob"):
        reply = await d.handle(_msg(command))
        assert reply.kind == "refusal" and reply.text == REFUSAL
    assert await app.store.scalar("SELECT COUNT(*) FROM users WHERE platform_user_id = 'bob'") == 1
    assert "Users: 1" in (await d.handle(_msg("/stats", admin=True))).text
    assert "Memory jobs ran" in (await d.handle(_msg("/compress_now", admin=True))).text
    assert "Deleted everything about user bob" in (await d.handle(_msg("/forget_user bob", admin=True))).text
    assert await app.store.scalar("SELECT COUNT(*) FROM users WHERE platform_user_id = 'bob'") == 0


async def test_streaming_delivers_growing_text_then_the_final_reply(app: App, fake_backend: FakeBackend) -> None:
    fake_backend.stream_delay = 0.01
    partials: list[str] = []

    async def on_partial(text: str) -> None:
        partials.append(text)

    reply = await app.dispatcher.handle(_msg("one two three four five"), on_partial=on_partial)
    assert reply.text == "echo: one two three four five"
    assert partials and partials[-1] == reply.text
    assert all(reply.text.startswith(p) for p in partials)
    assert len(partials) > 1
