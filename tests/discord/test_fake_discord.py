"""Self-tests for the Discord fakes: they must drive the *real* discord.py correctly.

If these fail after a discord.py upgrade, the fakes (not the bot) need fixing first.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.fakes.discord_payloads import (
    ADMIN_ROLE_ID,
    BOT_ID,
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    OWNER_ID,
    PERM_ADMIN_BIT,
    PERM_ADMINISTRATOR,
    PERM_MANAGE_GUILD,
    PERM_MEMBER,
    PERM_NONE,
    USER_ID,
    DiscordHarness,
    attachment_payload,
    command_interaction_payload,
    default_guild_payload,
    default_intents,
    message_payload,
    sticker_item_payload,
    user_payload,
)
from tests.fakes.discord_server import FakeDiscordServer, connected_client

MESSAGES = r"/channels/\d+/messages"
CALLBACK = r"/interactions/\d+/[^/]+/callback"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeDiscordServer]:
    async with FakeDiscordServer() as srv:
        yield srv


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[DiscordHarness]:
    h = DiscordHarness()
    try:
        yield h
    finally:
        await h.close()


def build_memory_tree(client: discord.Client) -> app_commands.CommandTree[Any]:
    """A guarded command group like the bot's admin commands, with an ephemeral error path."""
    tree: app_commands.CommandTree[Any] = app_commands.CommandTree(client)
    memory = app_commands.Group(
        name="memory", description="Memory admin", default_permissions=discord.Permissions(manage_guild=True)
    )

    @memory.command(name="forget", description="Forget a user")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def forget(interaction: discord.Interaction, who: str) -> None:
        await interaction.response.send_message(
            f"forgot {who}", ephemeral=True, file=discord.File(io.BytesIO(b"report"), "report.txt")
        )

    tree.add_command(memory)

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.MissingPermissions):
            await interaction.response.send_message(
                f"missing: {', '.join(error.missing_permissions)}", ephemeral=True
            )
        else:  # pragma: no cover - would hide fake bugs
            raise error

    return tree


# --------------------------------------------------------------------------- (a) gateway smoke


@pytest.mark.asyncio
async def test_real_client_connects_and_replies_to_mention(server: FakeDiscordServer) -> None:
    client = discord.Client(intents=default_intents())
    seen: list[discord.Message] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        if client.user is not None and client.user in message.mentions:
            seen.append(message)
            await message.reply("pong", allowed_mentions=discord.AllowedMentions.none())

    async with connected_client(server, client):
        identify = server.identifies[-1]
        assert identify["token"] == "fake-token"
        assert identify["intents"] == client.intents.value
        assert [f["op"] for f in server.gateway_received][:2] == [1, 2]  # heartbeat, IDENTIFY
        assert client.user is not None and client.user.id == BOT_ID
        assert client.get_channel(CHANNEL_ID) is not None

        payload = message_payload(content=f"<@{BOT_ID}> ping", guild_id=GUILD_ID, mentions=[server.bot_user])
        await server.dispatch("MESSAGE_CREATE", payload)
        req = await server.wait_for_request("POST", MESSAGES, timeout=5)

    assert req.path == f"/channels/{CHANNEL_ID}/messages"
    assert req.headers["Authorization"] == "Bot fake-token"
    assert req.json["content"] == "pong"
    assert str(req.json["message_reference"]["message_id"]) == payload["id"]
    assert req.json["allowed_mentions"] == {"parse": []}
    assert req.response["author"]["id"] == str(BOT_ID)
    assert isinstance(seen[0].channel, discord.TextChannel) and seen[0].guild is not None
    assert client.is_closed() and not server.connected


# --------------------------------------------------------------------------- (b) rate limits


@pytest.mark.asyncio
async def test_429_on_send_is_retried(server: FakeDiscordServer) -> None:
    client = discord.Client(intents=default_intents())
    async with connected_client(server, client):
        server.fail_next("POST", MESSAGES, status=429, retry_after=0.1)
        channel = client.get_channel(CHANNEL_ID)
        assert isinstance(channel, discord.TextChannel)
        start = time.perf_counter()
        sent = await channel.send("hello")
        elapsed = time.perf_counter() - start

    attempts = server.find_requests("POST", MESSAGES)
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[0].response["retry_after"] == 0.1
    assert elapsed >= 0.1
    assert sent.content == "hello" and sent.id == int(attempts[1].response["id"])


