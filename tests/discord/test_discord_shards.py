"""Discord sharding: `discord.shard_count` opens that many gateway connections with discord.py's sharded client;
`discord.shard_ids` opens only some of them, the others running in other `membot run` processes on the same
PostgreSQL database. Over sockets to the fake gateway, which (like Discord) sends a server's events only to shard
(server id >> 22) % shard_count and DMs only to shard 0.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from bot.app import App
from bot.config import ConfigError, load_settings
from bot.discord_adapter import DiscordAdapter, ShardedMembotClient
from memory.store import Store
from tests.discord.helpers import MESSAGES, assert_no_pings
from tests.fakes.discord_payloads import (
    BOT_ID,
    GUILD_ID,
    PERM_MEMBER,
    USER_ID,
    default_guild_payload,
    default_users,
    guild_payload,
    member_payload,
    message_payload,
    role_payload,
    text_channel_payload,
    user_payload,
)
from tests.fakes.discord_server import FakeDiscordServer, patch_discord_urls
from tests.membot_process import MembotRun

SHARDS = 2
OTHER_GUILD_ID = GUILD_ID + (1 << 22)  # the next shard: (id >> 22) % 2 differs
OTHER_CHANNEL = OTHER_GUILD_ID + 1
COMMANDS = rf"/applications/{BOT_ID}/commands"


def _guilds() -> list[dict]:
    users = default_users()
    other = guild_payload(
        OTHER_GUILD_ID, name="Other Guild",
        channels=[text_channel_payload(OTHER_CHANNEL, OTHER_GUILD_ID, "lobby")],
        roles=[role_payload(OTHER_GUILD_ID, "@everyone", permissions=PERM_MEMBER)],
        members=[member_payload(users["user"]), member_payload(users["bot"])],
    )
    return [default_guild_payload(), other]


def _mention(server: FakeDiscordServer, guild: int, text: str, user: int = USER_ID) -> tuple[dict, int]:
    """A message mentioning the bot in `guild` (its first channel), and the shard Discord sends it to."""
    channel = next(int(g["channels"][0]["id"]) for g in server.guilds if int(g["id"]) == guild)
    payload = message_payload(content=f"<@{BOT_ID}> {text}", channel_id=channel, guild_id=guild,
                              mentions=[server.bot_user], author=user_payload(user, f"u{user}"))
    return payload, server.shard_of(guild, SHARDS)


def test_the_two_guilds_are_on_different_shards() -> None:
    assert {FakeDiscordServer.shard_of(GUILD_ID, SHARDS), FakeDiscordServer.shard_of(OTHER_GUILD_ID, SHARDS)} == {0, 1}


@pytest.mark.parametrize(
    ("discord", "storage", "problem"),
    [
        ({"shard_ids": [0]}, {}, "set discord.shard_count too"),
        ({"shard_count": 2, "shard_ids": [2]}, {"url": "postgresql://db/membot"}, "from 0 to shard_count - 1 = 1"),
        ({"shard_count": 2, "shard_ids": [1, 1]}, {"url": "postgresql://db/membot"}, "each id once"),
        ({"shard_count": 2, "shard_ids": [1]}, {}, "must share one PostgreSQL database"),
        ({"shard_count": 0}, {}, "greater than or equal to 1"),
    ],
)
def test_bad_shard_settings_stop_start_up_with_one_line(
    tmp_path: Path, discord: dict, storage: dict, problem: str
) -> None:
    lines = ["[discord]", *(f"{k} = {v}" for k, v in discord.items())]
    if storage:
        lines += ["[storage]", *(f'{k} = "{v}"' for k, v in storage.items())]
    path = tmp_path / "membot.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="discord") as caught:
        load_settings(path)
    assert problem in str(caught.value) and "\n" not in str(caught.value).strip()


def test_every_shard_in_one_process_is_fine_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "membot.toml"
    path.write_text("[discord]\nshard_count = 2\nshard_ids = [0, 1]\n")
    assert load_settings(path).discord.serves_every_shard


async def test_one_process_opens_every_shard_and_answers_on_each(app: App) -> None:
    """shard_count = 2 without shard_ids: both connections in this process; a server's message arrives on its
    shard only, and is answered, as are DMs (shard 0); the commands are synced once."""
    app.settings.discord.shard_count = SHARDS
    async with FakeDiscordServer(guilds=_guilds()) as server:
        adapter = DiscordAdapter(app, "fake-token")
        client = adapter.client
        assert isinstance(client, ShardedMembotClient)
        client._connection.guild_ready_timeout = 0.05

        async def no_wait(shard_id: int | None, *, initial: bool = False) -> None:
            """Discord allows one IDENTIFY per 5 s; the fake gateway does not care."""

        client.before_identify_hook = no_wait  # type: ignore[method-assign]
        with patch_discord_urls(server):
            await adapter.start()
            try:
                await server.wait_for_shards({0, 1})
                await asyncio.wait_for(client.wait_until_ready(), 10)
                assert {g.id for g in client.guilds} == {GUILD_ID, OTHER_GUILD_ID}
                for guild in (GUILD_ID, OTHER_GUILD_ID):
                    payload, shard = _mention(server, guild, f"hello from {guild}")
                    await server.dispatch("MESSAGE_CREATE", payload, shard=shard)
                    await server.wait_for_request("POST", rf"/channels/{payload['channel_id']}/messages")
                await server.dispatch("MESSAGE_CREATE", message_payload(channel_id=4242, content="a DM"), shard=0)
                dm = await server.wait_for_request("POST", r"/channels/4242/messages")
            finally:
                await adapter.stop()
    assert sorted(tuple(i["shard"]) for i in server.identifies) == [(0, SHARDS), (1, SHARDS)]
    assert dm.json["content"] == "echo: a DM"
    replies = [r.json["content"] for r in server.find_requests("POST", MESSAGES)]
    assert sorted(replies) == sorted([f"echo: hello from {GUILD_ID}", f"echo: hello from {OTHER_GUILD_ID}",
                                      "echo: a DM"])
    assert len(server.find_requests("PUT", COMMANDS)) == 1
    assert_no_pings(server.requests)


# ------------------------------------------------------------------------------------------ several processes


def _shard_process(tmp: Path, server: FakeDiscordServer, url: str, shard: int) -> MembotRun:
    """`membot run` serving one shard of two, on the shared PostgreSQL database."""
    config = tmp / f"shard-{shard}.toml"
    config.write_text(
        f'[storage]\nurl = "{url}"\n[model]\nbackend = "fake"\n[logging]\nlevel = "INFO"\n'
        f'[discord]\napi_base_url = "{server.api_base}"\ngateway_url = "{server.gateway_url}"\n'
        f"shard_count = {SHARDS}\nshard_ids = [{shard}]\n", encoding="utf-8")
    return MembotRun(config, tmp / f"shard-{shard}.log", {"DISCORD_BOT_TOKEN": "fake-token"})


async def test_two_processes_each_serve_their_shard_on_one_postgres(tmp_path: Path, postgres_url: str) -> None:
    """Two `membot run` processes, shard_ids [0] and [1] of 2, one PostgreSQL: each server's messages reach
    only the process holding its shard and are answered once, DMs by shard 0's; both stores are the one memory
    (a person who writes in both servers is one person with one stored history); the slash commands are synced
    by shard 0's process only."""
    async with Store.at(postgres_url):  # the schema, before two processes race to make it
        pass
    async with FakeDiscordServer(guilds=_guilds()) as server:
        shards = [_shard_process(tmp_path, server, postgres_url, k) for k in range(SHARDS)]
        await asyncio.gather(*(s.start() for s in shards))
        codes: list[int | None] = []
        try:
            try:
                await server.wait_for_shards({0, 1}, timeout=90)
            except TimeoutError:
                raise AssertionError("\n".join(s.tail() for s in shards)) from None
            sent: list[tuple[str, int]] = []
            for k in range(5):
                for guild in (GUILD_ID, OTHER_GUILD_ID):
                    payload, shard = _mention(server, guild, f"round {k} in {guild}", user=USER_ID + k)
                    await server.dispatch("MESSAGE_CREATE", payload, shard=shard)
                    sent.append((f"round {k} in {guild}", shard))
                dm = message_payload(channel_id=5000 + k, content=f"dm {k}", author=user_payload(USER_ID + k, "u"))
                await server.dispatch("MESSAGE_CREATE", dm, shard=0)
                sent.append((f"dm {k}", 0))
            expected = {f"echo: {text}" for text, _ in sent}
            for _ in range(300):
                replies = Counter(r.json["content"] for r in server.find_requests("POST", MESSAGES)
                                  if r.status == 200)
                if expected <= set(replies):
                    break
                await asyncio.sleep(0.1)
        finally:
            codes = [await s.stop() for s in shards]
    logs = [s.tail(100_000) for s in shards]
    assert set(replies) == expected, logs
    assert [t for t, n in replies.items() if n > 1] == [], "answered twice"
    assert codes == [0, 0], logs
    assert sorted(tuple(i["shard"]) for i in server.identifies) == [(0, SHARDS), (1, SHARDS)]  # one each
    assert len(server.find_requests("PUT", COMMANDS)) == 1
    assert "synced by the process serving shard 0" in logs[1] and "fake-token" not in "".join(logs)
    assert_no_pings(server.requests)
    async with Store.at(postgres_url) as store:
        rows = await store.fetchall("SELECT text, COUNT(*) FROM messages WHERE author = 'user' GROUP BY text")
        assert {str(r[0]): int(r[1]) for r in rows} == {text: 1 for text, _ in sent}
        people = await store.fetchall(
            "SELECT u.platform_user_id, COUNT(DISTINCT m.chat_id) FROM users u JOIN messages m ON m.user_id = u.id "
            "WHERE m.author = 'user' GROUP BY u.platform_user_id")
    # each person wrote in both servers and a DM, through two processes: one person, three chats
    assert {str(r[0]): int(r[1]) for r in people} == {str(USER_ID + k): 3 for k in range(5)}

