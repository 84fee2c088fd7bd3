"""The Telegram adapter over real HTTP: PTB's Application polls the fake Bot API, the core answers.

Every test feeds updates through getUpdates (or the webhook) and asserts on the Bot API calls the bot made.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import pytest
from telegram import Update

from bot.app import App
from bot.config import ConfigError, TelegramSettings
from bot.dispatcher import APOLOGY, REFUSAL
from bot.incoming import IncomingMessage, Reply
from bot.telegram_adapter import (
    KEPT,
    MAX_TEXT,
    NOT_YOUR_BUTTON,
    SENT_PRIVATELY,
    RateLimiter,
    TelegramAdapter,
    command_name,
    telegram_chunks,
)
from models.fake import FakeBackend
from tests.fakes.telegram_api import FakeTelegramServer
from tests.ports import free_port
from tests.telegram.conftest import ADMIN, GROUP, OTHER, USER, StartBot, say

BOT = "membot_test_bot"


def _prompts(app: App) -> list[tuple[IncomingMessage, str]]:
    seen: list[tuple[IncomingMessage, str]] = []
    app.dispatcher.prompt_hooks.append(lambda msg, prompt: seen.append((msg, prompt.flat())))
    return seen


async def _user_texts(app: App) -> list[str]:
    rows = await app.store.fetchall("SELECT text FROM messages WHERE author = 'user' ORDER BY id")
    return [r["text"] for r in rows]


# -- private chats --------------------------------------------------------------------------------


async def test_dm_conversation_remembered_in_the_next_session(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server, prompts = fake_telegram, _prompts(app)
    reply = await say(server, lambda: server.send_private_text(USER, "I keep bees on my roof in Lyon.",
                                                               first_name="Ann"), USER)
    assert reply.params["text"] == "echo: I keep bees on my roof in Lyon."
    assert "parse_mode" not in reply.params and "reply_parameters" not in reply.params  # plain, unquoted in DMs
    typing = server.calls_of("sendChatAction")[0]
    assert typing.params == {"chat_id": USER, "action": "typing"} and typing.seq < reply.seq
    msg = prompts[-1][0]
    assert (msg.platform, msg.user_id, msg.chat_id, msg.chat_kind, msg.display_name, msg.is_admin) == (
        "telegram", str(USER), str(USER), "dm", "Ann", False)

    ended = await say(server, lambda: server.send_command(USER, USER, "/end"), USER)
    assert ended.params["text"].startswith("Conversation ended")
    await app.jobs.run_until_idle()

    reply = await say(server, lambda: server.send_private_text(USER, "Do you recall my hobby?",
                                                               first_name="Ann"), USER)
    assert reply.params["text"] == "echo: Do you recall my hobby?"
    prompt = prompts[-1][1]
    memory_part = prompt.split("What you remember about Ann:", 1)[1]
    assert "bees" in memory_part and "Lyon" in memory_part
    assert await app.store.scalar("SELECT COUNT(*) FROM sessions") == 2
    memory = await say(server, lambda: server.send_command(USER, USER, "/memory"), USER)
    assert "Profile:" in memory.params["text"] and "bees" in memory.params["text"]


async def test_user_commands_in_a_private_chat(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server = fake_telegram

    async def command(text: str) -> str:
        return (await say(server, lambda: server.send_command(USER, USER, text), USER)).params["text"]

    start = await command("/start")
    assert start.startswith("Hi, I'm Membot!") and "/forget" in start and "/stats" not in start
    assert "/memory" in await command("/help")
    assert "don't remember" in await command("/memory")
    assert "no conversation" in await command("/end")
    await say(server, lambda: server.send_private_text(USER, "My cat is called Pixel."), USER)

    export = await say(server, lambda: server.send_command(USER, USER, "/export"), USER, method="sendDocument")
    document = export.files["document"]
    assert document.filename == "membot-export.json"
    data = json.loads(document.data)
    assert data["user"]["id"] == str(USER)
    assert data["sessions"][0]["messages"][0]["text"] == "My cat is called Pixel."
    assert export.params["caption"] == "Here is everything I have stored about you."

    assert "ended" in await command("/end")
    assert await command("/nonsense") == "I don't know /nonsense. Try /help."
    sticker = await say(server, lambda: server.push_update({"message": {
        "message_id": 900, "date": int(time.time()), "chat": {"id": USER, "type": "private", "first_name": "U"},
        "from": server.make_user(USER), "sticker": {"file_id": "s", "file_unique_id": "s", "type": "regular",
                                                    "width": 1, "height": 1, "is_animated": False,
                                                    "is_video": False}}}), USER)
    assert sticker.params["text"] == "I can only read text. Send me a message and I'll answer."


async def test_command_menus_are_registered_for_everyone_and_for_admins(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer
) -> None:
    menus = {json.dumps(c.params.get("scope"), sort_keys=True): [x["command"] for x in c.params["commands"]]
             for c in fake_telegram.calls_of("setMyCommands") if c.ok}
    user = ["start", "help", "memory", "forget", "export", "end"]
    assert menus == {
        "null": user,
        json.dumps({"chat_id": ADMIN, "type": "chat"}): [*user, "stats", "compress_now", "forget_user"],
    }
    first_poll = await fake_telegram.wait_for_call("getUpdates")
    assert all(c.seq < first_poll.seq for c in fake_telegram.calls_of("setMyCommands"))


# -- groups ---------------------------------------------------------------------------------------


async def test_group_answers_only_mentions_replies_and_commands(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server = fake_telegram
    server.send_group_text(GROUP, USER, "just chatting among humans")
    mention = server.send_group_text(GROUP, USER, "what is the weather like?", mention_bot=True)
    reply = await server.wait_for_call("sendMessage", lambda c: c.params["chat_id"] == GROUP, done=True)
    assert reply.params["text"] == "echo: what is the weather like?"  # the @mention is not part of the turn
    assert reply.params["reply_parameters"]["message_id"] == mention["message_id"]

    server.send_group_text(GROUP, OTHER, "and what about you?", reply_to_bot=True)
    server.send_command(GROUP, USER, "/help", chat_type="supergroup", at_bot=True)
    server.send_command(GROUP, USER, "/help@other_bot", chat_type="supergroup")  # another bot's command
    server.send_command(GROUP, USER, "/roll", chat_type="supergroup")  # not ours, not addressed to us
    server.send_bot_text(GROUP, 777, f"@{BOT} hello from a bot")
    server.send_channel_post(-1009999, f"@{BOT} channel news")
    server.edit_message(GROUP, mention["message_id"], f"@{BOT} edited question")  # not delivered (allowed_updates)
    # ... and even if an edit arrives (e.g. by webhook), it is not a new turn.
    edited = server.edit_message(GROUP, mention["message_id"], f"@{BOT} edited again")
    await bot.application.process_update(Update.de_json({"update_id": 10_000, "edited_message": edited}, bot.bot))
    server.send_group_text(GROUP, USER, "last one", mention_bot=True)
    await server.wait_for_call("sendMessage", lambda c: c.params["text"] == "echo: last one", done=True)

    assert server.sent_texts(GROUP)[0:2] == ["echo: what is the weather like?", "echo: and what about you?"]
    assert server.sent_texts(GROUP)[2].startswith("Commands:")
    assert server.sent_texts(GROUP)[3:] == ["echo: last one"]
    assert server.sent_texts() == server.sent_texts(GROUP)
    assert await _user_texts(app) == ["what is the weather like?", "and what about you?", "last one"]
    chat = await app.store.fetchone("SELECT kind, title FROM chats")
    assert tuple(chat) == ("group", f"Test supergroup {GROUP}")


async def test_usernames_in_a_reply_do_not_ping_anyone(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server = fake_telegram
    server.send_group_text(GROUP, USER, "say hi to @alice_smith and mail bob@example.com", mention_bot=True)
    reply = await server.wait_for_call("sendMessage", lambda c: c.params["chat_id"] == GROUP, done=True)
    text = reply.params["text"]
    assert "@alice_smith" not in text and "@\u2060alice_smith" in text  # shown, but no mention entity
    assert "bob@example.com" in text  # an e-mail address is left alone
    assert await _user_texts(app) == ["say hi to @alice_smith and mail bob@example.com"]  # stored as written


async def test_memory_belongs_to_the_person_and_private_facts_stay_out_of_groups(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server, prompts = fake_telegram, _prompts(app)
    await say(server, lambda: server.send_private_text(USER, "My secret diagnosis is asthma."), USER)
    await say(server, lambda: server.send_command(USER, USER, "/end"), USER)
    await app.jobs.run_until_idle()

    await say(server, lambda: server.send_private_text(USER, "Anything new?"), USER)
    assert "asthma" in prompts[-1][1]
    await say(server, lambda: server.send_group_text(GROUP, USER, "hello everyone", mention_bot=True), GROUP)
    assert prompts[-1][0].chat_kind == "group" and "asthma" not in prompts[-1][1]
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 1  # one person, two chats

    # /memory and /export in a group are answered in the person's private chat, never in the group.
    mark = len(server.calls)
    note = await say(server, lambda: server.send_command(GROUP, USER, "/memory", chat_type="supergroup"), GROUP)
    assert note.params["text"] == SENT_PRIVATELY
    private = [c for c in server.calls[mark:] if c.method == "sendMessage" and c.params["chat_id"] == USER]
    assert len(private) == 1 and "asthma" in private[0].params["text"]
    assert not any("asthma" in t for t in server.sent_texts(GROUP))

    mark = len(server.calls)
    note = await say(server, lambda: server.send_command(GROUP, USER, "/export", chat_type="supergroup"), GROUP)
    assert note.params["text"] == SENT_PRIVATELY
    (document,) = [c for c in server.calls[mark:] if c.method == "sendDocument"]
    assert document.params["chat_id"] == USER and b"asthma" in document.files["document"].data

    # Someone who never opened a private chat with the bot is told how to, still without the data.
    server.fail_next("sendMessage", error_code=403,
                     description="Forbidden: bot can't initiate conversation with a user")
    note = await say(server, lambda: server.send_command(GROUP, OTHER, "/memory", chat_type="supergroup"), GROUP)
    assert "open a private chat with me (@membot_test_bot)" in note.params["text"]


async def test_forget_needs_a_confirmation_from_the_same_person(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server = fake_telegram
    await say(server, lambda: server.send_group_text(GROUP, USER, "I like tea", mention_bot=True), GROUP)
    ask = await say(server, lambda: server.send_command(GROUP, USER, "/forget", chat_type="supergroup"), GROUP)
    assert "cannot be undone" in ask.params["text"]
    buttons = ask.params["reply_markup"]["inline_keyboard"][0]
    assert [b["callback_data"] for b in buttons] == [f"forget:yes:{USER}", f"forget:no:{USER}"]
    message_id = ask.response["message_id"]

    # Another member presses "yes": refused, nothing deleted.
    server.press_button(GROUP, OTHER, message_id, f"forget:yes:{USER}")
    answer = await server.wait_for_call("answerCallbackQuery", done=True)
    assert answer.params["text"] == NOT_YOUR_BUTTON and answer.params["show_alert"] is True
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 1

    # The person says no: kept.
    await say(server, lambda: server.press_button(GROUP, USER, message_id, f"forget:no:{USER}"), GROUP,
              method="editMessageText")
    assert server.get_message(GROUP, message_id)["text"] == KEPT
    assert "reply_markup" not in server.get_message(GROUP, message_id)
    assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 2

    ask = await say(server, lambda: server.send_command(GROUP, USER, "/forget", chat_type="supergroup"), GROUP)
    message_id = ask.response["message_id"]
    await say(server, lambda: server.press_button(GROUP, USER, message_id, f"forget:yes:{USER}"), GROUP,
              method="editMessageText")
    assert server.get_message(GROUP, message_id)["text"] == "Done: I deleted everything I knew about you."
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 0
    assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 0


# -- admin commands -------------------------------------------------------------------------------


async def test_admin_commands_refused_to_others_and_obeyed_for_admins(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server = fake_telegram
    await say(server, lambda: server.send_private_text(USER, "I play the violin."), USER)
    await say(server, lambda: server.send_command(USER, USER, "/end"), USER)

    for text in ("/stats", "/compress_now", f"/forget_user {ADMIN}", f"/forget_user {USER}"):
        refusal = await say(server, lambda t=text: server.send_command(USER, USER, t), USER)
        assert refusal.params["text"] == REFUSAL
    refusal = await say(server, lambda: server.send_command(GROUP, USER, "/stats", chat_type="supergroup",
                                                            at_bot=True), GROUP)
    assert refusal.params["text"] == REFUSAL
    assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 0  # /compress_now did not run
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 1

    async def admin(text: str) -> str:
        return (await say(server, lambda: server.send_command(ADMIN, ADMIN, text), ADMIN)).params["text"]

    assert "/compress_now" in await admin("/help")
    stats = await admin("/stats")
    assert "Users: 1" in stats and "Queued memory jobs: 1" in stats and "Model: fake" in stats
    assert (await admin("/compress_now")).startswith("Memory jobs ran:")
    assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 1
    assert await admin("/forget_user") == "Usage: /forget_user <user id>"
    assert (await admin(f"/forget_user {USER}")).startswith(f"Deleted everything about user {USER}:")
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 0
    # Admin rights come from the person, so they work in groups too.
    group = await say(server, lambda: server.send_command(GROUP, ADMIN, "/stats", chat_type="supergroup",
                                                          at_bot=True), GROUP)
    assert group.params["text"].startswith("Users: 0")


# -- what a Telegram user expects -----------------------------------------------------------------


async def test_a_10000_character_reply_is_split_at_paragraphs(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, fake_backend: FakeBackend
) -> None:
    paragraphs = [(f"Paragraph {i}. " + "All work and no play makes a dull bot. " * 12).strip() for i in range(21)]
    long_text = "\n\n".join(paragraphs)[:10_000].rsplit(" ", 1)[0]
    assert len(long_text) > 9_900
    fake_backend.responder = lambda prompt: long_text
    fake_telegram.send_private_text(USER, "Tell me a long story")
    calls = await fake_telegram.wait_for_calls("sendMessage", 3, lambda c: c.ok, done=True)
    texts = [c.params["text"] for c in calls]
    assert all(len(t) <= MAX_TEXT for t in texts)
    assert all(t.endswith(".") for t in texts[:-1])  # cut between paragraphs, not mid-sentence
    assert "\n\n".join(texts) == long_text
    await asyncio.sleep(0.2)
    assert len(fake_telegram.calls_of("sendMessage")) == 3


async def test_model_output_is_sent_as_plain_text(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, fake_backend: FakeBackend
) -> None:
    tricky = "<b>bold</b> *star* _under_ [link](http://x.invalid) `code` a<br>b 1.5! @everyone"
    fake_backend.responder = lambda prompt: tricky
    reply = await say(fake_telegram, lambda: fake_telegram.send_private_text(USER, "format please"), USER)
    assert "parse_mode" not in reply.params and "entities" not in reply.params
    assert reply.params["text"] == tricky.replace("@everyone", "@\u200beveryone")
    assert reply.response["text"] == reply.params["text"]
    assert reply.params["link_preview_options"] == {"is_disabled": True}


async def test_model_failure_gets_a_short_apology_and_the_message_is_kept(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, fake_backend: FakeBackend, app: App
) -> None:
    fake_backend.fail_next = 1
    reply = await say(fake_telegram, lambda: fake_telegram.send_private_text(USER, "Remember: my bike is blue"),
                      USER)
    assert reply.params["text"] == APOLOGY
    assert await _user_texts(app) == ["Remember: my bike is blue"]
    reply = await say(fake_telegram, lambda: fake_telegram.send_private_text(USER, "again"), USER)
    assert reply.params["text"] == "echo: again"


async def test_retry_after_is_honoured(bot: TelegramAdapter, fake_telegram: FakeTelegramServer) -> None:
    fake_telegram.fail_next("sendMessage", retry_after=1)
    fake_telegram.send_private_text(USER, "hello")
    first, second = await fake_telegram.wait_for_calls("sendMessage", 2, done=True)
    assert first.error is not None and first.error["error_code"] == 429
    assert second.ok and second.params["text"] == "echo: hello"
    assert second.time - first.time >= 1.0


async def test_typing_at_once_and_repeated_until_the_reply_is_sent(
    start_bot: StartBot, fake_telegram: FakeTelegramServer, fake_backend: FakeBackend
) -> None:
    bot = await start_bot()
    bot.typing_interval = 0.25
    fake_backend.delay = 0.9
    pushed = time.time()
    fake_telegram.send_private_text(USER, "think slowly")
    reply = await fake_telegram.wait_for_call("sendMessage", done=True)
    await asyncio.sleep(0.4)  # longer than the typing interval: no typing after the reply
    typing = fake_telegram.calls_of("sendChatAction")
    assert typing[0].time - pushed < 0.5
    assert len(typing) >= 3 and all(c.seq < reply.seq for c in typing)
    gaps = [b.time - a.time for a, b in itertools.pairwise(typing)]
    assert all(g >= 0.2 for g in gaps)


async def test_a_slow_chat_does_not_block_others_and_each_chat_stays_in_order(
    bot: TelegramAdapter, fake_telegram: FakeTelegramServer, app: App
) -> None:
    server = fake_telegram
    gate = asyncio.Event()

    async def hold_user_replies(call):  # the reply to USER hangs in the network until the gate opens
        if call.params.get("chat_id") == USER:
            await gate.wait()
        return server._m_sendmessage(call)

    server.set_handler("sendMessage", hold_user_replies)
    server.send_private_text(USER, "first")
    server.send_private_text(USER, "second")
    await server.wait_for_call("sendMessage", lambda c: c.params["chat_id"] == USER)
    other = await say(server, lambda: server.send_private_text(OTHER, "hi from elsewhere"), OTHER)
    assert other.params["text"] == "echo: hi from elsewhere"
    assert "second" not in await _user_texts(app)  # USER's second message waits for the first
    gate.set()
    await server.wait_for_calls("sendMessage", 2, lambda c: c.params["chat_id"] == USER, done=True)
    assert server.sent_texts(USER) == ["echo: first", "echo: second"]


async def test_streaming_grows_the_reply_in_place_at_most_once_a_second(
    start_bot: StartBot, fake_telegram: FakeTelegramServer, fake_backend: FakeBackend, app: App
) -> None:
    await start_bot(streaming=True)
    final = " ".join(f"word{i}" for i in range(24)) + "."
    fake_backend.responder = lambda prompt: final
    fake_backend.stream_delay = 0.1  # the fake model streams word by word over ~2.4 s
    fake_telegram.send_private_text(USER, "stream please")
    sent = await fake_telegram.wait_for_call("sendMessage", done=True)
    await fake_telegram.wait_for_call("editMessageText", lambda c: c.params["text"] == final, done=True, timeout=8)
    updates = [sent, *fake_telegram.calls_of("editMessageText")]
    assert len(fake_telegram.calls_of("sendMessage")) == 1 and len(updates) >= 3
    assert all(c.ok for c in updates) and "parse_mode" not in sent.params
    assert all(b.time - a.time >= 0.99 for a, b in itertools.pairwise(updates))
    assert sent.params["text"].startswith("word0") and sent.params["text"] != final
    assert fake_telegram.get_message(USER, sent.response["message_id"])["text"] == final
    assert await app.store.scalar("SELECT text FROM messages WHERE author = 'bot'") == final


class _StreamingDispatcher:
    """Stands in for the core: calls on_partial with a growing text, then returns `final`."""

    def __init__(self, partials: list[str], final: Reply) -> None:
        self.partials, self.final = partials, final
        self.noted: list[str] = []

    async def handle(self, msg: IncomingMessage, *, on_partial=None, deliver=None) -> Reply:
        assert on_partial is not None and deliver is not None
        for text in self.partials:
            await on_partial(text)
            await asyncio.sleep(0.03)
        await deliver(self.final)
        return self.final

    async def delivered(self, reply: Reply, platform_message_id: str) -> None:
        self.noted.append(platform_message_id)


async def test_streamed_reply_past_4096_characters_continues_in_new_messages(
    start_bot: StartBot, fake_telegram: FakeTelegramServer
) -> None:
    bot = await start_bot(streaming=True)
    bot.edit_interval = 0.05
    long_text = "\n\n".join(f"Part {i}. " + "la " * 600 for i in range(5)).replace(" \n", "\n").strip()
    bot.dispatcher = _StreamingDispatcher([long_text[:n] for n in (100, 3000, 6000)], Reply(long_text))
    fake_telegram.send_private_text(USER, "a long one")
    await fake_telegram.wait_for_calls("sendMessage", 3, done=True)
    await asyncio.sleep(0.2)
    sent = fake_telegram.calls_of("sendMessage")
    assert len(sent) == 3 and all(c.ok for c in sent)
    first = fake_telegram.get_message(USER, sent[0].response["message_id"])["text"]
    assert "\n\n".join([first, *(c.params["text"] for c in sent[1:])]) == long_text
    assert all(len(c.params["text"]) <= MAX_TEXT for c in fake_telegram.calls_of("editMessageText"))
    # noted as delivered under the message that grew in place, so a redelivery does not send it again
    assert bot.dispatcher.noted == [str(sent[0].response["message_id"])]

    # A reply that ends up silent (the person was forgotten meanwhile) takes its partial text back.
    bot.dispatcher = _StreamingDispatcher(["Hello the", "Hello there"], Reply("", kind="none"))
    mark = len(fake_telegram.calls)
    fake_telegram.send_private_text(USER, "and forget me")
    deleted = await fake_telegram.wait_for_call("deleteMessage", start=mark, done=True)
    assert deleted.ok and fake_telegram.get_message(USER, deleted.params["message_id"]) is None
    assert bot.dispatcher.noted == []


# -- webhook --------------------------------------------------------------------------------------


async def test_webhook_mode_receives_updates_with_the_secret(
    start_bot: StartBot, fake_telegram: FakeTelegramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TG_SECRET", "s3cret-token")
    port = free_port()
    await start_bot(mode="webhook", webhook_url="https://bot.example.invalid/tg/hook", webhook_listen="127.0.0.1",
                    webhook_port=port, webhook_secret_env="TEST_TG_SECRET")
    (hook,) = fake_telegram.calls_of("setWebhook")
    assert hook.params["url"] == "https://bot.example.invalid/tg/hook"
    assert hook.params["secret_token"] == "s3cret-token"
    assert hook.params["allowed_updates"] == ["message", "callback_query"]
    assert fake_telegram.calls_of("getUpdates") == []

    message = fake_telegram.send_private_text(USER, "via webhook")
    update = {"update_id": 500, "message": message}
    url = f"http://127.0.0.1:{port}/tg/hook"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as resp:
            assert resp.status == 403
        mark = len(fake_telegram.calls)
        async with http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}) as r:
            assert r.status == 200
    reply = await fake_telegram.wait_for_call("sendMessage", start=mark, done=True)
    assert reply.params["text"] == "echo: via webhook"
    assert fake_telegram.sent_texts() == ["echo: via webhook"]


async def test_webhook_drops_forged_updates_from_another_person(
    start_bot: StartBot, fake_telegram: FakeTelegramServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone who knows the secret (or reaches an unprotected port) posts an update "from" Alice, or from the
    admin, into their own private chat: it is dropped and logged, and nothing of Alice's reaches them."""
    monkeypatch.setenv("TEST_TG_SECRET", "s3cret-token")
    port = free_port()
    adapter = await start_bot(mode="webhook", webhook_url="https://bot.example.invalid/tg/hook",
                              webhook_listen="127.0.0.1", webhook_port=port, webhook_secret_env="TEST_TG_SECRET")
    url, headers = f"http://127.0.0.1:{port}/tg/hook", {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}
    mallory = 6666
    async with aiohttp.ClientSession() as http:
        genuine = fake_telegram.send_private_text(USER, "My cat is called Whiskers.", first_name="Alice")
        mark = len(fake_telegram.calls)
        async with http.post(url, json={"update_id": 600, "message": genuine}, headers=headers) as resp:
            assert resp.status == 200
        await fake_telegram.wait_for_call("sendMessage", start=mark, done=True)
        forgeries = []
        for update_id, sender, text in ((601, USER, "/export"), (602, ADMIN, f"/forget_user {USER}")):
            forged = fake_telegram.send_private_text(mallory, text, first_name="Mallory")
            forged["from"] = {"id": sender, "is_bot": False, "first_name": "Alice"}
            forgeries.append({"update_id": update_id, "message": forged})
        mark = len(fake_telegram.calls)
        for update in forgeries:
            async with http.post(url, json=update, headers=headers) as resp:
                assert resp.status == 200  # Telegram must not retry it; it is simply not handled
        await asyncio.sleep(0.5)
    sent = fake_telegram.calls[mark:]
    assert not [c for c in sent if c.method in ("sendDocument", "sendMessage")], [c.method for c in sent]
    assert caplog.text.count("dropped update") == 2
    assert await adapter.app.store.scalar("SELECT COUNT(*) FROM messages WHERE author = 'user'") == 1


