"""Discord slash commands through the adapter's real command tree: every user command, every admin command
with and without permission, ephemeral refusals, and the command sync that only runs when definitions change.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from discord import app_commands

from bot.app import App
from bot.config import Settings
from bot.discord_adapter import COMMAND_HASH_KEY, DiscordAdapter
from bot.discord_commands import FORGET_PROMPT, REFUSE_ADMIN, REFUSE_DM, STORAGE_DOWN, AdminGroup
from memory.channels import always_reply_chats
from memory.store import StoreError
from tests.discord.helpers import CALLBACK, MESSAGES, WEBHOOK, assert_no_pings, contents, mention
from tests.fakes.discord_payloads import (
    BOT_ID,
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    OTHER_CHANNEL_ID,
    OWNER_ID,
    PERM_ADMIN_BIT,
    PERM_ADMINISTRATOR,
    PERM_MANAGE_GUILD,
    PERM_MEMBER,
    PERM_NONE,
    USER_ID,
    DiscordHarness,
    command_interaction_payload,
    member_payload,
    message_payload,
    option_payload,
    text_channel_payload,
    user_payload,
)

DM_CHANNEL_ID = 900000000000000777
DEFERRED, MESSAGE, UPDATE = 5, 4, 7


def _ephemeral_text(h: DiscordHarness, since: int = 0) -> list[str]:
    """What the invoking person saw, in order; every answer must be ephemeral."""
    out = []
    for call in h.http_calls[since:]:
        if call.matches("POST", CALLBACK) and call.json["type"] in (DEFERRED, MESSAGE):
            assert call.json["data"]["flags"] & EPHEMERAL, call.json
            if call.json["type"] == MESSAGE:
                out.append(call.json["data"]["content"])
        elif call.matches("POST", WEBHOOK):
            assert call.json["flags"] & EPHEMERAL, call.json
            out.append(call.json["content"])
    return out


async def _talk(h: DiscordHarness, text: str, user: int = USER_ID, name: str = "alice") -> None:
    await h.dispatch_message(message_payload(channel_id=DM_CHANNEL_ID, content=text, author=user_payload(user, name)))


# --------------------------------------------------------------------------------------------- /memory, /session


async def test_memory_show_defers_and_answers_privately(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await h.invoke_command(None, command_interaction_payload("memory show"))
    assert h.interaction_callbacks()[0].json == {"type": DEFERRED, "data": {"flags": EPHEMERAL}}
    assert _ephemeral_text(h) == ["I don't remember anything about you yet."]

    await _talk(h, "I keep bees on my roof.")
    await app.dispatcher.end_session("discord", str(USER_ID))
    await app.jobs.run_until_idle()
    start = len(h.http_calls)
    await h.invoke_command(None, command_interaction_payload("memory show"))
    (shown,) = _ephemeral_text(h, start)
    assert "Profile:" in shown and "bees" in shown
    assert_no_pings(h.http_calls)


async def test_memory_export_sends_a_private_json_file(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await h.invoke_command(None, command_interaction_payload("memory export"))
    assert _ephemeral_text(h) == ["I have nothing stored about you."]

    await _talk(h, "My cat is called Pixel.")
    await _talk(h, "Someone else here.", user=OWNER_ID, name="owner")
    start = len(h.http_calls)
    await h.invoke_command(None, command_interaction_payload("memory export", guild_id=None))
    assert h.http_calls[start].json["type"] == DEFERRED
    (followup,) = h.calls("POST", WEBHOOK)[-1:]
    assert followup.json["flags"] & EPHEMERAL
    (upload,) = followup.files
    assert upload.filename == "membot-export.json"
    data = json.loads(upload.data)
    assert data["user"] == {**data["user"], "platform": "discord", "id": str(USER_ID)}
    texts = [m["text"] for s in data["sessions"] for m in s["messages"]]
    assert "My cat is called Pixel." in texts and "Someone else here." not in texts
    assert_no_pings(h.http_calls)


async def test_memory_forget_needs_the_owners_confirmation(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await _talk(h, "Please remember I hate olives.")
    await _talk(h, "I'm someone else.", user=OWNER_ID, name="owner")
    # wait=False: the confirmation view keeps a timeout task running, which the harness would wait for.
    interaction = await h.invoke_command(None, command_interaction_payload("memory forget"), wait=False)
    (prompt,) = h.interaction_callbacks()
    assert prompt.json["type"] == MESSAGE and prompt.json["data"]["flags"] & EPHEMERAL
    assert prompt.json["data"]["content"] == FORGET_PROMPT
    buttons = [c for row in prompt.json["data"]["components"] for c in row["components"]]
    ids = {b["label"]: b["custom_id"] for b in buttons}
    assert ids == {"Delete everything": f"membot:forget:yes:{interaction.id}",
                   "Keep my data": f"membot:forget:no:{interaction.id}"}
    message = prompt.response["resource"]["message"]
    users = lambda: app.store.scalar("SELECT COUNT(*) FROM users")  # noqa: E731

    # Somebody else pressing it is refused, and nothing is deleted.
    start = len(h.http_calls)
    await h.press_button(ids["Delete everything"], message=message, user=user_payload(OWNER_ID, "owner"))
    (refusal,) = h.http_calls[start:]
    assert refusal.json["data"]["flags"] & EPHEMERAL and "Only the person who asked" in refusal.json["data"]["content"]
    assert await users() == 2

    # The owner confirms: the message updates at once, then says what was deleted.
    start = len(h.http_calls)
    await h.press_button(ids["Delete everything"], message=message)
    update, edit = h.http_calls[start:]
    assert update.json["type"] == UPDATE and update.json["data"]["components"] == []
    assert edit.method == "PATCH" and edit.path.endswith("/messages/@original")
    assert edit.json["content"] == "Done: I deleted everything I knew about you."
    assert await users() == 1
    assert await app.store.scalar("SELECT platform_user_id FROM users") == str(OWNER_ID)

    # The buttons are gone; a stale press of the same message does nothing more.
    start = len(h.http_calls)
    await h.press_button(ids["Delete everything"], message=message)
    assert h.http_calls[start:] == [] and await users() == 1
    assert_no_pings(h.http_calls)


async def test_memory_forget_can_be_cancelled(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await _talk(h, "Keep this.")
    await h.invoke_command(None, command_interaction_payload("memory forget"), wait=False)
    prompt = h.interaction_callbacks()[0]
    buttons = [c for row in prompt.json["data"]["components"] for c in row["components"]]
    cancel = next(b["custom_id"] for b in buttons if b["label"] == "Keep my data")
    await h.press_button(cancel, message=prompt.response["resource"]["message"])
    update = h.interaction_callbacks()[-1]
    assert update.json["type"] == UPDATE and update.json["data"]["content"] == "Nothing was deleted."
    assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 2


async def test_unanswered_forget_expires(app: App, discord_harness: DiscordHarness, monkeypatch) -> None:
    monkeypatch.setattr("bot.discord_commands.CONFIRM_TIMEOUT", 0.05)
    h = discord_harness
    await _talk(h, "Keep this too.")
    await h.invoke_command(None, command_interaction_payload("memory forget"))  # waits out the timeout
    (expired,) = h.calls("PATCH", WEBHOOK)
    assert expired.path.endswith("/messages/@original")
    assert expired.json["content"].startswith("Nothing was deleted") and expired.json["components"] == []
    assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 2
    assert_no_pings(h.http_calls)


async def test_session_end_closes_the_conversation_in_this_channel(app: App, discord_harness: DiscordHarness) -> None:
    h = discord_harness
    await h.dispatch_message(mention("hello"))
    await h.invoke_command(None, command_interaction_payload("session end"))
    await h.invoke_command(None, command_interaction_payload("session end"))
    assert _ephemeral_text(h) == ["Conversation ended. I'll write it into my memory of you shortly.",
                                  "We have no conversation going right now."]
    assert await app.store.scalar("SELECT state FROM sessions") == "closed"
    assert_no_pings(h.http_calls)


# --------------------------------------------------------------------------------------------- /admin

ALLOWED = [PERM_MANAGE_GUILD, PERM_ADMINISTRATOR]
REFUSED = [PERM_MEMBER, PERM_NONE, PERM_ADMIN_BIT]  # a bare "8" resolves to no manage_guild in discord.py


def _member_option(user_id: int, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    user = user_payload(user_id, name)
    member = {k: v for k, v in member_payload(user, permissions=PERM_MEMBER).items() if k != "user"}
    return [option_payload("member", str(user_id), type=6)], {"users": {str(user_id): user},
                                                             "members": {str(user_id): member}}


async def _state(app: App) -> dict[str, Any]:
    return {
        "users": await app.store.scalar("SELECT COUNT(*) FROM users"),
        "open": await app.store.scalar("SELECT COUNT(*) FROM sessions WHERE state = 'open'"),
        "memories": await app.store.scalar("SELECT COUNT(*) FROM session_memories"),
        "enabled": await always_reply_chats(app.store, "discord"),
    }


ADMIN_CASES = ["stats", "compress-now", "channel enable", "channel disable", "forget-user"]


async def _run_admin(h: DiscordHarness, app: App, case: str, permissions: str, *, everywhere: bool | None = None,
                     **kwargs: Any) -> list[str]:
    options: Any = None
    if case == "forget-user":
        options, kwargs["resolved"] = _member_option(OWNER_ID, "owner")
    if everywhere is not None:
        options = [*(options or []), option_payload("everywhere", everywhere, type=5)]
    start = len(h.http_calls)
    await h.invoke_command(None, command_interaction_payload(f"admin {case}", options, permissions=permissions,
                                                             **kwargs))
    return _ephemeral_text(h, start)


@pytest.fixture
async def busy(app: App, discord_harness: DiscordHarness) -> DiscordHarness:
    """Two people talked; one session is closed and waits for its memory; #general is enabled."""
    await _talk(discord_harness, "I am the owner.", user=OWNER_ID, name="owner")
    await _talk(discord_harness, "I am alice.")
    await app.dispatcher.end_session("discord", str(USER_ID))
    await _run_admin(discord_harness, app, "channel enable", PERM_MANAGE_GUILD)
    discord_harness.http_calls.clear()
    return discord_harness


