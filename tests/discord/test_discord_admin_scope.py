"""A server's admins act on that server's data only; bot-wide actions are the operator's (issue #14 item 2).

The attack: Eve has Manage Server in *her own* server B. Before, her `/admin forget-user alice` deleted Alice's
messages everywhere (her DMs and server A) and `/admin stats` showed bot-wide counts. Now her forget deletes
what Alice said in B (and the memories written from it, recomposed from what remains), her stats count B,
and `everywhere:`, `compress-now` are refused to everyone but the operator (`discord.owner_ids`, or else the
application's owner: OWNER_ID in the fake's application info).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.app import App
from bot.config import Settings
from bot.discord_adapter import DiscordAdapter
from bot.discord_commands import REFUSE_OPERATOR
from tests.discord.helpers import CALLBACK, WEBHOOK, assert_no_pings, mention
from tests.fakes.discord_payloads import (
    CHANNEL_ID,
    GUILD_ID,
    OWNER_ID,
    PERM_MANAGE_GUILD,
    PERM_MEMBER,
    USER_ID,
    DiscordHarness,
    command_interaction_payload,
    default_guild_payload,
    guild_payload,
    member_payload,
    message_payload,
    option_payload,
    role_payload,
    text_channel_payload,
    user_payload,
)

GUILD_B, CHANNEL_B = 900000000000000110, 900000000000000210
EVE, BOB = 900000000000000302, 900000000000000303
DM_CHANNEL = 900000000000000777
MESSAGE = 4  # an interaction callback that answers with a message


def _guild_b() -> dict[str, Any]:
    eve, bob, alice = user_payload(EVE, "eve"), user_payload(BOB, "bob"), user_payload(USER_ID, "alice")
    return guild_payload(
        GUILD_B, name="Eve's server", owner_id=EVE,
        channels=[text_channel_payload(CHANNEL_B, GUILD_B, "b-general", position=0)],
        roles=[role_payload(GUILD_B, "@everyone", permissions=PERM_MEMBER)],
        members=[member_payload(eve), member_payload(bob), member_payload(alice)],
    )


@pytest.fixture
async def two_servers(app: App) -> AsyncIterator[tuple[DiscordAdapter, DiscordHarness]]:
    """Alice talked in a DM, in server A and in Eve's server B; Bob in B. All memories written."""
    adapter = DiscordAdapter(app, "fake-token")
    h = DiscordHarness(adapter.client, guilds=[default_guild_payload(), _guild_b()])
    await h.start()
    try:
        alice = user_payload(USER_ID, "alice")
        await h.dispatch_message(message_payload(channel_id=DM_CHANNEL, author=alice,
                                                 content="I keep bees in Zqxdmville."))
        await h.dispatch_message(mention("I keep goats in Zqxaville.", author=alice))
        await h.dispatch_message(mention("I keep cats in Zqxbville.", author=alice, guild_id=GUILD_B,
                                         channel_id=CHANNEL_B))
        await h.dispatch_message(mention("Bob here, I like Qjvbobtea.", author=user_payload(BOB, "bob"),
                                         guild_id=GUILD_B, channel_id=CHANNEL_B))
        for user in (USER_ID, BOB):
            for chat in (DM_CHANNEL, CHANNEL_ID, CHANNEL_B):
                await app.dispatcher.end_session("discord", str(user), str(chat))
        await app.jobs.run_until_idle()
        h.http_calls.clear()
        yield adapter, h
    finally:
        await h.close()


async def _admin(h: DiscordHarness, command: str, *, user: int, guild: int, member: int | None = None,
                 everywhere: bool | None = None, permissions: str = PERM_MANAGE_GUILD) -> list[str]:
    options: list[dict[str, Any]] = []
    resolved = None
    if member is not None:
        payload = user_payload(member, "alice" if member == USER_ID else str(member))
        options.append(option_payload("member", str(member), type=6))
        resolved = {"users": {str(member): payload},
                    "members": {str(member): {k: v for k, v in member_payload(payload).items() if k != "user"}}}
    if everywhere is not None:
        options.append(option_payload("everywhere", everywhere, type=5))
    channel = text_channel_payload(CHANNEL_B if guild == GUILD_B else CHANNEL_ID, guild, "here")
    start = len(h.http_calls)
    await h.invoke_command(None, command_interaction_payload(
        f"admin {command}", options or None, resolved=resolved, permissions=permissions,
        user=user_payload(user, str(user)), guild_id=guild, channel=channel))
    out = []
    for call in h.http_calls[start:]:
        if call.matches("POST", WEBHOOK):
            out.append(call.json["content"])
        elif call.matches("POST", CALLBACK) and call.json["type"] == MESSAGE:
            out.append(call.json["data"]["content"])
    return out


async def _alice_texts(app: App) -> str:
    """Everything stored about Alice, as one string."""
    pk = await app.sessions.find_user("discord", str(USER_ID))
    rows = await app.store.fetchall("SELECT text FROM messages WHERE user_id = ?", (pk,))
    rows += await app.store.fetchall("SELECT facts FROM session_memories WHERE user_id = ?", (pk,))
    rows += await app.store.fetchall(
        "SELECT profile || relationship || events FROM compressive_memories WHERE user_id = ?", (pk,))
    rows += await app.store.fetchall("SELECT raw FROM model_outputs WHERE user_id = ?", (pk,))
    return "\n".join(str(r[0]) for r in rows)


