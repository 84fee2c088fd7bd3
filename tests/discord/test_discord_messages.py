"""The Discord message handler, driven by real discord.py objects built from gateway payloads.

Who the bot answers (DMs, mentions, replies to it, enabled channels; never bots, webhooks or itself), what
it hands the dispatcher, and how the answer looks on Discord: a reply to the person's message, split at
2,000 characters without breaking code blocks, never able to mention anyone.
"""

from __future__ import annotations

import itertools

from bot.app import App
from bot.config import Settings
from bot.discord_adapter import (
    MESSAGE_LIMIT,
    NO_CONTENT_HINT,
    TEXT_COMMAND_HINT,
    DiscordAdapter,
    _fences,
    build_intents,
)
from bot.dispatcher import APOLOGY
from memory.channels import set_always_reply
from models.fake import FakeBackend
from tests.discord.helpers import MESSAGES, assert_no_pings, contents, mention
from tests.fakes.clock import ManualClock
from tests.fakes.discord_payloads import (
    ADMIN_ROLE_ID,
    BOT_ID,
    CHANNEL_ID,
    GUILD_ID,
    OTHER_CHANNEL_ID,
    OWNER_ID,
    USER_ID,
    DiscordHarness,
    bot_user_payload,
    default_guild_payload,
    message_payload,
    role_payload,
    user_payload,
)

DM_CHANNEL_ID = 900000000000000777
TYPING = r"/channels/\d+/typing"


async def _stored(app: App) -> list[tuple[str, str, str, str]]:
    rows = await app.store.fetchall(
        "SELECT c.kind, c.platform_chat_id, m.author, m.text FROM messages m JOIN chats c ON c.id = m.chat_id "
        "ORDER BY m.id"
    )
    return [tuple(r) for r in rows]