@pytest.mark.parametrize("permissions", REFUSED)
@pytest.mark.parametrize("case", ADMIN_CASES)
async def test_admin_commands_refuse_non_admins(app: App, busy: DiscordHarness, case: str, permissions: str) -> None:
    before = await _state(app)
    assert await _run_admin(busy, app, case, permissions) == [REFUSE_ADMIN]
    assert await _state(app) == before  # nothing happened
    assert len(busy.interaction_callbacks()) == 1 and busy.calls("POST", WEBHOOK) == []  # not even deferred
    assert_no_pings(busy.http_calls)


def _admin_leaves(adapter: DiscordAdapter) -> list[app_commands.Command[Any, ..., Any]]:
    admin = adapter.client.tree.get_command("admin")
    assert isinstance(admin, AdminGroup)
    return [c for c in admin.walk_commands() if isinstance(c, app_commands.Command)]


def test_every_admin_command_is_guarded_twice(discord_adapter: DiscordAdapter) -> None:
    leaves = _admin_leaves(discord_adapter)
    assert sorted(c.qualified_name for c in leaves) == sorted(f"admin {c}" for c in ADMIN_CASES)
    for command in leaves:
        assert isinstance(command.parent, AdminGroup)  # the group's own check runs first
        assert any("has_permissions" in check.__qualname__ for check in command.checks), command.qualified_name


