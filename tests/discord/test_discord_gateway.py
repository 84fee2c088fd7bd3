"""End to end over sockets: the real discord.py client inside the real DiscordAdapter connects to a fake
gateway + REST server on 127.0.0.1 (only the base URLs are changed), and `membot run` starts Discord.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import discord
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.app import App
from bot.config import Settings
from bot.discord_adapter import DiscordAdapter
from tests.discord.helpers import CALLBACK, MESSAGES, assert_no_pings
from tests.fakes.discord_payloads import (
    BOT_ID,
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    command_interaction_payload,
    message_payload,
)
from tests.fakes.discord_server import FakeDiscordServer, patch_discord_urls
from tests.fakes.telegram_api import FakeTelegramServer

REPO = Path(__file__).resolve().parents[2]
MESSAGE_CONTENT_BIT = discord.Intents(message_content=True).value


async def test_smoke_mention_over_the_fake_gateway(app: App) -> None:
    async with FakeDiscordServer() as server:
        adapter = DiscordAdapter(app, "fake-token")
        adapter.client._connection.guild_ready_timeout = 0.05  # discord.py waits 2 s for more guilds
        with patch_discord_urls(server):
            await adapter.start()
            try:
                identify = await server.wait_for_identify()
                await asyncio.wait_for(adapter.client.wait_until_ready(), 10)
                payload = message_payload(content=f"<@{BOT_ID}> hello over the gateway", guild_id=GUILD_ID,
                                          mentions=[server.bot_user])
                server.fail_next("POST", MESSAGES, status=429, retry_after=0.1)  # Discord says: slow down
                await server.dispatch("MESSAGE_CREATE", payload)
                reply = await server.wait_for_request("POST", MESSAGES, status=200)
            finally:
                await adapter.stop()
        assert not server.connected and adapter.client.is_closed()

    assert [f["op"] for f in server.gateway_received][:2] == [1, 2]  # heartbeat, IDENTIFY
    assert identify["token"] == "fake-token"
    assert identify["intents"] == adapter.client.intents.value and not identify["intents"] & MESSAGE_CONTENT_BIT
    assert server.find_requests("PUT", rf"/applications/{BOT_ID}/commands")  # commands synced at first start
    assert server.find_requests("POST", rf"/channels/{CHANNEL_ID}/typing")
    attempts = server.find_requests("POST", MESSAGES)
    assert [r.status for r in attempts] == [429, 200]  # the rate limit was waited out, then retried
    assert reply.path == f"/channels/{CHANNEL_ID}/messages"
    assert reply.headers["Authorization"] == "Bot fake-token"
    assert reply.json["content"] == "echo: hello over the gateway"
    assert str(reply.json["message_reference"]["message_id"]) == payload["id"]
    assert_no_pings(server.requests)
    rows = await app.store.fetchall("SELECT author, text FROM messages ORDER BY id")
    assert [tuple(r) for r in rows] == [("user", "hello over the gateway"), ("bot", "echo: hello over the gateway")]


async def test_configured_urls_dm_and_slash_command_over_sockets(app: App, settings: Settings) -> None:
    original = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscordServer() as server:
        settings.discord.api_base_url = server.api_base
        settings.discord.gateway_url = server.gateway_url
        settings.discord.message_content_intent = True
        adapter = DiscordAdapter(app, "fake-token")
        adapter.client._connection.guild_ready_timeout = 0.05
        await adapter.start()
        try:
            identify = await server.wait_for_identify()
            await server.dispatch("MESSAGE_CREATE", message_payload(channel_id=4242, content="hi in DM"))
            dm_reply = await server.wait_for_request("POST", r"/channels/4242/messages")
            since = len(server.requests)
            done = asyncio.ensure_future(adapter.client.wait_for("app_command_completion", timeout=10))
            await server.dispatch("INTERACTION_CREATE", command_interaction_payload("session end"))
            answer = await server.wait_for_request("POST", CALLBACK, since=since)
            await done  # the command ran to its end before the client closes
        finally:
            await adapter.stop()
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == original  # restored at stop
    assert identify["intents"] & MESSAGE_CONTENT_BIT
    assert dm_reply.json["content"] == "echo: hi in DM"
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] == EPHEMERAL
    assert answer.json["data"]["content"] == "We have no conversation going right now."
    assert_no_pings(server.requests)


async def test_rejected_token_fails_start_with_the_variable_name(app: App) -> None:
    async with FakeDiscordServer() as server:
        server.backend.respond_with("GET", r"/users/@me", {"message": "401: Unauthorized", "code": 0}, status=401)
        adapter = DiscordAdapter(app, "bad-token")
        with patch_discord_urls(server), pytest.raises(RuntimeError, match="DISCORD_BOT_TOKEN"):
            await adapter.start()
        assert adapter.client.is_closed()


@pytest.mark.parametrize("with_telegram", [False, True], ids=["discord-only", "discord-and-telegram"])
async def test_membot_run_starts_discord(tmp_path: Path, with_telegram: bool) -> None:
    """`membot run` with DISCORD_BOT_TOKEN set (and TELEGRAM_BOT_TOKEN or not): Discord answers over the fake
    server, next to Telegram in the same process and database when both are set; SIGTERM stops it."""
    db = tmp_path / "db.sqlite3"
    async with FakeDiscordServer() as server, FakeTelegramServer(bot_token="123:ABC") as telegram:
        config = tmp_path / "membot.toml"
        config.write_text(
            f'[model]\nbackend = "fake"\n[storage]\npath = "{db}"\n[logging]\nlevel = "INFO"\n'
            f'[discord]\napi_base_url = "{server.api_base}"\ngateway_url = "{server.gateway_url}"\n'
            f'[telegram]\nbase_url = "{telegram.base_url}"\nbase_file_url = "{telegram.base_file_url}"\n'
            "poll_timeout = 2\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "DISCORD_BOT_TOKEN": "fake-token"}
        env.pop("MEMBOT_CONFIG", None)
        if with_telegram:
            env["TELEGRAM_BOT_TOKEN"] = telegram.bot_token
        else:
            env.pop("TELEGRAM_BOT_TOKEN", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--config", str(config), "run", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            identify = await server.wait_for_identify(timeout=60)
            await server.dispatch("MESSAGE_CREATE", message_payload(channel_id=4243, content="are you there?"))
            reply = await server.wait_for_request("POST", r"/channels/4243/messages", timeout=30)
            if with_telegram:
                mark = len(telegram.calls)
                telegram.send_private_text(555, "and on Telegram?", first_name="Ann")
                answer = await telegram.wait_for_call("sendMessage", None, 30, start=mark, done=True)
                assert answer.params["text"] == "echo: and on Telegram?"
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = stderr.decode()
    assert proc.returncode == 0, log
    assert identify["token"] == "fake-token" and "fake-token" not in log  # the token never reaches the logs
    assert reply.json["content"] == "echo: are you there?" and reply.json["allowed_mentions"]["parse"] == []
    assert "Discord started" in log
    assert ("Telegram started" in log) is with_telegram and ("Telegram not started" in log) is not with_telegram
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:  # one store for both platforms
        platforms = sorted(row[0] for row in conn.execute("SELECT platform FROM users"))
    assert platforms == (["discord", "telegram"] if with_telegram else ["discord"])