# --------------------------------------------------------------------------- (c) app commands


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("permissions", "allowed"),
    [
        (PERM_MANAGE_GUILD, True),
        (PERM_ADMINISTRATOR, True),  # Discord resolves admins to every bit
        (PERM_ADMIN_BIT, False),  # a bare "8" is *not* treated as manage_guild by discord.py
        (PERM_MEMBER, False),
        (PERM_NONE, False),
    ],
)
async def test_guarded_command_via_harness(harness: DiscordHarness, permissions: str, allowed: bool) -> None:
    tree = build_memory_tree(harness.client)
    await harness.start()

    synced = await tree.sync()
    put = harness.calls("PUT", rf"/applications/{BOT_ID}/commands")[-1]
    assert int(put.json[0]["default_member_permissions"]) == 32
    assert synced[0].name == "memory" and synced[0].id > 0

    payload = command_interaction_payload("memory forget", {"who": "bob"}, permissions=permissions)
    interaction = await harness.invoke_command(tree, payload)

    (callback,) = harness.interaction_callbacks()
    assert callback.path == f"/interactions/{payload['id']}/{payload['token']}/callback"
    assert callback.json["type"] == 4
    assert callback.json["data"]["flags"] & EPHEMERAL
    assert interaction.response.is_done()
    if allowed:
        assert callback.json["data"]["content"] == "forgot bob"
        assert [(f.filename, f.data) for f in callback.files] == [("report.txt", b"report")]
        assert not interaction.command_failed
    else:
        assert callback.json["data"]["content"] == "missing: manage_guild"
        assert interaction.command_failed


@pytest.mark.asyncio
async def test_interaction_over_gateway_with_file(server: FakeDiscordServer) -> None:
    client = discord.Client(intents=default_intents())
    tree = build_memory_tree(client)
    async with connected_client(server, client):
        tree.copy_global_to(guild=discord.Object(GUILD_ID))
        await tree.sync(guild=discord.Object(GUILD_ID))
        payload = command_interaction_payload(
            "memory forget", {"who": "carol"}, permissions=PERM_MANAGE_GUILD, command_guild_id=GUILD_ID
        )
        await server.dispatch("INTERACTION_CREATE", payload)
        req = await server.wait_for_request("POST", CALLBACK, timeout=5)

    put = server.find_requests("PUT", rf"/applications/{BOT_ID}/guilds/{GUILD_ID}/commands")
    assert put and put[0].response[0]["guild_id"] == str(GUILD_ID)
    assert req.query == {"with_response": "1"}
    assert req.json["data"]["content"] == "forgot carol" and req.json["data"]["flags"] == EPHEMERAL
    assert req.files[0].filename == "report.txt" and req.files[0].data == b"report"
    assert req.response["resource"]["message"]["attachments"][0]["filename"] == "report.txt"


