"""Discord slash commands: `/memory show|forget|export`, `/session end` and the server admins' `/admin` group.

Every answer is ephemeral (only the person who asked sees it) and sent with `AllowedMentions.none()`.
Slow commands defer with `thinking=True` first, so Discord's 3-second limit never expires. The `/admin`
group is hidden from members without Manage Server (`default_permissions`) and *enforced* on every call
(`checks.has_permissions`, plus the group's own check), so a member who calls it anyway, an outdated
client, or a server that changed the command's visibility still gets a refusal, never the action.

Manage Server is power over one server, so `/admin` acts on that server's data only: `stats` counts it,
`forget-user` deletes what the member said there. What reaches every server and DM (`everywhere:`, and
`compress-now`, which runs everyone's memory jobs) is the bot operator's: `discord.owner_ids`, or else
the application's owner or its team's admins and developers (discord.py's `Bot.is_owner` rule).
Commands call the dispatcher's methods directly; nothing goes through text parsing.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.discord_adapter import NO_MENTIONS, PLATFORM, split_discord
from memory.channels import set_always_reply
from memory.store import StoreError

if TYPE_CHECKING:
    from bot.discord_adapter import DiscordAdapter

log = logging.getLogger(__name__)

ADMIN_PERMISSIONS = discord.Permissions(manage_guild=True)
CONFIRM_TIMEOUT = 120.0

REFUSE_DM = "This command only works in a server."
REFUSE_ADMIN = "Only server admins can use this command: it needs the Manage Server permission."
REFUSE_CHECK = "You can't use this command here."
REFUSE_OPERATOR = (
    "Only the bot's operator can do that: it acts on every server and DM. As a server admin you act on this "
    "server's data (leave `everywhere` off)."
)
OUTDATED = "That command is out of date. Discord refreshes its list shortly; please try again in a minute."
STORAGE_DOWN = "Sorry, that didn't work because storage is unavailable. Please try again later."
BROKEN = "Sorry, something went wrong with that command."
FORGET_PROMPT = (
    "This deletes everything I know about you: messages, sessions and memories, from every server and our DMs. "
    "It cannot be undone."
)


async def respond(interaction: discord.Interaction, text: str, *, file: discord.File | None = None,
                  view: discord.ui.View | None = None) -> None:
    """Answer privately, whether or not the interaction was deferred; long text becomes several messages."""
    chunks = split_discord(text) or ["…"]
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        extra: dict[str, Any] = {}
        if last and file is not None:
            extra["file"] = file
        if last and view is not None:
            extra["view"] = view
        if not interaction.response.is_done():
            await interaction.response.send_message(chunk, ephemeral=True, allowed_mentions=NO_MENTIONS, **extra)
        else:
            await interaction.followup.send(chunk, ephemeral=True, allowed_mentions=NO_MENTIONS, **extra)


class AdminGroup(app_commands.Group):
    """A group whose every command needs a server and Manage Server, checked before any callback runs."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage(REFUSE_DM)
        if not interaction.permissions.manage_guild:
            raise app_commands.MissingPermissions(["manage_guild"])
        return True


class NotOperator(app_commands.CheckFailure):
    """A server admin asked for something that reaches beyond their server."""


async def require_operator(adapter: DiscordAdapter, interaction: discord.Interaction) -> None:
    if not await adapter.is_operator(interaction.user.id):
        log.warning("Discord user %s (server %s) was refused an operator action", interaction.user.id,
                    interaction.guild_id)
        raise NotOperator(REFUSE_OPERATOR)