async def test_a_server_admin_forgets_only_what_was_said_in_their_server(
    app: App, two_servers: tuple[DiscordAdapter, DiscordHarness]
) -> None:
    _, h = two_servers
    before = await _alice_texts(app)
    assert all(w in before for w in ("Zqxdmville", "Zqxaville", "Zqxbville"))
    assert "Zqxbville" in await app.dispatcher.memory_text("discord", str(USER_ID))

    (answer,) = await _admin(h, "forget-user", user=EVE, guild=GUILD_B, member=USER_ID)
    assert answer.startswith("Deleted what alice said in this server: 2 message(s), 1 conversation(s)")
    after = await _alice_texts(app)
    assert "Zqxbville" not in after  # messages, session memory, compressive memory, raw outputs
    assert "Zqxdmville" in after and "Zqxaville" in after  # her DM and server A are not Eve's to delete
    assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE text LIKE '%Qjvbobtea%'") == 2  # Bob's

    # Her compressive memory is recomposed from the sessions that remain, without server B.
    await app.jobs.run_until_idle()
    memory = await app.dispatcher.memory_text("discord", str(USER_ID))
    assert "Zqxbville" not in memory and "Zqxdmville" in memory and "Zqxaville" in memory
    versions = await app.store.fetchall("SELECT scope, version FROM compressive_memories WHERE user_id = "
                                        "(SELECT id FROM users WHERE platform_user_id = ?)", (str(USER_ID),))
    assert sorted(tuple(v) for v in versions) == [("all", 1), ("public", 1)]

    (again,) = await _admin(h, "forget-user", user=EVE, guild=GUILD_B, member=USER_ID)
    assert again == "There was nothing stored about alice in this server."
    assert_no_pings(h.http_calls)


async def test_a_server_admin_sees_their_servers_counts_only(
    app: App, two_servers: tuple[DiscordAdapter, DiscordHarness]
) -> None:
    _, h = two_servers
    (stats,) = await _admin(h, "stats", user=EVE, guild=GUILD_B)
    assert stats.startswith("In this server:")
    assert "People who talked with me: 2" in stats and "Messages (theirs and mine): 4" in stats
    assert "Conversations remembered: 2" in stats
    assert "Users:" not in stats and "Queued memory jobs" not in stats  # nothing bot-wide
    (stats_a,) = await _admin(h, "stats", user=EVE, guild=GUILD_ID)
    assert "People who talked with me: 1" in stats_a and "Messages (theirs and mine): 2" in stats_a


@pytest.mark.parametrize("command,kwargs", [
    ("forget-user", {"member": USER_ID, "everywhere": True}),
    ("stats", {"everywhere": True}),
    ("compress-now", {}),
])
async def test_bot_wide_actions_are_refused_to_server_admins(
    app: App, two_servers: tuple[DiscordAdapter, DiscordHarness], command: str, kwargs: dict[str, Any]
) -> None:
    _, h = two_servers
    before = await _alice_texts(app)
    jobs = await app.store.scalar("SELECT COUNT(*) FROM jobs")
    assert await _admin(h, command, user=EVE, guild=GUILD_B, **kwargs) == [REFUSE_OPERATOR]
    assert await _alice_texts(app) == before and await app.store.scalar("SELECT COUNT(*) FROM jobs") == jobs


async def test_the_application_owner_acts_everywhere(
    app: App, two_servers: tuple[DiscordAdapter, DiscordHarness]
) -> None:
    _, h = two_servers
    (stats,) = await _admin(h, "stats", user=OWNER_ID, guild=GUILD_ID, everywhere=True)
    assert "Users: 2" in stats and "Messages: 8" in stats
    (report,) = await _admin(h, "compress-now", user=OWNER_ID, guild=GUILD_ID)
    assert report.startswith("Memory jobs ran:")
    (answer,) = await _admin(h, "forget-user", user=OWNER_ID, guild=GUILD_ID, member=USER_ID, everywhere=True)
    assert answer.startswith(f"Deleted everything about user {USER_ID}: 6 message(s), 3 session(s).")
    assert await app.sessions.find_user("discord", str(USER_ID)) is None


async def test_owner_ids_replace_the_application_owner(
    app: App, settings: Settings, two_servers: tuple[DiscordAdapter, DiscordHarness]
) -> None:
    adapter, h = two_servers
    adapter.settings.owner_ids = [EVE]
    assert await _admin(h, "stats", user=OWNER_ID, guild=GUILD_ID, everywhere=True) == [REFUSE_OPERATOR]
    (stats,) = await _admin(h, "stats", user=EVE, guild=GUILD_B, everywhere=True)
    assert "Users: 2" in stats


async def test_chats_stored_before_servers_were_known_learn_theirs(
    app: App, two_servers: tuple[DiscordAdapter, DiscordHarness]
) -> None:
    adapter, h = two_servers
    async with app.store.write() as db:  # as a database from before schema 6 has them
        await db.execute("UPDATE chats SET server = NULL")
    assert await _admin(h, "forget-user", user=EVE, guild=GUILD_B, member=USER_ID) == [
        "There was nothing stored about alice in this server."]
    guild = adapter.client.get_guild(GUILD_B)
    assert guild is not None
    await adapter.note_server(guild)  # what the gateway's GUILD_CREATE (guild_available) triggers
    (answer,) = await _admin(h, "forget-user", user=EVE, guild=GUILD_B, member=USER_ID)
    assert answer.startswith("Deleted what alice said in this server: 2 message(s)")
    assert await app.store.scalar("SELECT COUNT(*) FROM chats WHERE kind = 'dm' AND server IS NOT NULL") == 0
