"""Hostile and odd input, generated with hypothesis, through the dispatcher and every adapter.

Empty and whitespace-only text, up to 100,000 characters, control characters and NUL, lone surrogates,
right-to-left and zero-width characters, markdown and HTML, `@everyone`/`@here`/role/user mentions, SQL and
FTS syntax, regex replacement escapes, messages with only a sticker or an attachment, edits, other bots and
webhooks. Every path must: not crash (no exception, no error logged), answer shortly and clearly where an
answer is due (text-only notice, "your message was long" note) and stay quiet where none is, never send a
mass mention (the model here puts `@everyone` and `@here` into every reply), never store more than
`bot.max_message_chars` (drawn per example: the limit is configurable), nor any NUL, control character or
lone surrogate.

One event loop and one app serve all examples of a test (hypothesis runs examples synchronously).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from telegram import Update

from bot.app import App
from bot.config import TelegramSettings, load_settings
from bot.console import ConsoleChat
from bot.discord_adapter import MESSAGE_LIMIT, DiscordAdapter
from bot.dispatcher import EMPTY
from bot.incoming import IncomingMessage
from bot.telegram_adapter import MAX_TEXT, TelegramAdapter
from models.base import Prompt
from models.fake import FakeBackend, default_response
from tests.discord.helpers import assert_no_pings, sent_bodies
from tests.fakes.discord_payloads import (
    ADMIN_ROLE_ID,
    BOT_ID,
    GUILD_ID,
    OWNER_ID,
    DiscordHarness,
    attachment_payload,
    bot_user_payload,
    message_payload,
    sticker_item_payload,
    user_payload,
)
from tests.fakes.telegram_api import FakeTelegramServer

REPO = Path(__file__).resolve().parents[2]
MASS = re.compile(r"@(everyone|here)\b", re.IGNORECASE)
BAD_STORED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

NASTY = [
    "", " ", "\n\t \r\n", "\x00", "a\x00b" * 50, "\ud800", "a\udfffb", "\udc00\ud800", "\x1b[31mred\x1b[0m", "\x7f\x08",
    "\u202eevil txt.exe\u202c", "\u200b\u200c\u200d\ufeff\u2060", "\u200b" * 500, "שלום עולם", "مرحبا بالعالم",
    "e\u0301" * 400, "\U0010ffff\ufffe\uffff", "🐝" * 3000, "**bold** _it_ `code` ```py\nprint(1)\n``` ~~s~~ ||spoiler||",
    "<b>bold</b><i>x</i><script>alert(1)</script><a href='tg://user?id=1'>x</a>", "&lt;b&gt; &amp;",
    "@everyone", "@here", "@everyone @here @Everyone @HERE", "@\u200beveryone", "＠everyone", "<@123456789> <@!42>",
    "<@&900000000000000400> <#900000000000000201>", "/", "/ ", "//", "/start@", "/memory@other_bot", "/forget_user",
    "/export extra args \x00", "'; DROP TABLE messages; --", '" OR 1=1 --', "NEAR(a b) AND OR NOT * ^ \"",
    "messages_fts MATCH 'x'", "\\1 \\g<0> \\g<name> $1 %s %d {0} {name}", "x" * 100_000,
    ("lorem ipsum " * 9000)[:100_000], "\r" * 10 + "text", "\u2028line\u2029para\x85next",
]


def _text(max_size: int = 300) -> st.SearchStrategy[str]:
    anything = st.text(st.characters(exclude_categories=()), max_size=max_size)  # surrogates included
    long = st.builds(lambda unit, n: (unit * n)[:100_000], st.text(st.characters(exclude_categories=()),
                                                                    min_size=1, max_size=8),
                     st.integers(1, 100_000))
    glued = st.builds(lambda a, b, c: a + b + c, st.sampled_from(NASTY), anything, st.sampled_from(NASTY))
    return st.one_of(st.sampled_from(NASTY), anything, long, glued)


def _mass_mentioning_model(prompt: Prompt) -> str:
    """Every reply tries to ping everyone; memory tasks as usual."""
    if prompt.task != "reply":
        return default_response(prompt)
    return "@everyone @here " + default_response(prompt) + " <@&900000000000000400> @Everyone"


class World:
    """One loop, one app (fake model), the Telegram adapter over the fake Bot API, the Discord harness."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.tmp = tempfile.TemporaryDirectory(prefix="membot-hostile-")
        self.settings = load_settings(None, overrides={
            "storage.path": str(Path(self.tmp.name) / "db.sqlite3"), "model.backend": "fake",
            "bot.max_message_chars": 4000,
        })
        self.app: App = self.run(App.create(self.settings, backend=FakeBackend(responder=_mass_mentioning_model)))
        self.run(self.app.start(schedule=False))
        self.ids = itertools.count(1)
        self.checked = 0  # messages up to this id were checked by stored_ok
        self.telegram: FakeTelegramServer | None = None
        self.tg: TelegramAdapter | None = None
        self.discord: DiscordHarness | None = None

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def start_telegram(self) -> None:
        async def start() -> None:
            self.telegram = await FakeTelegramServer(bot_token="123:ABC", bot_username="membot_test_bot").start()
            self.app.settings.telegram = TelegramSettings(base_url=self.telegram.base_url,
                                                          base_file_url=self.telegram.base_file_url)
            self.tg = TelegramAdapter(self.app, self.telegram.bot_token)
            self.tg.typing_interval = 60
            await self.tg.application.initialize()  # updates are fed to process_update directly

        self.run(start())

    def start_discord(self) -> None:
        async def start() -> None:
            self.discord = await DiscordHarness(DiscordAdapter(self.app, "fake-token").client).start()

        self.run(start())

    def close(self) -> None:
        async def stop() -> None:
            if self.tg is not None:
                await self.tg.application.shutdown()
            if self.telegram is not None:
                await self.telegram.stop()
            if self.discord is not None:
                await self.discord.close()
            await self.app.close()

        self.run(stop())
        self.runner.close()
        self.tmp.cleanup()

    def stored_ok(self) -> None:
        """Whatever came in, what is stored is clean and within the limit of the moment."""
        rows = self.run(self.app.store.fetchall(
            "SELECT id, text FROM messages WHERE author = 'user' AND id > ?", (self.checked,)))
        for row_id, text in rows:
            assert not BAD_STORED.search(text), repr(text[:80])
            text.encode("utf-8")  # storable and exportable
            self.checked = max(self.checked, row_id)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]