class ForgetConfirm(discord.ui.View):
    """The ephemeral confirmation of `/memory forget`: only the person who asked can press it, once."""

    def __init__(self, adapter: DiscordAdapter, origin: discord.Interaction) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT)
        self.adapter = adapter
        self.origin = origin
        self.owner_id = origin.user.id
        self.answered = False
        self.confirm.custom_id = f"membot:forget:yes:{origin.id}"
        self.cancel.custom_id = f"membot:forget:no:{origin.id}"

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message(
                "Only the person who asked can confirm this.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return False
        if self.answered:
            await interaction.response.send_message(
                "That was already answered.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return False
        return True

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.answered = True
        self.stop()
        # Answer within Discord's 3 seconds first: deleting rebuilds the search index and may take longer.
        await interaction.response.edit_message(content="Deleting…", view=None, allowed_mentions=NO_MENTIONS)
        result = await self.adapter.dispatcher.forget(PLATFORM, str(self.owner_id))
        await interaction.edit_original_response(content=result, allowed_mentions=NO_MENTIONS)

    @discord.ui.button(label="Keep my data", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.answered = True
        self.stop()
        await interaction.response.edit_message(
            content="Nothing was deleted.", view=None, allowed_mentions=NO_MENTIONS
        )

    async def on_timeout(self) -> None:
        if self.answered:
            return
        self.answered = True
        try:
            await self.origin.edit_original_response(
                content="Nothing was deleted (no answer in time).", view=None, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException:
            pass


def _channel_label(channel: Any) -> str:
    name = getattr(channel, "name", None)
    return f"#{name}" if name else "this channel"


def register_commands(tree: app_commands.CommandTree[Any], adapter: DiscordAdapter) -> None:
    """Add every group to `tree` and install the error handler that turns refusals into private answers."""
    dispatcher = adapter.dispatcher

    # -- /memory ---------------------------------------------------------------------------------------
    memory = app_commands.Group(name="memory", description="What I remember about you")

    @memory.command(name="show", description="What I remember about you (only you see it)")
    async def memory_show(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await respond(interaction, await dispatcher.memory_text(PLATFORM, str(interaction.user.id)))

    @memory.command(name="forget", description="Delete everything I know about you (asks you first)")
    async def memory_forget(interaction: discord.Interaction) -> None:
        await respond(interaction, FORGET_PROMPT, view=ForgetConfirm(adapter, interaction))

    @memory.command(name="export", description="Everything I have stored about you, as a JSON file")
    async def memory_export(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await dispatcher.export(PLATFORM, str(interaction.user.id))
        if not data:
            await respond(interaction, "I have nothing stored about you.")
            return
        blob = json.dumps(data, ensure_ascii=False, indent=2).encode()
        name = "membot-export.json"
        limit = getattr(interaction, "filesize_limit", 8 * 1024 * 1024)
        if len(blob) > limit:
            blob, name = gzip.compress(blob), name + ".gz"
        if len(blob) > limit:
            await respond(interaction, "Your data is too large for a Discord file. Ask the bot's operator for "
                                       "`membot memory export`.")
            return
        await respond(interaction, "Here is everything I have stored about you.",
                      file=discord.File(io.BytesIO(blob), filename=name))

    # -- /session --------------------------------------------------------------------------------------
    session = app_commands.Group(name="session", description="Our current conversation")

    @session.command(name="end", description="End our conversation here now, so I write it into memory")
    async def session_end(interaction: discord.Interaction) -> None:
        chat_id = str(interaction.channel_id) if interaction.channel_id is not None else None
        await respond(interaction, await dispatcher.end_session(PLATFORM, str(interaction.user.id), chat_id))

    # -- /admin (Manage Server) ----------------------------------------------------------------------------
    admin = AdminGroup(
        name="admin", description="Manage the bot in this server", guild_only=True,
        default_permissions=ADMIN_PERMISSIONS,
    )
    channel = AdminGroup(name="channel", description="Where I talk without being mentioned", parent=admin)

    @admin.command(name="stats", description="People, conversations and messages in this server")
    @app_commands.describe(everywhere="The whole bot's counts (the bot's operator only)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def admin_stats(interaction: discord.Interaction, everywhere: bool = False) -> None:
        if everywhere:
            await require_operator(adapter, interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        if everywhere:
            await respond(interaction, await dispatcher.stats())
        else:
            await respond(interaction, await dispatcher.server_stats(PLATFORM, str(interaction.guild_id)))

    @admin.command(name="compress-now", description="Run everyone's due memory jobs now (the bot's operator only)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def admin_compress_now(interaction: discord.Interaction) -> None:
        await require_operator(adapter, interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        log.info("Discord operator %s ran compress-now in server %s", interaction.user.id, interaction.guild_id)
        await respond(interaction, await dispatcher.compress_now())

    @admin.command(name="forget-user", description="Delete what a member said in this server, and its memories")
    @app_commands.describe(member="The member whose messages and memories from this server are deleted",
                           everywhere="Every server and their DMs too (the bot's operator only)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def admin_forget_user(interaction: discord.Interaction, member: discord.Member,
                                everywhere: bool = False) -> None:
        if everywhere:
            await require_operator(adapter, interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        log.info("Discord admin %s forgot user %s %s", interaction.user.id, member.id,
                 "everywhere" if everywhere else f"in server {interaction.guild_id}")
        if everywhere:
            text = await dispatcher.forget(PLATFORM, str(member.id), by_admin=True)
        else:
            text = await dispatcher.forget_in_server(PLATFORM, str(member.id), str(interaction.guild_id),
                                                     label=member.display_name)
        await respond(interaction, text)

    async def set_channel(interaction: discord.Interaction, target: Any, enabled: bool) -> None:
        target = target or interaction.channel
        if target is None:
            await respond(interaction, "I can't tell which channel you mean.")
            return
        guild = interaction.guild
        title = f"{guild.name if guild else ''} #{getattr(target, 'name', '')}".strip()
        await set_always_reply(adapter.app.store, PLATFORM, str(target.id), enabled, kind="guild", title=title)
        label = _channel_label(target)
        if enabled:
            adapter.always_reply.add(str(target.id))
            text = f"I'll answer every message in {label} now."
            if not adapter.settings.message_content_intent:
                text += (
                    "\nNote: without the Message Content intent Discord only shows me messages that mention me. "
                    "Tick it in the Developer Portal and set `discord.message_content_intent = true`."
                )
        else:
            adapter.always_reply.discard(str(target.id))
            text = f"In {label} I'll only answer messages that mention me or reply to me."
        log.info("Discord admin %s %s channel %s", interaction.user.id, "enabled" if enabled else "disabled",
                 target.id)
        await respond(interaction, text)

    @channel.command(name="enable", description="Answer every message in a channel, without a mention")
    @app_commands.describe(channel="The channel (default: this one)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def channel_enable(
        interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await set_channel(interaction, channel, True)

    @channel.command(name="disable", description="Answer only mentions and replies in a channel")
    @app_commands.describe(channel="The channel (default: this one)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def channel_disable(
        interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await set_channel(interaction, channel, False)

    for group in (memory, session, admin):
        tree.add_command(group)

    @tree.error
    async def on_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await refuse(interaction, error)


def refusal_text(error: app_commands.AppCommandError) -> str:
    if isinstance(error, app_commands.NoPrivateMessage):
        return REFUSE_DM
    if isinstance(error, app_commands.MissingPermissions):
        return REFUSE_ADMIN
    if isinstance(error, NotOperator):
        return REFUSE_OPERATOR
    if isinstance(error, app_commands.CheckFailure):
        return REFUSE_CHECK
    if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        return OUTDATED
    if isinstance(error, app_commands.TransformerError):
        return "I couldn't use that option: pick a member of this server, or a text channel."
    original = getattr(error, "original", error)
    if isinstance(original, StoreError | OSError):
        log.error("a Discord command failed: %s", original)
        return STORAGE_DOWN
    log.error("a Discord command failed", exc_info=original)
    return BROKEN


async def refuse(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    text = refusal_text(error)
    try:
        await respond(interaction, text)
    except discord.HTTPException as exc:  # the interaction expired or was answered elsewhere
        log.warning("could not tell a Discord user why a command failed: %s", exc)