@pytest.mark.asyncio
async def test_button_press_reaches_view(harness: DiscordHarness) -> None:
    clicks: list[int] = []

    class Confirm(discord.ui.View):
        @discord.ui.button(label="Yes", custom_id="confirm:yes")
        async def yes(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            clicks.append(interaction.user.id)
            await interaction.response.edit_message(content="confirmed", view=None)

    await harness.start()
    await harness.channel().send("Sure?", view=Confirm())
    sent = harness.calls("POST", MESSAGES)[-1].response

    await harness.press_button("confirm:yes", message=sent)

    assert clicks == [USER_ID]
    (callback,) = harness.interaction_callbacks()
    assert callback.json["type"] == 7 and callback.json["data"]["content"] == "confirmed"


# --------------------------------------------------------------------------- (d) models


@pytest.mark.asyncio
async def test_message_from_payload_resolves_mentions_and_reference(harness: DiscordHarness) -> None:
    await harness.start()
    owner = user_payload(OWNER_ID, "owner")
    original = message_payload(author=harness.bot_user, content="earlier answer", guild_id=GUILD_ID)
    msg = harness.message(
        content=f"<@{BOT_ID}> <@{OWNER_ID}> <@&{ADMIN_ROLE_ID}> see above",
        mentions=[harness.bot_user, owner],
        mention_roles=[ADMIN_ROLE_ID],
        referenced_message=original,
        attachments=[attachment_payload(filename="notes.txt", size=5)],
        sticker_items=[sticker_item_payload(42, "wave")],
    )

    assert msg.guild is not None and msg.guild.id == GUILD_ID
    assert isinstance(msg.author, discord.Member) and msg.author.id == USER_ID
    assert {m.id for m in msg.mentions} == {BOT_ID, OWNER_ID}
    assert all(isinstance(m, discord.Member) for m in msg.mentions)
    assert harness.user in msg.mentions
    assert [r.id for r in msg.role_mentions] == [ADMIN_ROLE_ID]
    assert msg.type is discord.MessageType.reply
    assert msg.reference is not None and msg.reference.message_id == int(original["id"])
    assert isinstance(msg.reference.resolved, discord.Message)
    assert msg.reference.resolved.author.id == BOT_ID
    assert msg.attachments[0].filename == "notes.txt" and msg.stickers[0].name == "wave"

    dm = harness.message(message_payload(channel_id=123, content="hi in DM"))
    assert dm.guild is None and isinstance(dm.channel, discord.DMChannel)
    assert isinstance(dm.author, discord.User)


@pytest.mark.asyncio
async def test_dispatch_message_runs_handler_to_completion(harness: DiscordHarness) -> None:
    @harness.client.event
    async def on_message(message: discord.Message) -> None:
        await asyncio.sleep(0.01)  # handler finishes after the parser returned
        dm = await message.author.create_dm()
        await dm.send(f"echo: {message.content}")

    await harness.start()
    msg = await harness.dispatch_message(message_payload(content="remember me", guild_id=GUILD_ID))

    assert msg is not None and msg.content == "remember me"
    assert harness.calls("POST", r"/users/@me/channels")[0].json == {"recipient_id": USER_ID}
    (send,) = harness.calls("POST", MESSAGES)
    assert send.json["content"] == "echo: remember me"


# --------------------------------------------------------------------------- commands.Bot + gateway extras


class SyncingBot(commands.Bot):
    """Shape of a typical adapter bot: syncs the tree in ``setup_hook``."""

    async def setup_hook(self) -> None:
        await self.tree.sync()


@pytest.mark.asyncio
async def test_commands_bot_in_harness() -> None:
    bot = SyncingBot(command_prefix="!", intents=default_intents())

    @bot.command(name="ping")
    async def ping(ctx: commands.Context[Any]) -> None:
        await ctx.reply("pong!")

    async with DiscordHarness(bot) as h:
        assert h.calls("PUT", rf"/applications/{BOT_ID}/commands"), "setup_hook ran against the fake"
        await h.dispatch_message(message_payload(content="!ping", guild_id=GUILD_ID))
        (send,) = h.calls("POST", MESSAGES)
    assert send.json["content"] == "pong!" and "message_reference" in send.json
    assert bot.is_closed()


@pytest.mark.asyncio
async def test_member_chunking_and_resume() -> None:
    guild = default_guild_payload()
    guild["member_count"] = 10  # more than listed: discord.py asks for a member chunk
    async with FakeDiscordServer(guilds=[guild]) as server:
        client = discord.Client(intents=default_intents())
        async with connected_client(server, client):
            assert 8 in [f["op"] for f in server.gateway_received]  # REQUEST_GUILD_MEMBERS
            await server.request_reconnect()
            for _ in range(200):
                if server.resumes and server.connected:
                    break
                await asyncio.sleep(0.01)
            assert server.resumes and server.resumes[0]["session_id"] == server.session_id
            await server.sync()
            await server.dispatch(
                "MESSAGE_CREATE", message_payload(content="after resume", guild_id=GUILD_ID)
            )
        assert len(server.identifies) == 1 and server.resumes[0]["token"] == "fake-token"