@pytest.mark.parametrize("layer", ["group check only", "command checks only"])
@pytest.mark.parametrize("case", ADMIN_CASES)
async def test_each_guard_alone_refuses(
    app: App, discord_adapter: DiscordAdapter, busy: DiscordHarness, monkeypatch, case: str, layer: str
) -> None:
    if layer == "group check only":
        for command in _admin_leaves(discord_adapter):
            monkeypatch.setattr(command, "checks", [])
    else:
        async def allow(self: AdminGroup, interaction: Any) -> bool:
            return True

        monkeypatch.setattr(AdminGroup, "interaction_check", allow)
    before = await _state(app)
    assert await _run_admin(busy, app, case, PERM_MEMBER) == [REFUSE_ADMIN]
    assert await _state(app) == before


@pytest.mark.parametrize("case", ADMIN_CASES)
async def test_admin_commands_refuse_in_dms(app: App, busy: DiscordHarness, case: str) -> None:
    before = await _state(app)
    # Discord hides them in DMs (guild_only); a forged or stale call is still refused.
    assert await _run_admin(busy, app, case, PERM_ADMINISTRATOR, guild_id=None) == [REFUSE_DM]
    assert await _state(app) == before


OPERATOR = {"user": user_payload(OWNER_ID, "owner")}  # the fake application's owner


