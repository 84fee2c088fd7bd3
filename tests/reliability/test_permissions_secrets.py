"""Permissions and secrets: every admin command on every adapter is refused to non-admins (one test each), and
bot tokens and API keys never appear in logs (in-process and a real process at DEBUG), exceptions shown to
people, or exports.

Per adapter:
- dispatcher (platform-free text commands, what Telegram uses): /stats, /compress_now, /forget_user;
- Telegram: the same three, in a private chat and in a group, over the fake Bot API;
- Discord: the slash commands /admin stats|compress-now|channel enable|channel disable|forget-user (refused
  without Manage Server, in tests/discord/test_discord_commands.py, one test per command and permission
  set), and here the text forms of every admin command, which Discord never executes;
- console: the terminal's user runs the bot on their own machine and owns its database, so the console is
  admin by design (there is no second person on that adapter); tested here as such.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.config import Settings, TelegramSettings
from bot.console import ConsoleChat
from bot.discord_adapter import TEXT_COMMAND_HINT, DiscordAdapter
from bot.dispatcher import ADMIN_COMMANDS, APOLOGY, REFUSAL
from bot.incoming import IncomingMessage
from bot.telegram_adapter import TelegramAdapter
from bot.text import redact_in_logs
from models.base import Prompt
from models.fake import FakeBackend
from tests.discord.helpers import MESSAGES, assert_no_pings, contents, mention
from tests.fakes.discord_payloads import DiscordHarness, message_payload, user_payload
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.telegram_api import FakeTelegramServer

REPO = Path(__file__).resolve().parents[2]
TG_TOKEN = "7654321:TG-SECRET-zqxw-never-logged"
DISCORD_TOKEN = "DISCORD.SECRET.zqxv-never-logged"
API_KEY = "sk-OPENAI-SECRET-zqxu-never-logged"
SECRETS = (TG_TOKEN, TG_TOKEN.split(":", 1)[1], DISCORD_TOKEN, API_KEY)
USER, ADMIN, GROUP = 4242, 1001, -1001234567890

# Every admin text command with an argument that would act on somebody else.
ADMIN_TEXT = {"stats": "/stats", "compress_now": "/compress_now", "forget_user": f"/forget_user {ADMIN}"}
assert set(ADMIN_TEXT) == set(ADMIN_COMMANDS), "a new admin command needs its refusal test"


async def _state(app: App) -> dict[str, Any]:
    """Everything an admin command could change."""
    q = app.store.scalar
    return {
        "users": await q("SELECT COUNT(*) FROM users"),
        "messages": await q("SELECT COUNT(*) FROM messages"),
        "memories": await q("SELECT COUNT(*) FROM session_memories"),
        "versions": await q("SELECT COUNT(*) FROM compressive_memories"),
        "jobs": await q("SELECT group_concat(state) FROM jobs"),
    }


async def _busy(app: App) -> None:
    """Two people talked; one conversation ended and waits for its memory job."""
    for user in (USER, ADMIN):
        msg = IncomingMessage(platform="telegram", user_id=str(user), display_name=f"P{user}", chat_id=str(user),
                              chat_kind="dm", text=f"I am person {user}.")
        await app.dispatcher.handle(msg)
    await app.dispatcher.end_session("telegram", str(USER))


# -- dispatcher ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(ADMIN_TEXT))
async def test_dispatcher_refuses_each_admin_command_to_non_admins(app: App, command: str) -> None:
    await _busy(app)
    before = await _state(app)
    msg = IncomingMessage(platform="telegram", user_id=str(USER), display_name="P", chat_id=str(USER),
                          chat_kind="dm", text=ADMIN_TEXT[command], is_admin=False)
    reply = await app.dispatcher.handle(msg)
    assert (reply.kind, reply.text) == ("refusal", REFUSAL)
    assert await _state(app) == before
    # With an @botname suffix and odd case too.
    upper = IncomingMessage(**{**vars(msg), "text": "/" + ADMIN_TEXT[command][1:].upper().replace(" ", "@Bot ", 1)})
    assert (await app.dispatcher.handle(upper)).kind == "refusal"
    assert await _state(app) == before


# -- Telegram -----------------------------------------------------------------------------------------


@pytest.fixture
async def telegram(app: App) -> Any:
    async with FakeTelegramServer(bot_token=TG_TOKEN, bot_username="membot_test_bot") as server:
        app.settings.telegram = TelegramSettings(base_url=server.base_url, base_file_url=server.base_file_url,
                                                 admin_ids=[ADMIN], poll_timeout=1)
        adapter = TelegramAdapter(app, TG_TOKEN)
        await adapter.start()
        try:
            yield server
        finally:
            await adapter.stop()


@pytest.mark.parametrize("where", ["private", "group"])
@pytest.mark.parametrize("command", sorted(ADMIN_TEXT))
async def test_telegram_refuses_each_admin_command_to_non_admins(
    app: App, telegram: FakeTelegramServer, command: str, where: str
) -> None:
    await _busy(app)
    before = await _state(app)
    chat = USER if where == "private" else GROUP
    mark = len(telegram.calls)
    if where == "private":
        telegram.send_command(USER, USER, ADMIN_TEXT[command])
    else:
        telegram.send_command(GROUP, USER, ADMIN_TEXT[command], chat_type="supergroup", at_bot=True)
    answer = await telegram.wait_for_call("sendMessage", lambda c: str(c.params.get("chat_id")) == str(chat),
                                          start=mark, done=True)
    assert answer.params["text"] == REFUSAL
    assert await _state(app) == before
    if where == "group":  # and nothing went to the person's private chat instead
        assert not [c for c in telegram.calls[mark:]
                    if c.method == "sendMessage" and str(c.params.get("chat_id")) == str(USER)]


# -- Discord (text forms; the slash commands have their own tests) ----------------------------------------


@pytest.mark.parametrize("where", ["dm", "server"])
@pytest.mark.parametrize("command", sorted(ADMIN_TEXT))
async def test_discord_never_runs_admin_commands_typed_as_text(app: App, command: str, where: str) -> None:
    await _busy(app)
    before = await _state(app)
    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h:
        text = ADMIN_TEXT[command]
        if where == "dm":
            await h.dispatch_message(message_payload(channel_id=900000000000000777, content=text,
                                                     author=user_payload(4242, "mallory")))
        else:
            await h.dispatch_message(mention(text, author=user_payload(4242, "mallory")))
        assert contents(h.calls("POST", MESSAGES)) == [TEXT_COMMAND_HINT]
        assert_no_pings(h.http_calls)
    assert await _state(app) == before


# -- console ------------------------------------------------------------------------------------------


async def test_console_user_is_the_operator(app: App) -> None:
    import io

    out = io.StringIO()
    chat = ConsoleChat(app.dispatcher, "owner", stdin=io.StringIO("hello\n/stats\n"), stdout=out, interactive=False)
    assert chat.message("x").is_admin  # the terminal's user runs the bot and owns its database
    assert await chat.run() == 0
    assert "Users: 1" in out.getvalue()


# -- secrets ------------------------------------------------------------------------------------------


def _no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret appears in {where}"


async def test_tokens_stay_out_of_in_process_logs_and_exports(
    app: App, telegram: FakeTelegramServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything logged while the Telegram adapter works (DEBUG, every library), including failures."""
    caplog.set_level(logging.DEBUG)
    telegram.fail_next("sendChatAction", error_code=500)
    telegram.fail_next("sendMessage", error_code=400, description="Bad Request: chat not found")
    telegram.send_private_text(USER, "hello")  # the reply fails: logged by the error handler
    await telegram.wait_for_call("sendMessage", done=True)
    await asyncio.sleep(0.2)
    mark = len(telegram.calls)
    telegram.send_command(USER, USER, "/export")
    export = await telegram.wait_for_call("sendDocument", start=mark, done=True)
    _no_secret(export.files["document"].data.decode(), "an export")
    assert "HTTP Request" in caplog.text or "Calling Bot API endpoint" in caplog.text  # libraries did log
    _no_secret(caplog.text, "the logs")
    for record in caplog.records:  # as any handler prints them, tracebacks included
        _no_secret(logging.Formatter().format(record), "a log record")