RUN = settings(max_examples=150, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])


# -- dispatcher -------------------------------------------------------------------------------------------


@RUN
@given(text=_text(), limit=st.integers(1, 5000), kind=st.sampled_from(["dm", "group", "console"]))
def test_dispatcher(world: World, caplog: pytest.LogCaptureFixture, text: str, limit: int, kind: str) -> None:
    caplog.set_level(logging.WARNING)
    d = world.app.dispatcher
    d.settings.max_message_chars = limit
    n = next(world.ids)
    msg = IncomingMessage(platform="telegram", user_id=f"h{n % 7}", display_name=text[:40], chat_id=f"c{n % 3}",
                          chat_kind=kind, text=text, message_id=str(n))  # type: ignore[arg-type]
    reply = world.run(d.handle(msg))
    assert not MASS.search(reply.text)
    cleaned = text.replace("\x00", "").strip()
    if not cleaned:
        assert reply.text == EMPTY  # a short, clear answer
    elif reply.kind == "reply":
        stored = world.run(world.app.store.scalar(
            "SELECT text FROM messages WHERE author = 'user' AND platform_message_id = ?", (str(n),)))
        assert stored is not None and 0 < len(stored) <= limit
        if f"kept the first {limit} characters" in reply.text:
            assert len(stored) == limit
    else:
        assert reply.kind in ("command", "notice", "refusal") and len(reply.text) < 2000
    world.stored_ok()
    _no_errors(caplog)


# -- console ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(_text(200), min_size=1, max_size=4))
def test_console(world: World, caplog: pytest.LogCaptureFixture, lines: list[str]) -> None:
    caplog.set_level(logging.WARNING)
    world.app.dispatcher.settings.max_message_chars = 4000
    # (/export prints the person's own stored words verbatim: a file of their data, not a message to anyone.)
    script = "\n".join(line for line in lines if not line.strip().lower().startswith(("/quit", "/exit",
                                                                                      "/forget", "/export")))
    out = io.StringIO()
    chat = ConsoleChat(world.app.dispatcher, "hostile-console", stdin=io.StringIO(script + "\n"), stdout=out,
                       interactive=False)
    assert world.run(chat.run()) == 0
    assert not MASS.search(out.getvalue())
    world.stored_ok()
    _no_errors(caplog)