@pytest.mark.parametrize("permissions", ALLOWED)
async def test_admin_stats_and_compress_now(app: App, busy: DiscordHarness, permissions: str) -> None:
    (stats,) = await _run_admin(busy, app, "stats", permissions)
    assert stats.startswith("In this server:") and "Model: fake" in stats  # this server's counts (DMs only here)
    assert busy.interaction_callbacks()[0].json["type"] == DEFERRED
    (report,) = await _run_admin(busy, app, "compress-now", permissions, **OPERATOR)
    assert report.startswith("Memory jobs ran:")
    assert (await _state(app))["memories"] == 1
    assert_no_pings(busy.http_calls)


@pytest.mark.parametrize("permissions", ALLOWED)
async def test_admin_forget_user(app: App, busy: DiscordHarness, permissions: str) -> None:
    (answer,) = await _run_admin(busy, app, "forget-user", permissions)
    assert answer == "There was nothing stored about owner in this server."  # they talked in DMs only
    (answer,) = await _run_admin(busy, app, "forget-user", permissions, everywhere=True, **OPERATOR)
    assert answer == f"Deleted everything about user {OWNER_ID}: 2 message(s), 1 session(s)."
    assert await app.store.scalar("SELECT platform_user_id FROM users") == str(USER_ID)
    (again,) = await _run_admin(busy, app, "forget-user", permissions, everywhere=True, **OPERATOR)
    assert again == "There was nothing stored about that user."


@pytest.mark.parametrize("permissions", ALLOWED)
async def test_admin_channel_enable_and_disable(
    app: App, settings: Settings, busy: DiscordHarness, permissions: str
) -> None:
    h = busy
    await h.dispatch_message(message_payload(content="anyone?", guild_id=GUILD_ID))  # enabled by the fixture
    assert contents(h.calls("POST", MESSAGES)) == ["echo: anyone?"]

    (text,) = await _run_admin(h, app, "channel disable", permissions)
    assert text == "In #general I'll only answer messages that mention me or reply to me."
    assert await always_reply_chats(app.store, "discord") == set()
    await h.dispatch_message(message_payload(content="still there?", guild_id=GUILD_ID))
    assert len(h.calls("POST", MESSAGES)) == 1

    # Another channel, named in the option.
    channel = {**text_channel_payload(OTHER_CHANNEL_ID, GUILD_ID, "random"), "permissions": PERM_MEMBER}
    start = len(h.http_calls)
    await h.invoke_command(None, command_interaction_payload(
        "admin channel enable", [option_payload("channel", str(OTHER_CHANNEL_ID), type=7)],
        permissions=permissions, resolved={"channels": {str(OTHER_CHANNEL_ID): channel}},
    ))
    (enabled,) = _ephemeral_text(h, start)
    assert enabled.startswith("I'll answer every message in #random now.") and "Message Content intent" in enabled
    assert await always_reply_chats(app.store, "discord") == {str(OTHER_CHANNEL_ID)}
    await h.dispatch_message(message_payload(content="over here", channel_id=OTHER_CHANNEL_ID, guild_id=GUILD_ID))
    assert contents(h.calls("POST", MESSAGES))[-1] == "echo: over here"

    # It survives a restart: a new adapter on the same store answers there too.
    restarted = DiscordAdapter(app, "fake-token")
    async with DiscordHarness(restarted.client) as h2:
        await h2.dispatch_message(message_payload(content="after restart", channel_id=OTHER_CHANNEL_ID,
                                                  guild_id=GUILD_ID))
        assert contents(h2.calls("POST", MESSAGES)) == ["echo: after restart"]
    assert_no_pings(h.http_calls)