async def test_dm_is_answered_as_a_reply_with_typing(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    payload = message_payload(channel_id=DM_CHANNEL_ID, content="Hi! I grow tomatoes.",
                              author=user_payload(USER_ID, "alice", global_name="Alice A."))
    await h.dispatch_message(payload)

    typing = h.calls("POST", TYPING)
    (send,) = h.calls("POST", MESSAGES)
    assert typing and h.http_calls.index(typing[0]) < h.http_calls.index(send)  # typing while generating
    assert send.path == f"/channels/{DM_CHANNEL_ID}/messages"
    assert send.json["content"] == "echo: Hi! I grow tomatoes."
    assert send.json["message_reference"]["message_id"] == int(payload["id"])
    assert send.json["message_reference"]["fail_if_not_exists"] is False  # a deleted question still gets its answer
    assert await _stored(app) == [("dm", str(DM_CHANNEL_ID), "user", "Hi! I grow tomatoes."),
                                  ("dm", str(DM_CHANNEL_ID), "bot", "echo: Hi! I grow tomatoes.")]
    user = await app.store.fetchone("SELECT platform, platform_user_id, display_name FROM users")
    assert tuple(user) == ("discord", str(USER_ID), "Alice A.")
    assert await app.store.scalar("SELECT platform_message_id FROM messages WHERE author = 'user'") == payload["id"]
    assert assert_no_pings(h.http_calls) == 1


async def test_mention_is_answered_without_the_mention(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    owner = user_payload(OWNER_ID, "owner", global_name="Olga")
    payload = message_payload(
        content=f"<@!{BOT_ID}> what do you think of <@{OWNER_ID}>'s idea in <#{OTHER_CHANNEL_ID}>?",
        guild_id=GUILD_ID, mentions=[bot_user_payload(), owner],
    )
    await h.dispatch_message(payload)
    (send,) = h.calls("POST", MESSAGES)
    assert send.path == f"/channels/{CHANNEL_ID}/messages"
    assert send.json["content"] == "echo: what do you think of @Olga's idea in #random?"
    assert send.json["message_reference"]["message_id"] == int(payload["id"])
    (kind, chat, _, text), _ = await _stored(app)
    assert (kind, chat, text) == ("guild", str(CHANNEL_ID), "what do you think of @Olga's idea in #random?")
    assert await app.store.scalar("SELECT title FROM chats") == "Test Guild #general"
    assert_no_pings(h.http_calls)


async def test_reply_to_the_bot_and_its_role_count_as_addressing_it(app: App) -> None:
    bot_role = 900000000000000555
    guild = default_guild_payload()
    guild["roles"].append(role_payload(bot_role, "membot", managed=True))  # the bot's own integration role
    for member in guild["members"]:
        if member["user"]["id"] == str(BOT_ID):
            member["roles"] = [str(bot_role)]
    adapter = DiscordAdapter(app, "fake-token")
    async with DiscordHarness(adapter.client, guilds=[guild]) as h:
        await h.dispatch_message(message_payload(content=f"<@&{bot_role}> hey role", guild_id=GUILD_ID,
                                                 mention_roles=[bot_role]))
        earlier = message_payload(author=bot_user_payload(), content="I answered before", guild_id=GUILD_ID)
        await h.dispatch_message(message_payload(content="and another thing", guild_id=GUILD_ID,
                                                 referenced_message=earlier))
        # A reply to someone else, and a mention of another role, are not for the bot.
        other = message_payload(author=user_payload(OWNER_ID, "owner"), content="hi", guild_id=GUILD_ID)
        await h.dispatch_message(message_payload(content="replying to owner", guild_id=GUILD_ID,
                                                 referenced_message=other))
        await h.dispatch_message(message_payload(content=f"<@&{ADMIN_ROLE_ID}> admins?", guild_id=GUILD_ID,
                                                 mention_roles=[ADMIN_ROLE_ID]))
        assert contents(h.calls("POST", MESSAGES)) == ["echo: hey role", "echo: and another thing"]
        assert_no_pings(h.http_calls)


async def test_not_addressed_bots_webhooks_and_itself_are_ignored(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await h.dispatch_message(message_payload(content="just chatting", guild_id=GUILD_ID))
    await h.dispatch_message(mention("from a bot", author=user_payload(1234, "otherbot", bot=True)))
    await h.dispatch_message(mention("from a webhook", webhook_id=4321, author=user_payload(4321, "hook")))
    await h.dispatch_message(mention("myself", author=bot_user_payload()))
    await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content="bot DM",
                                             author=user_payload(1234, "otherbot", bot=True)))
    await h.dispatch_message(message_payload(content="@everyone does not count", guild_id=GUILD_ID,
                                             mention_everyone=True))
    assert h.calls("POST", MESSAGES) == [] and h.calls("POST", TYPING) == []
    assert await _stored(app) == []


async def test_enabled_channel_answers_every_message(app: App, settings: Settings) -> None:
    settings.discord.message_content_intent = True
    await set_always_reply(app.store, "discord", str(CHANNEL_ID), True)
    adapter = DiscordAdapter(app, "fake-token")
    assert adapter.client.intents.message_content
    async with DiscordHarness(adapter.client) as h:  # loads the enabled channels at start
        await h.dispatch_message(message_payload(content="no mention needed", guild_id=GUILD_ID))
        await h.dispatch_message(message_payload(content="not here", channel_id=OTHER_CHANNEL_ID, guild_id=GUILD_ID))
        await h.dispatch_message(message_payload(content="", guild_id=GUILD_ID))  # a picture alone: no answer
        await h.dispatch_message(mention(""))  # but a bare mention gets one
        replies = contents(h.calls("POST", MESSAGES))
        assert replies[0] == "echo: no mention needed" and len(replies) == 2
        assert "only read text" in replies[1]
        assert_no_pings(h.http_calls)


async def test_without_message_content_intent_enabled_channels_stay_quiet(app: App) -> None:
    await set_always_reply(app.store, "discord", str(CHANNEL_ID), True)
    adapter = DiscordAdapter(app, "fake-token")
    intents = adapter.client.intents
    assert not intents.message_content and intents.guilds and intents.guild_messages and intents.dm_messages
    assert not intents.members and not intents.presences  # nothing privileged by default
    assert build_intents(True).message_content
    async with DiscordHarness(adapter.client) as h:
        # Without the intent Discord sends an empty content for messages that don't mention the bot.
        await h.dispatch_message(message_payload(content="", guild_id=GUILD_ID))
        await h.dispatch_message(mention("mentions still carry text"))
        # A reply to the bot without the @ ping carries no text either: say how to be heard.
        earlier = message_payload(author=bot_user_payload(), content="earlier answer", guild_id=GUILD_ID)
        await h.dispatch_message(message_payload(content="", guild_id=GUILD_ID, referenced_message=earlier))
        await h.dispatch_message(mention(""))  # a bare mention did carry its text: the usual notice
        replies = contents(h.calls("POST", MESSAGES))
        assert replies[:2] == ["echo: mentions still carry text", NO_CONTENT_HINT] and "only read text" in replies[2]
        assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 2


async def test_long_reply_is_split_into_replies_keeping_code_blocks(settings: Settings, clock: ManualClock) -> None:
    code = "\n".join(f"print('line {i}')" for i in range(300))
    long_answer = "Here you go:\n```python\n" + code + "\n```\nDone."
    app = await App.create(settings, backend=FakeBackend(responder=lambda p: long_answer), clock=clock)
    await app.start(schedule=False)
    try:
        adapter = DiscordAdapter(app, "fake-token")
        async with DiscordHarness(adapter.client) as h:
            payload = mention("write me a long script")
            await h.dispatch_message(payload)
            sends = h.calls("POST", MESSAGES)
            texts = contents(sends)
            assert len(texts) >= 3 and all(len(t) <= MESSAGE_LIMIT for t in texts)
            assert all(len(_fences(t)) % 2 == 0 for t in texts)  # each message renders its code block
            assert all(t.startswith("```python\n") for t in texts[1:])
            lines = [ln for t in texts for ln in t.split("\n") if ln.startswith("print(")]
            assert lines == code.split("\n")
            # The first answers the person, each next one continues the previous part.
            assert sends[0].json["message_reference"]["message_id"] == int(payload["id"])
            for before, after in itertools.pairwise(sends):
                assert after.json["message_reference"]["message_id"] == int(before.response["id"])
            assert assert_no_pings(h.http_calls) == len(texts)
            assert await app.store.scalar("SELECT text FROM messages WHERE author = 'bot'") == long_answer
    finally:
        await app.close()


async def test_model_failure_apologises_and_keeps_the_message(
    app: App, fake_backend: FakeBackend, discord_harness: DiscordHarness
) -> None:
    fake_backend.fail_next = 1
    await discord_harness.dispatch_message(mention("remember that my bike is blue"))
    assert contents(discord_harness.calls("POST", MESSAGES)) == [APOLOGY]
    assert await _stored(app) == [("guild", str(CHANNEL_ID), "user", "remember that my bike is blue")]
    await discord_harness.dispatch_message(mention("still there?"))
    assert contents(discord_harness.calls("POST", MESSAGES))[-1] == "echo: still there?"


async def test_nothing_the_model_writes_can_ping(settings: Settings, clock: ManualClock) -> None:
    nasty = f"@everyone @here <@{OWNER_ID}> <@!{USER_ID}> <@&{ADMIN_ROLE_ID}> hello"
    app = await App.create(settings, backend=FakeBackend(responder=lambda p: nasty), clock=clock)
    await app.start(schedule=False)
    try:
        adapter = DiscordAdapter(app, "fake-token")
        assert adapter.client.allowed_mentions is not None
        assert adapter.client.allowed_mentions.to_dict() == {"parse": []}  # the client-wide default too
        async with DiscordHarness(adapter.client) as h:
            await h.dispatch_message(mention("say something"))
            await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content="and here?"))
            sent = contents(h.calls("POST", MESSAGES))
            assert len(sent) == 2 and all("@everyone" not in t and "@here" not in t for t in sent)
            assert assert_no_pings(h.http_calls) == 2
    finally:
        await app.close()


