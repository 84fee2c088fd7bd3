"""Self-test of the fake Telegram Bot API server against the real python-telegram-bot.

If the fake drifts from what PTB expects (URL layout, encodings, result shapes, error
mapping), every Telegram-facing test built on it becomes meaningless; these tests pin that.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import io
import json
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Conflict, Forbidden, NetworkError, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes import telegram_fixtures
from tests.fakes.telegram_api import FakeTelegramServer, parse_formatted_text
from tests.fakes.telegram_fixtures import ptb_builder, running_polling

REPO_ROOT = Path(__file__).resolve().parents[2]
USER = 4242
GROUP = -1001234567890

fake_telegram = telegram_fixtures.fake_telegram


def _bot(server: FakeTelegramServer) -> Bot:
    return Bot(server.bot_token, base_url=server.base_url, base_file_url=server.base_file_url)


async def _echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(f"echo: {update.effective_message.text}")


async def _memory(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Forget", callback_data="forget:1")]])
    await update.effective_message.reply_text(f"memory args={context.args}", reply_markup=keyboard)


async def _button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None
    await query.answer("done")
    await query.edit_message_text(f"pressed {query.data}")


@pytest.mark.asyncio
async def test_ptb_application_polls_and_replies(fake_telegram: FakeTelegramServer) -> None:
    server = fake_telegram
    app = ptb_builder(server).build()
    app.add_handler(CommandHandler("memory", _memory))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, _echo))
    app.add_handler(CallbackQueryHandler(_button))

    async with running_polling(app):
        assert server.calls_of("getMe") and server.calls_of("deleteWebhook")

        server.send_private_text(USER, "hello", first_name="Ann")
        echo = await server.wait_for_call("sendMessage", lambda c: c.params["text"] == "echo: hello")
        assert echo.params["chat_id"] == USER

        server.send_command(USER, USER, "/memory foo 42")
        reply = await server.wait_for_call(
            "sendMessage", lambda c: c.params["text"].startswith("memory"), done=True
        )
        assert reply.params["text"] == "memory args=['foo', '42']"
        assert reply.params["reply_markup"] == {
            "inline_keyboard": [[{"text": "Forget", "callback_data": "forget:1"}]]
        }
        message_id = reply.response["message_id"]
        assert reply.response["from"]["username"] == "membot_test_bot"

        query = server.press_button(USER, USER, message_id, "forget:1")
        answer = await server.wait_for_call("answerCallbackQuery")
        assert answer.params == {"callback_query_id": query["id"], "text": "done"}
        edit = await server.wait_for_call("editMessageText", done=True)
        assert edit.ok
        assert edit.params["message_id"] == message_id
        assert server.get_message(USER, message_id)["text"] == "pressed forget:1"

        # Groups: /cmd@botname is routed to this bot; a mention arrives as plain text.
        server.send_command(GROUP, 7, "/memory g", chat_type="supergroup", at_bot=True)
        await server.wait_for_call("sendMessage", lambda c: c.params["chat_id"] == GROUP)
        mention = server.send_group_text(GROUP, 7, "hi there", mention_bot=True)
        assert mention["entities"] == [{"type": "mention", "offset": 0, "length": 16}]
        await server.wait_for_call("sendMessage", lambda c: c.params["text"].startswith("echo: @membot"))

        await server.wait_until_consumed(timeout=5)

    assert server.sent_texts(USER) == ["echo: hello", "memory args=['foo', '42']"]
    assert server.sent_texts(GROUP) == ["memory args=['g']", "echo: @membot_test_bot hi there"]
    assert server.pending_updates == []


@pytest.mark.asyncio
async def test_retry_after_is_raised_with_telegrams_error_json(
    fake_telegram: FakeTelegramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # retry_after as timedelta, no deprecation warning
    server = fake_telegram
    async with _bot(server) as bot:
        server.fail_next("sendMessage")
        with pytest.raises(RetryAfter) as info:
            await bot.send_message(USER, "flood")
        assert info.value.retry_after == dtm.timedelta(seconds=1)
        assert server.calls_of("sendMessage")[0].error == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        }
        assert (await bot.send_message(USER, "fine")).text == "fine"

        server.fail_next("sendMessage", error_code=500)
        with pytest.raises(NetworkError, match="Internal Server Error"):
            await bot.send_message(USER, "x")
        server.fail_next("sendMessage", error_code=502, body="<html>502 Bad Gateway</html>")
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await bot.send_message(USER, "x")
        server.fail_next("sendMessage", error_code=403)
        with pytest.raises(Forbidden, match="blocked"):
            await bot.send_message(USER, "x")
        server.fail_next("sendChatAction", disconnect=True)
        with pytest.raises(NetworkError):
            await bot.send_chat_action(USER, "typing")
        assert server.sent_texts() == ["fine"]


@pytest.mark.asyncio
async def test_rate_limiter_retries_after_429(
    fake_telegram: FakeTelegramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    server = fake_telegram
    app = ptb_builder(server).rate_limiter(AIORateLimiter(max_retries=1)).build()
    async with app:
        server.fail_next("sendMessage", retry_after=1)
        started = time.monotonic()
        message = await app.bot.send_message(USER, "after flood")
        assert time.monotonic() - started >= 1.0
    assert message.text == "after flood"
    assert [c.ok for c in server.calls_of("sendMessage")] == [False, True]


@pytest.mark.asyncio
async def test_send_document_records_bytes_and_is_downloadable(
    fake_telegram: FakeTelegramServer,
) -> None:
    server = fake_telegram
    payload = json.dumps({"memories": ["likes tea"]}).encode()
    async with _bot(server) as bot:
        sent = await bot.send_document(
            USER, io.BytesIO(payload), filename="memories.json", caption="<b>export</b>", parse_mode="HTML"
        )
        call = server.calls_of("sendDocument")[0]
        assert call.files["document"].filename == "memories.json"
        assert call.files["document"].data == payload
        assert call.params["document"] == payload
        assert call.params["chat_id"] == USER
        assert sent.document is not None and sent.document.file_name == "memories.json"
        assert sent.caption == "export" and sent.caption_entities[0].type == "bold"
        tg_file = await bot.get_file(sent.document.file_id)
        assert bytes(await tg_file.download_as_bytearray()) == payload

        # A user uploading a file reaches the bot the same way.
        server.send_private_document(USER, "notes.txt", b"remember me", mime_type="text/plain")
        (update,) = await bot.get_updates(timeout=0)
        assert update.message is not None and update.message.document is not None
        assert update.message.document.file_name == "notes.txt"
        downloaded = await (await bot.get_file(update.message.document.file_id)).download_as_bytearray()
        assert bytes(downloaded) == b"remember me"


@pytest.mark.asyncio
async def test_get_updates_long_polling_semantics(fake_telegram: FakeTelegramServer) -> None:
    server = fake_telegram
    url = f"{server.base_url}{server.bot_token}/getUpdates"
    async with _bot(server) as bot, aiohttp.ClientSession() as http:
        first = server.send_private_text(USER, "one")
        # Unconfirmed updates are delivered again; offset confirms them.
        assert [u.update_id for u in await bot.get_updates(timeout=0)] == [1]
        assert [u.update_id for u in await bot.get_updates(timeout=0)] == [1]
        assert await bot.get_updates(offset=2, timeout=0) == ()
        assert server.pending_updates == [] and first["text"] == "one"

        # An empty long poll lasts `timeout` seconds (JSON body, fractional timeout).
        started = time.monotonic()
        async with http.post(url, json={"offset": 2, "timeout": 0.3}) as resp:
            assert await resp.json() == {"ok": True, "result": []}
        assert 0.25 <= time.monotonic() - started < 2

        # A pending long poll returns as soon as an update is queued.
        mark = len(server.calls)
        poll = asyncio.create_task(bot.get_updates(offset=2, timeout=5))
        await server.wait_for_call("getUpdates", start=mark)
        started = time.monotonic()
        server.send_private_text(USER, "two")
        (update,) = await poll
        assert update.message is not None and update.message.text == "two"
        assert time.monotonic() - started < 1

        # A second poller terminates the first, like two bot instances on one token.
        async def raw_poll(wait_s: float) -> tuple[int, dict]:
            async with http.post(url, json={"offset": 4, "timeout": wait_s}) as resp:
                return resp.status, await resp.json()

        mark = len(server.calls)
        older = asyncio.create_task(raw_poll(5))
        await server.wait_for_call("getUpdates", start=mark)
        assert await raw_poll(0) == (200, {"ok": True, "result": []})
        status, body = await older
        assert status == 409 and "terminated by other getUpdates" in body["description"]

        # allowed_updates persists; default excludes e.g. message_reaction.
        server.push_update({"message_reaction": {"chat": {"id": USER, "type": "private"}}})
        assert await bot.get_updates(offset=4, timeout=0) == ()

        await bot.set_webhook("https://example.invalid/hook")
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates(timeout=0)
        await bot.delete_webhook()


@pytest.mark.asyncio
async def test_formatting_and_edit_errors_match_telegram(fake_telegram: FakeTelegramServer) -> None:
    server = fake_telegram
    async with _bot(server) as bot:
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities: character '.' is reserved"):
            await bot.send_message(USER, "Done.", parse_mode="MarkdownV2")
        with pytest.raises(BadRequest, match=r'(?i)unsupported start tag "br"'):
            await bot.send_message(USER, "a<br>b", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(USER, "x" * 4097)
        ok = await bot.send_message(USER, "*Done*\\.", parse_mode="MarkdownV2")
        assert ok.text == "Done." and ok.entities[0].type == "bold"
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await bot.edit_message_text(
                "*Done*\\.", chat_id=USER, message_id=ok.message_id, parse_mode="MarkdownV2"
            )
        await bot.delete_message(USER, ok.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
            await bot.delete_message(USER, ok.message_id)

        await bot.set_my_commands([("memory", "Show what I remember")])
        assert [c.command for c in await bot.get_my_commands()] == ["memory"]
        assert await bot.do_api_request("someFutureMethod", api_kwargs={"x": 1}) is True
        assert server.calls_of("someFutureMethod")[0].params == {"x": 1}
    assert parse_formatted_text("<i>a &amp; b</i>", "HTML") == (
        "a & b",
        [{"type": "italic", "offset": 0, "length": 5}],
    )


@pytest.mark.asyncio
async def test_standalone_process_and_control_api() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.telegram_api",
        "--port",
        "0",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        control, api = info["control_url"], f"{info['base_url']}{info['token']}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{control}/send_private_text", json={"user_id": 5, "text": "hi"}) as r:
                assert (await r.json())["result"]["text"] == "hi"
            async with http.post(f"{api}/getUpdates", data={"timeout": "0"}) as r:
                (update,) = (await r.json())["result"]
                assert update["message"]["from"]["id"] == 5
            async with http.post(f"{control}/fail_next", json={"method": "sendMessage"}) as r:
                assert r.status == 200
            async with http.post(f"{api}/sendMessage", data={"chat_id": "5", "text": "x"}) as r:
                assert r.status == 429 and (await r.json())["parameters"] == {"retry_after": 1}
            async with http.get(f"{control}/calls", params={"method": "sendMessage"}) as r:
                (call,) = (await r.json())["result"]
                assert call["params"] == {"chat_id": 5, "text": "x"} and call["error"]["error_code"] == 429
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