async def test_command_errors_are_private_and_clear(app: App, discord_harness: DiscordHarness, monkeypatch) -> None:
    async def broken(*args: Any) -> str:
        raise StoreError("disk full")

    monkeypatch.setattr(app.dispatcher, "server_stats", broken)
    assert await _run_admin(discord_harness, app, "stats", PERM_MANAGE_GUILD) == [STORAGE_DOWN]
    start = len(discord_harness.http_calls)
    await discord_harness.invoke_command(None, command_interaction_payload("memory nonexistent"))
    (outdated,) = _ephemeral_text(discord_harness, start)
    assert "out of date" in outdated


# --------------------------------------------------------------------------------------------- sync


def _puts(h: DiscordHarness) -> list[str]:
    return [c.path for c in h.calls("PUT", rf"/applications/{BOT_ID}(/guilds/\d+)?/commands")]


async def test_commands_sync_globally_once_until_they_change(app: App) -> None:
    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h:
        assert _puts(h) == [f"/applications/{BOT_ID}/commands"]
        body = {c["name"]: c for c in h.calls("PUT")[0].json}
        assert set(body) == {"memory", "session", "admin"}
        assert [o["name"] for o in body["memory"]["options"]] == ["show", "forget", "export"]
        admin = body["admin"]
        assert int(admin["default_member_permissions"]) == 32 and admin["dm_permission"] is False
        assert {o["name"] for o in admin["options"]} == {"stats", "compress-now", "channel", "forget-user"}
        assert body["memory"]["default_member_permissions"] is None
    assert await app.store.get_kv(COMMAND_HASH_KEY.format(app_id=BOT_ID, scope="global"))

    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h:
        assert _puts(h) == []  # same definitions: no sync on this start

    adapter = DiscordAdapter(app, "fake-token")
    adapter.client.tree.get_command("memory").description = "Changed"  # type: ignore[union-attr]
    async with DiscordHarness(adapter.client) as h:
        assert _puts(h) == [f"/applications/{BOT_ID}/commands"]


async def test_commands_sync_to_configured_guilds(app: App, settings: Settings) -> None:
    settings.discord.guild_ids = [GUILD_ID]
    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h:
        assert sorted(_puts(h)) == [f"/applications/{BOT_ID}/commands",
                                    f"/applications/{BOT_ID}/guilds/{GUILD_ID}/commands"]
        glob, guild = (h.calls("PUT", rf"/applications/{BOT_ID}{p}/commands")[0] for p in ("", f"/guilds/{GUILD_ID}"))
        assert glob.json == []  # nothing shows twice
        assert {c["name"] for c in guild.json} == {"memory", "session", "admin"}
        # Commands invoked in that server resolve as guild commands.
        await h.invoke_command(None, command_interaction_payload("session end", command_guild_id=GUILD_ID))
        assert _ephemeral_text(h) == ["We have no conversation going right now."]
    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h:
        assert _puts(h) == []


async def test_failed_sync_is_retried_at_next_start(app: App, settings: Settings, caplog) -> None:
    settings.discord.guild_ids = [GUILD_ID]
    adapter = DiscordAdapter(app, "fake-token")
    h = DiscordHarness(adapter.client)
    h.backend.respond_with("PUT", rf"/applications/{BOT_ID}/guilds/{GUILD_ID}/commands",
                           {"message": "Missing Access", "code": 50001}, status=403)
    async with h:
        pass
    assert "could not sync slash commands" in caplog.text
    assert await app.store.get_kv(COMMAND_HASH_KEY.format(app_id=BOT_ID, scope=str(GUILD_ID))) is None
    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h2:
        assert _puts(h2) == [f"/applications/{BOT_ID}/guilds/{GUILD_ID}/commands"]


async def test_invoking_in_guild_channel_ids_are_right(app: App, discord_harness: DiscordHarness) -> None:
    """`/session end` in a server closes that channel's session only, not the person's DM."""
    h = discord_harness
    await _talk(h, "in DM")
    await h.dispatch_message(mention("in server"))
    await h.invoke_command(None, command_interaction_payload("session end"))
    rows = await app.store.fetchall(
        "SELECT c.platform_chat_id, s.state FROM sessions s JOIN chats c ON c.id = s.chat_id ORDER BY s.id"
    )
    assert [tuple(r) for r in rows] == [(str(DM_CHANNEL_ID), "open"), (str(CHANNEL_ID), "closed")]