def test_console_survives_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """Piped binary garbage (in a strict UTF-8 locale) is read, not fatal: each line still gets its answer."""
    config = tmp_path / "membot.toml"
    config.write_text(f'[model]\nbackend = "fake"\n[storage]\npath = "{tmp_path / "db.sqlite3"}"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8:strict"}
    env.pop("MEMBOT_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(config), "chat", "--user", "bytes"],
        input=b"hello \xff\xfe world\n\xc3\x28 broken\n\x00\x01\x02\nstill here\n", capture_output=True, env=env,
        cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 4 and lines[0] == "echo: hello \ufffd\ufffd world" and lines[-1] == "echo: still here"
    assert lines[2] == EMPTY


# -- Telegram ---------------------------------------------------------------------------------------------

TG_SCENARIOS = ["dm", "group_mention", "group_plain", "group_reply_to_bot", "bot", "channel_post", "edited",
                "sticker_dm", "photo_caption_dm", "photo_group_no_caption", "document_dm"]
TG_DUE = {"dm", "group_mention", "group_reply_to_bot", "sticker_dm", "photo_caption_dm", "document_dm"}


def _tg_update(n: int, scenario: str, text: str) -> dict[str, Any]:
    user = {"id": 4000 + n % 5, "is_bot": scenario == "bot", "first_name": text[:20] or "x", "username": f"u{n % 5}"}
    private = {"id": user["id"], "type": "private", "first_name": "x"}
    group = {"id": -1001234567890, "type": "supergroup", "title": text[:30] or "group"}
    message: dict[str, Any] = {"message_id": 10_000 + n, "date": int(time.time()), "from": user,
                               "chat": private if scenario.endswith("_dm") or scenario in ("dm", "edited") else group}
    if scenario == "group_mention":
        message["text"] = "@membot_test_bot " + text
        message["entities"] = [{"type": "mention", "offset": 0, "length": 16}]
    elif scenario == "group_reply_to_bot":
        message["text"] = "hey " + text
        message["reply_to_message"] = {"message_id": 1, "date": int(time.time()), "chat": group, "text": "earlier",
                                       "from": {"id": 123, "is_bot": True, "first_name": "Membot",
                                                "username": "membot_test_bot"}}
    elif scenario in ("sticker_dm",):
        message["sticker"] = {"file_id": "s", "file_unique_id": "s", "type": "regular", "width": 1, "height": 1,
                              "is_animated": False, "is_video": False}
    elif scenario == "photo_caption_dm":
        message["photo"] = [{"file_id": "p", "file_unique_id": "p", "width": 1, "height": 1}]
        message["caption"] = text
    elif scenario == "photo_group_no_caption":
        message["photo"] = [{"file_id": "p", "file_unique_id": "p", "width": 1, "height": 1}]
    elif scenario == "document_dm":
        message["document"] = {"file_id": "d", "file_unique_id": "d", "file_name": text[:30] or "f"}
    else:
        message["text"] = ("hey " + text) if scenario == "group_plain" else text
    if scenario == "channel_post":
        message.pop("from")
        message["chat"] = {"id": -100999, "type": "channel", "title": "news"}
        message["sender_chat"] = message["chat"]
        return {"update_id": n, "channel_post": message}
    if scenario == "edited":
        message["edit_date"] = int(time.time())
        return {"update_id": n, "edited_message": message}
    return {"update_id": n, "message": message}


@RUN
@given(text=_text(), scenario=st.sampled_from(TG_SCENARIOS))
@example(text="a\ud800b @everyone", scenario="group_mention")
@example(text="\x00\ud800", scenario="photo_caption_dm")
@example(text="x" * 100_000, scenario="dm")
def test_telegram(world: World, caplog: pytest.LogCaptureFixture, text: str, scenario: str) -> None:
    if world.tg is None:
        world.start_telegram()
    assert world.tg is not None and world.telegram is not None
    caplog.set_level(logging.WARNING)
    world.app.dispatcher.settings.max_message_chars = 4000
    server, adapter = world.telegram, world.tg
    n = next(world.ids)
    mark = len(server.calls)
    world.run(adapter.application.process_update(Update.de_json(_tg_update(n, scenario, text), adapter.bot)))
    sent = [c for c in server.calls[mark:] if c.method in ("sendMessage", "sendDocument", "editMessageText")]
    assert all(c.ok for c in sent), [c.error for c in sent]
    texts = [str(c.params.get("text") or c.params.get("caption") or "") for c in sent]
    assert not [t for t in texts if MASS.search(t)]
    assert all(len(t.encode("utf-16-le")) // 2 <= MAX_TEXT for t in texts)
    assert not [c for c in sent if "parse_mode" in c.params]  # plain text: nothing the model writes is markup
    if scenario in TG_DUE:
        assert sent, f"no answer to {scenario}"
        if scenario in ("sticker_dm", "document_dm") or (not text.replace("\x00", "").strip() and scenario == "dm"):
            assert texts == [EMPTY]
    else:
        assert not sent, f"answered a {scenario}: {texts}"
    world.stored_ok()
    _no_errors(caplog)


# -- Discord ----------------------------------------------------------------------------------------------

DC_SCENARIOS = ["dm", "mention", "plain_guild", "bot_author", "webhook", "attachment_dm", "sticker_dm", "edit",
                "mention_odd_names", "mass_and_roles"]
DC_DUE = {"dm", "mention", "attachment_dm", "sticker_dm", "mention_odd_names", "mass_and_roles"}
DM_CHANNEL = 900000000000000777


@RUN
@given(text=_text(), name=_text(40), scenario=st.sampled_from(DC_SCENARIOS))
@example(text="hi", name="\\1 \\g<name> $0", scenario="mention_odd_names")
@example(text="\ud800 @everyone", name="\udfff\x00", scenario="mention_odd_names")
@example(text="x" * 100_000, name="", scenario="dm")
def test_discord(world: World, caplog: pytest.LogCaptureFixture, text: str, name: str, scenario: str) -> None:
    if world.discord is None:
        world.start_discord()
    h = world.discord
    assert h is not None
    caplog.set_level(logging.WARNING)
    world.app.dispatcher.settings.max_message_chars = 4000
    author = user_payload(OWNER_ID + 7, "mallory", global_name=name or None)
    bot = bot_user_payload()
    start = len(h.http_calls)
    payload: dict[str, Any]
    if scenario == "dm":
        payload = message_payload(channel_id=DM_CHANNEL, content=text, author=author)
    elif scenario in ("mention", "bot_author", "webhook"):
        payload = message_payload(content=f"<@{BOT_ID}> {text}", guild_id=GUILD_ID, mentions=[bot],
                                  author=user_payload(1234, name or "b", bot=scenario == "bot_author"),
                                  webhook_id=4321 if scenario == "webhook" else None)
    elif scenario == "plain_guild":
        payload = message_payload(content="hey " + text, guild_id=GUILD_ID, author=author)
    elif scenario == "attachment_dm":
        payload = message_payload(channel_id=DM_CHANNEL, content="", author=author,
                                  attachments=[attachment_payload(filename=(name or "f")[:30])])
    elif scenario == "sticker_dm":
        payload = message_payload(channel_id=DM_CHANNEL, content="", author=author,
                                  sticker_items=[sticker_item_payload(5, name or "s")])
    elif scenario == "mention_odd_names":  # somebody with a hostile display name is mentioned to the bot
        payload = message_payload(content=f"<@{BOT_ID}> ask <@{author['id']}> and <@!{author['id']}>: {text}",
                                  guild_id=GUILD_ID, mentions=[bot, author], author=user_payload(55, "asker"))
    elif scenario == "mass_and_roles":
        payload = message_payload(content=f"@everyone @here <@&{ADMIN_ROLE_ID}> <@{BOT_ID}> {text}",
                                  guild_id=GUILD_ID, mentions=[bot], mention_roles=[ADMIN_ROLE_ID],
                                  mention_everyone=True, author=author)
    else:  # an edit of an earlier message: never a new turn
        earlier = message_payload(channel_id=DM_CHANNEL, content="before", author=author)
        payload = {**earlier, "content": text, "edited_timestamp": earlier["timestamp"]}
        world.run(h.dispatch("MESSAGE_UPDATE", payload))
        assert not sent_bodies(h.http_calls[start:])
        return
    world.run(h.dispatch_message(payload))
    bodies = sent_bodies(h.http_calls[start:])
    texts = [b.get("content", "") for b in bodies]
    assert not [t for t in texts if MASS.search(t)]
    assert all(len(t) <= MESSAGE_LIMIT for t in texts)
    assert_no_pings(h.http_calls[start:])
    if scenario in DC_DUE:
        assert texts, f"no answer to {scenario}"
        if scenario in ("attachment_dm", "sticker_dm"):
            assert texts == [EMPTY]
    else:
        assert not texts, f"answered {scenario}"
    world.stored_ok()
    _no_errors(caplog)


# -- limits -----------------------------------------------------------------------------------------------


def test_max_stored_length_is_configurable_and_validated() -> None:
    from bot.config import ConfigError

    assert load_settings(None, overrides={"bot.max_message_chars": 100_000}).bot.max_message_chars == 100_000
    for bad in (0, 100_001, "many"):
        with pytest.raises(ConfigError, match="max_message_chars"):
            load_settings(None, overrides={"bot.max_message_chars": bad})