async def test_webhook_mode_needs_its_url_and_secret(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    app.settings.telegram = TelegramSettings(mode="webhook")
    with pytest.raises(ConfigError, match=r"telegram\.webhook_url"):
        TelegramAdapter(app, "123:ABC")
    app.settings.telegram = TelegramSettings(mode="webhook", webhook_url="https://x.invalid/h")
    with pytest.raises(ConfigError, match=r"telegram\.webhook_secret_env: required"):
        TelegramAdapter(app, "123:ABC")
    monkeypatch.delenv("MISSING_TG_SECRET", raising=False)
    app.settings.telegram = TelegramSettings(mode="webhook", webhook_url="https://x.invalid/h",
                                             webhook_secret_env="MISSING_TG_SECRET")
    with pytest.raises(ConfigError, match="MISSING_TG_SECRET"):
        TelegramAdapter(app, "123:ABC")


# -- helpers --------------------------------------------------------------------------------------


def test_command_parsing_and_chunks() -> None:
    assert command_name("/Help@Membot_test_bot now") == ("help", "Membot_test_bot")
    assert command_name("/end") == ("end", "")
    assert command_name("hello /end") is None and command_name("/") is None
    emoji = "🐝" * 3000  # 6,000 UTF-16 units in 3,000 characters
    chunks = telegram_chunks(emoji)
    assert "".join(chunks) == emoji and all(len(c.encode("utf-16-le")) // 2 <= MAX_TEXT for c in chunks)


# -- rate limits ----------------------------------------------------------------------------------


async def test_typing_counts_against_the_global_limit_but_not_the_groups() -> None:
    """Before, typing actions were shown to the limiter without a chat, which AIORateLimiter takes as "no limit
    at all": a busy bot's "typing…" went out unthrottled. Now they take the global budget, not a group's."""
    limiter = RateLimiter(overall_max_rate=1, overall_time_period=60, group_max_rate=1, group_time_period=60)
    await limiter.initialize()
    sent: list[str] = []

    async def send(*args: object, **kwargs: object) -> bool:
        sent.append("typing")
        return True

    try:
        assert limiter._base_limiter is not None and limiter._base_limiter.has_capacity()
        await limiter.process_request(send, (), {}, "sendChatAction", {"chat_id": GROUP, "action": "typing"}, None)
        assert sent == ["typing"]
        assert not limiter._base_limiter.has_capacity()  # the global budget was spent
        assert GROUP not in limiter._group_limiters  # the group's was not
    finally:
        await limiter.shutdown()