def test_log_redaction_covers_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    redact_in_logs("tok-REDACTION-zqxt-123")
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.DEBUG):
        log.info("GET http://x/bottok-REDACTION-zqxt-123/getMe")
        log.debug("calling %s with %r", "http://x/bottok-REDACTION-zqxt-123/send", {"k": "tok-REDACTION-zqxt-123"})
        try:
            raise ValueError("bad URL http://x/bottok-REDACTION-zqxt-123/")
        except ValueError:
            log.exception("request failed")
    text = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert "tok-REDACTION-zqxt-123" not in text and text.count("[redacted]") >= 4
    assert "ValueError: bad URL http://x/bot[redacted]/" in text


async def test_a_failure_that_quotes_the_key_is_never_shown_to_people(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A model server that puts the API key in its error: people get the fixed apology; the log the error,
    with the key blanked out (the app registers the configured key for redaction at start)."""
    monkeypatch.setenv("TEST_MODEL_KEY", API_KEY)
    settings.model.backend = "openai"
    settings.model.api_key_env = "TEST_MODEL_KEY"

    def leaky(prompt: Prompt) -> str:
        raise RuntimeError(f"401 from upstream: invalid key {API_KEY}")

    app = await App.create(settings, backend=FakeBackend(responder=leaky))
    await app.start(schedule=False)
    try:
        reply = await app.dispatcher.handle(IncomingMessage(
            platform="telegram", user_id="1", display_name="P", chat_id="1", chat_kind="dm", text="hi"))
    finally:
        await app.close()
    assert reply.text == APOLOGY
    assert "invalid key [redacted]" in caplog.text
    _no_secret(caplog.text, "the logs")
    _no_secret(reply.text, "a reply")


async def test_tokens_stay_out_of_a_running_bots_debug_log(tmp_path: Path) -> None:
    """`membot run` with Telegram, Discord and a model server with an API key, at DEBUG, with failures."""
    async with FakeTelegramServer(bot_token=TG_TOKEN) as tg, FakeDiscordServer() as dc:
        with FakeOpenAIServer(api_key=API_KEY) as model:
            config = tmp_path / "membot.toml"
            config.write_text(
                f'[model]\nbackend = "openai"\nbase_url = "{model.base_url}"\nname = "fake-model"\n'
                f'api_key_env = "TEST_MODEL_KEY"\n'
                f'[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[logging]\nlevel = "DEBUG"\n'
                f'[telegram]\nbase_url = "{tg.base_url}"\nbase_file_url = "{tg.base_file_url}"\npoll_timeout = 1\n'
                f'[discord]\napi_base_url = "{dc.api_base}"\ngateway_url = "{dc.gateway_url}"\n'
            )
            env = {k: v for k, v in os.environ.items() if k != "MEMBOT_CONFIG"}
            env.update(PYTHONPATH=str(REPO), TELEGRAM_BOT_TOKEN=TG_TOKEN, DISCORD_BOT_TOKEN=DISCORD_TOKEN,
                       TEST_MODEL_KEY=API_KEY)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "--config", str(config), "run", cwd=REPO, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            try:
                await tg.wait_for_call("getUpdates", timeout=60)
                identify = await dc.wait_for_identify(timeout=60)
                assert identify["token"] == DISCORD_TOKEN
                model.fail(500)  # a retried model call: logged
                tg.send_private_text(USER, "hello from Telegram")
                reply = await tg.wait_for_call("sendMessage", timeout=30, done=True)
                assert reply.params["text"] == "echo: hello from Telegram"
                tg.fail_next("sendMessage", error_code=502)  # a failing send: logged
                tg.send_private_text(USER, "again")
                await tg.wait_for_call("sendMessage", lambda c: c.error is not None, timeout=30, done=True)
                since = len(dc.requests)
                await dc.dispatch("MESSAGE_CREATE", message_payload(channel_id=4243, content="hi from Discord"))
                await dc.wait_for_request("POST", r"/channels/4243/messages", timeout=30, since=since)
                mark = len(tg.calls)
                tg.send_command(USER, USER, "/export")
                export = await tg.wait_for_call("sendDocument", start=mark, timeout=30, done=True)
                proc.send_signal(signal.SIGTERM)
                stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    log = stderr.decode(errors="replace") + stdout.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert "DEBUG" in log and "Calling Bot API endpoint" in log  # it really logged at DEBUG
    _no_secret(log, "the bot's stderr")
    _no_secret(export.files["document"].data.decode(), "an export")
    assert json.loads(export.files["document"].data)["user"]["id"] == str(USER)