async def test_text_commands_point_to_slash_commands(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content="I live in Lyon"))
    await h.dispatch_message(mention("/memory"))  # would print private memory into the channel
    await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content="/forget"))
    await h.dispatch_message(mention("/stats@membot"))
    replies = contents(h.calls("POST", MESSAGES))
    assert replies[1:] == [TEXT_COMMAND_HINT] * 3
    assert await app.store.scalar("SELECT COUNT(*) FROM users") == 1  # nothing forgotten by text
    assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 2


async def test_dm_memory_stays_out_of_server_prompts(
    app: App, fake_backend: FakeBackend, discord_harness: DiscordHarness
) -> None:
    h = discord_harness
    await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content="My secret hobby is falconry."))
    await app.dispatcher.end_session("discord", str(USER_ID))
    await app.jobs.run_until_idle()
    await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content="What is my hobby?"))
    assert "falconry" in fake_backend.prompts[-1].flat()  # the person's own DM sees it
    await h.dispatch_message(mention("What is my hobby?"))
    assert "falconry" not in fake_backend.prompts[-1].flat()  # a server channel does not


async def test_redelivered_message_is_answered_once(app: App, discord_harness: DiscordHarness) -> None:
    payload = mention("hello once")
    await discord_harness.dispatch_message(payload)
    await discord_harness.dispatch_message(payload)  # the gateway re-sends after a resume
    assert contents(discord_harness.calls("POST", MESSAGES)) == ["echo: hello once"]


async def test_send_failure_is_logged_not_raised(app: App, discord_harness: DiscordHarness, caplog) -> None:
    discord_harness.backend.respond_with("POST", MESSAGES, {"message": "Missing Permissions", "code": 50013},
                                         status=403, times=1)
    await discord_harness.dispatch_message(mention("can you talk here?"))
    assert "could not answer" in caplog.text
    assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE author = 'user'") == 1
