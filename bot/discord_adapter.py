"""The Discord adapter (discord.py 2.x): Discord events in, platform-free messages to the dispatcher, replies out.

Who the bot answers: every DM; in servers, messages that mention it or reply to it, and every message in
channels an admin enabled with `/admin channel enable`. Other bots, webhooks and the bot itself are ignored.
Without the privileged Message Content intent Discord still sends the text of DMs and of messages that
mention the bot; with it (`discord.message_content_intent = true`) enabled channels work without a mention.

What a reply looks like: a typing indicator while the model works, then a reply to the person's message,
split at Discord's 2,000 characters without breaking ``` code blocks, never able to ping anyone
(`AllowedMentions.none()` is the client's default and is passed on every send). With
`discord.streaming = true` the reply grows in place by edits at most once a second and continues in a new
message at the length limit, as llmcord does.

The slash commands live in `bot.discord_commands`; this module owns the client, the message handler and
the command sync (only when the command definitions changed, tracked by a hash in the store).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.dispatcher import ADMIN_COMMANDS, USER_COMMANDS
from bot.incoming import IncomingMessage, Reply
from bot.text import redact_in_logs
from memory.channels import always_reply_chats, place_in_server
from memory.store import StoreError

if TYPE_CHECKING:
    from bot.app import App
    from bot.config import DiscordSettings

log = logging.getLogger(__name__)

PLATFORM = "discord"
MESSAGE_LIMIT = 2000
EDIT_INTERVAL = 1.0  # seconds between edits of a streamed reply
NO_MENTIONS = discord.AllowedMentions.none()
COMMAND_HASH_KEY = "discord.commands.sha256:{app_id}:{scope}"

TEXT_COMMAND_HINT = (
    "On Discord my commands are slash commands: type / and pick one.\n"
    "/memory show: what I remember about you\n"
    "/memory export: all your data as a JSON file\n"
    "/memory forget: delete everything I know about you (asks first)\n"
    "/session end: end our conversation now, so I write it into memory\n"
    "Server admins also get /admin stats, /admin compress-now, /admin channel enable|disable and "
    "/admin forget-user."
)
NO_CONTENT_HINT = (
    "Discord didn't show me the text of that message. Mention me (@ me, or keep @ on in your reply) and "
    "I'll answer."
)

def _text_command(text: str) -> bool:
    """Whether `text` is one of the dispatcher's text commands (/memory, /forget, /stats...)."""
    words = text[1:].split(maxsplit=1) if text.startswith("/") else []
    name = words[0].split("@", 1)[0].lower() if words else ""
    return name in USER_COMMANDS or name in ADMIN_COMMANDS or name == "start"


# --------------------------------------------------------------------------------------------- splitting

FENCE = "```"
_FENCE_LANG = re.compile(r"[A-Za-z0-9_+#.\-]{1,20}(?=\r?\n)")
_FENCE_WORD = re.compile(r"[A-Za-z0-9_+#.\-]{0,20}")
_CLOSE = "\n" + FENCE


def _fences(text: str) -> list[int]:
    """Start offsets of the ``` markers in `text`, scanned left to right without overlap."""
    found, pos = [], 0
    while (i := text.find(FENCE, pos)) >= 0:
        found.append(i)
        pos = i + len(FENCE)
    return found


def _fence_after(text: str, opener: str | None) -> str | None:
    """The fence open at the end of `text` (its opening line, e.g. "```py"), given the one open at its start."""
    for i in _fences(text):
        if opener is None:
            lang = _FENCE_LANG.match(text, i + len(FENCE))
            opener = FENCE + (lang.group(0) if lang else "")
        else:
            opener = None
    return opener


def _best_cut(rest: str, budget: int, opener: str | None) -> int:
    """Where to end the next piece of `rest` (at most `budget` characters), preferring natural breaks.

    Paragraphs, then lines, then sentences, then words; inside a code block only line breaks count as
    natural. Never cuts inside a ``` marker.
    """
    window = rest[:budget]
    markers = _fences(window)
    ends = [i + len(FENCE) for i in markers]

    def in_code(pos: int) -> bool:
        return (opener is not None) ^ (bisect.bisect_right(ends, pos) % 2 == 1)

    floor = budget // 3
    for sep in ("\n\n", "\n", ". ", "! ", "? ", " "):
        idx = window.rfind(sep)
        while idx > floor:
            if sep.startswith("\n") or not in_code(idx):
                return idx + len(sep)
            idx = window.rfind(sep, 0, idx)
    cut = budget
    for start in _fences(rest[: budget + len(FENCE)]):  # never between the backticks of a marker, nor between a marker and its language
        word = _FENCE_WORD.match(rest, start + len(FENCE))
        end = word.end() if word else start + len(FENCE)
        if start < cut < end or (cut == end > start + len(FENCE)):
            cut = start
    return max(cut, 1)


def split_discord(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split a reply into messages of at most `limit` characters without breaking code blocks.

    A piece that ends inside a ``` block gets the block closed, and the next piece reopens it with the same
    language, so every message renders on its own. A block left open at the very end is closed too.
    """
    return [head + body + tail for head, body, tail in _split_parts(text, limit)]


def _split_parts(text: str, limit: int) -> list[tuple[str, str, str]]:
    """(reopening fence, piece of the text, closing fence) per message; the pieces are the text, in order."""
    if limit < 64:
        raise ValueError("limit too small to split code blocks")
    parts: list[tuple[str, str, str]] = []
    opener: str | None = None
    rest = text.strip()
    while rest:
        head = opener + "\n" if opener else ""
        end_state = _fence_after(rest, opener)
        tail = _CLOSE if end_state else ""
        if len(head) + len(rest) + len(tail) <= limit:
            parts.append((head, rest, tail))
            break
        cut = _best_cut(rest, limit - len(head) - len(_CLOSE), opener)
        piece, rest = rest[:cut], rest[cut:]
        state = _fence_after(piece, opener)
        if piece.strip():
            parts.append((head, piece.rstrip(), _CLOSE if state else ""))
        if state is None:
            rest = rest.lstrip()
        opener = state
    return parts


# --------------------------------------------------------------------------------------------- outgoing


class ReplyWriter:
    """The bot's answer to one message: sent as replies, grown in place while streaming.

    An edit comes at least `interval` seconds after the previous edit or send (a new message at the length
    limit is sent at once); the final text is reconciled with what is on screen: changed messages edited,
    missing ones sent, extra ones deleted.
    """

    def __init__(
        self, source: discord.Message, *, interval: float = EDIT_INTERVAL,
        clock: Callable[[], float] = time.monotonic, limit: int = MESSAGE_LIMIT,
    ) -> None:
        self.source = source
        self.interval = interval
        self.clock = clock
        self.limit = limit
        self.sent: list[discord.Message] = []
        self.shown: list[str] = []
        self.last_update = float("-inf")

    async def partial(self, text: str) -> None:
        """A longer version of the reply is ready; show it unless the last update is under a second old."""
        if self.sent and self.clock() - self.last_update < self.interval:
            return
        await self._show(split_discord(text, self.limit), final=False)

    async def finish(self, text: str) -> None:
        """Show the final text (waiting for the edit interval where an edit is needed)."""
        await self._show(split_discord(text, self.limit), final=True)

    async def _show(self, chunks: Sequence[str], *, final: bool) -> None:
        for i, chunk in enumerate(chunks):
            if i < len(self.sent):
                if self.shown[i] != chunk:
                    wait = self.interval - (self.clock() - self.last_update)
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self.sent[i] = await self.sent[i].edit(content=chunk, allowed_mentions=NO_MENTIONS)
                    self.shown[i] = chunk
                    self.last_update = self.clock()
                continue
            target = self.sent[-1] if self.sent else self.source
            message = await self.source.channel.send(
                chunk, reference=target.to_reference(fail_if_not_exists=False), allowed_mentions=NO_MENTIONS,
                mention_author=False,
            )
            self.sent.append(message)
            self.shown.append(chunk)
            self.last_update = self.clock()
        if final:
            while len(self.sent) > len(chunks):
                extra = self.sent.pop()
                self.shown.pop()
                await extra.delete()


# --------------------------------------------------------------------------------------------- client


def build_intents(message_content: bool) -> discord.Intents:
    """Only what the bot uses: servers and their channels, server and DM messages (+ content if ticked)."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = message_content
    return intents


class _MembotEvents:
    """The events membot handles, shared by the one-connection and the sharded client."""

    adapter: DiscordAdapter
    tree: app_commands.CommandTree[Any]

    def _membot_init(self, adapter: DiscordAdapter) -> None:
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)  # type: ignore[arg-type]

    async def setup_hook(self) -> None:
        await self.adapter.setup()

    async def on_ready(self) -> None:
        client: discord.Client = self  # type: ignore[assignment]
        log.info("Discord: connected as %s in %d server(s)", client.user, len(client.guilds))

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_guild_available(self, guild: discord.Guild) -> None:
        await self.adapter.note_server(guild)


class MembotClient(_MembotEvents, discord.Client):
    """`discord.Client` (one gateway connection, enough up to 2,500 servers) + an app-command tree."""

    def __init__(self, adapter: DiscordAdapter, *, intents: discord.Intents) -> None:
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS, chunk_guilds_at_startup=False)
        self._membot_init(adapter)


class ShardedMembotClient(_MembotEvents, discord.AutoShardedClient):
    """discord.py's sharded client: `shard_count` connections, of which this process opens `shard_ids` (all
    when empty). Discord sends a server's events to shard (server id >> 22) % shard_count and DMs to shard 0."""

    def __init__(self, adapter: DiscordAdapter, *, intents: discord.Intents, shard_count: int,
                 shard_ids: list[int] | None) -> None:
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS, chunk_guilds_at_startup=False,
                         shard_count=shard_count, shard_ids=shard_ids)
        self._membot_init(adapter)

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("Discord: shard %d of %d connected", shard_id, self.shard_count)


def build_client(adapter: DiscordAdapter, settings: DiscordSettings) -> MembotClient | ShardedMembotClient:
    """One connection unless `discord.shard_count` is set (docs/deployment.md: several processes)."""
    intents = build_intents(settings.message_content_intent)
    if settings.shard_count is None:
        return MembotClient(adapter, intents=intents)
    return ShardedMembotClient(adapter, intents=intents, shard_count=settings.shard_count,
                               shard_ids=list(settings.shard_ids) or None)


class DiscordAdapter:
    """Runs the Discord bot on the shared app (one store, one model worker) next to other platforms."""

    def __init__(self, app: App, token: str, *, settings: DiscordSettings | None = None) -> None:
        from bot.discord_commands import register_commands

        redact_in_logs(token)
        self.app = app
        self.token = token
        self.settings = settings or app.settings.discord
        self.dispatcher = app.dispatcher
        self.client = build_client(self, self.settings)
        self.always_reply: set[str] = set()
        self.edit_interval = EDIT_INTERVAL
        self._task: asyncio.Task[None] | None = None
        self._saved_urls: tuple[str, yarl.URL] | None = None
        self._operators: set[int] | None = None
        register_commands(self.client.tree, self)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in (a rejected token fails here, with the variable's name), then connect in the background."""
        self._apply_urls()
        try:
            await self.client.login(self.token)
        except discord.LoginFailure:
            await self.client.close()
            self._restore_urls()
            raise RuntimeError(
                f"Discord rejected the bot token in {self.settings.token_env}; copy it again from the "
                "Developer Portal (Bot → Reset Token)"
            ) from None
        except BaseException:
            await self.client.close()
            self._restore_urls()
            raise
        self._task = asyncio.create_task(self._connect(), name="discord-gateway")

    async def _connect(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            log.error(
                "Discord refused the Message Content intent: tick it in the Developer Portal (Bot → Privileged "
                "Gateway Intents) or set discord.message_content_intent = false"
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the Discord connection stopped")

    async def stop(self) -> None:
        try:
            if not self.client.is_closed():
                await self.client.close()
            if self._task is not None:
                try:
                    await asyncio.wait_for(self._task, 10.0)
                except (TimeoutError, asyncio.CancelledError):
                    self._task.cancel()
        finally:
            self._restore_urls()

    def _apply_urls(self) -> None:
        """`discord.api_base_url` / `discord.gateway_url`: for tests and proxies (process-wide in discord.py)."""
        if not (self.settings.api_base_url or self.settings.gateway_url) or self._saved_urls is not None:
            return
        self._saved_urls = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        if self.settings.api_base_url:
            Route.BASE = self.settings.api_base_url.rstrip("/")
        if self.settings.gateway_url:
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.settings.gateway_url)

    def _restore_urls(self) -> None:
        if self._saved_urls is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved_urls
            self._saved_urls = None

    async def setup(self) -> None:
        """After login, before the gateway: load enabled channels, sync commands if their definitions changed.

        When shards run in several processes only shard 0's syncs: the commands are the bot's, not a shard's,
        and one writer keeps the stored hash and Discord's copy in step."""
        self.always_reply = await always_reply_chats(self.app.store, PLATFORM)
        if self.always_reply and not self.settings.message_content_intent:
            log.warning(
                "Discord: %d channel(s) are enabled for every message, but without the Message Content intent "
                "Discord only sends the text of messages that mention the bot", len(self.always_reply),
            )
        if self.settings.shard_ids and 0 not in self.settings.shard_ids:
            log.info("Discord: slash commands are synced by the process serving shard 0")
        else:
            await self.sync_commands()

    async def is_operator(self, user_id: int) -> bool:
        """The bot's operator, who may act on every server and DM: `discord.owner_ids` when set, otherwise
        the application's owner, or its team's admins and developers (discord.py's `Bot.is_owner` rule)."""
        if self.settings.owner_ids:
            return user_id in self.settings.owner_ids
        if self._operators is None:
            app = self.client.application or await self.client.application_info()
            if app.team is not None:
                roles = (discord.TeamMemberRole.admin, discord.TeamMemberRole.developer)
                self._operators = {m.id for m in app.team.members if m.role in roles}
            else:
                self._operators = {app.owner.id}
        return user_id in self._operators

    async def note_server(self, guild: discord.Guild) -> None:
        """Chats stored before membot knew servers (schema 6) learn theirs when the server comes online, so a
        server admin's `/admin forget-user` and `stats` reach them too."""
        ids = [str(c.id) for c in guild.channels] + [str(t.id) for t in guild.threads]
        try:
            placed = await place_in_server(self.app.store, PLATFORM, str(guild.id), ids)
        except (StoreError, OSError) as exc:
            log.warning("Discord: could not note server %s's channels: %s", guild.id, exc)
            return
        if placed:
            log.info("Discord: %d earlier chat(s) placed in server %s", placed, guild.id)

    # -- command sync ---------------------------------------------------------------------------------

    async def sync_commands(self) -> list[str]:
        """Push the slash commands where they belong, only for scopes whose definition hash changed.

        With `guild_ids` every command goes to those servers (instant) and the global list is emptied, so
        nothing shows twice; without, they are global. Returns the scopes synced ("global" or a guild id).
        """
        tree = self.client.tree
        app_id = self.client.application_id
        if app_id is None:  # pragma: no cover - set by login
            log.warning("Discord: no application id, slash commands not synced")
            return []
        guilds = [discord.Object(gid) for gid in self.settings.guild_ids]
        for guild in guilds:
            tree.copy_global_to(guild=guild)
        if guilds:
            tree.clear_commands(guild=None)
        synced = []
        for guild in [None, *guilds]:
            scope = "global" if guild is None else str(guild.id)
            payload = [cmd.to_dict(tree) for cmd in tree.get_commands(guild=guild)]
            payload.sort(key=lambda c: (c.get("type", 1), c["name"]))
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            key = COMMAND_HASH_KEY.format(app_id=app_id, scope=scope)
            if await self.app.store.get_kv(key) == digest:
                continue
            try:
                await tree.sync(guild=guild)
            except discord.HTTPException as exc:
                log.error(
                    "Discord: could not sync slash commands to %s (%s); is the bot in that server, invited "
                    "with the applications.commands scope? Retried at the next start.", scope, exc,
                )
                continue
            await self.app.store.set_kv(key, digest)
            synced.append(scope)
            log.info("Discord: slash commands synced (%s)", scope)
        return synced

    # -- messages ---------------------------------------------------------------------------------------

    def should_answer(self, message: discord.Message) -> bool:
        me = self.client.user
        author = message.author
        if me is None or author.bot or message.webhook_id is not None or author.id == me.id:
            return False
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return False
        return self.addressed(message) or self._channel_enabled(message.channel)

    def addressed(self, message: discord.Message) -> bool:
        """A DM, a mention of the bot (or of its role), or a reply to one of its messages."""
        me = self.client.user
        if me is None:
            return False
        if message.guild is None or me in message.mentions or self._bot_role_mentioned(message):
            return True
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        return isinstance(resolved, discord.Message) and resolved.author.id == me.id

    def _bot_role_mentioned(self, message: discord.Message) -> bool:
        guild = message.guild
        me = guild.me if guild is not None else None
        if not isinstance(me, discord.Member):
            return False
        managed = {role.id for role in me.roles if role.managed}
        return any(role.id in managed for role in message.role_mentions)

    def _channel_enabled(self, channel: Any) -> bool:
        if str(channel.id) in self.always_reply:
            return True
        parent = getattr(channel, "parent_id", None)  # threads follow their channel
        return parent is not None and str(parent) in self.always_reply

    def incoming(self, message: discord.Message) -> IncomingMessage:
        guild = message.guild
        if guild is None:
            kind, title = "dm", ""
        else:
            kind, title = "guild", f"{guild.name} #{getattr(message.channel, 'name', '')}"
        return IncomingMessage(
            platform=PLATFORM, user_id=str(message.author.id), display_name=message.author.display_name,
            chat_id=str(message.channel.id), chat_kind=kind, text=self.message_text(message),
            message_id=str(message.id), chat_title=title, is_admin=False, time=None,
            server_id=None if guild is None else str(guild.id),
        )

    def message_text(self, message: discord.Message) -> str:
        """The content without the bot's own mention; other mentions as readable names for the model."""
        me = self.client.user
        text = message.content
        if me is not None:
            text = re.sub(rf"<@!?{me.id}>", "", text)
        if message.guild is not None and isinstance(message.guild.me, discord.Member):
            for role in message.guild.me.roles:
                if role.managed:
                    text = text.replace(f"<@&{role.id}>", "")
        for user in message.mentions:  # a function, not a template: a name may hold "\1" or "\g<0>"
            text = re.sub(rf"<@!?{user.id}>", lambda _, name=user.display_name: "@" + name, text)
        for role in message.role_mentions:
            text = text.replace(f"<@&{role.id}>", "@" + role.name)
        for channel in message.channel_mentions:
            text = text.replace(f"<#{channel.id}>", "#" + channel.name)
        return re.sub(r"[ \t]{2,}", " ", text).strip()

    async def on_message(self, message: discord.Message) -> None:
        if not self.should_answer(message):
            return
        msg = self.incoming(message)
        if not msg.text and not self.addressed(message):
            # In an enabled channel: a picture or sticker alone, or no Message Content intent, so no text.
            return
        writer = ReplyWriter(message, interval=self.edit_interval)
        try:
            if _text_command(msg.text):
                # Text commands would print private memory into a channel: Discord has slash commands.
                await writer.finish(TEXT_COMMAND_HINT)
                return
            if not msg.text and self._content_withheld(message):
                await writer.finish(NO_CONTENT_HINT)
                return
            async with message.channel.typing():
                await self.dispatcher.handle(
                    msg, on_partial=writer.partial if self.settings.streaming else None,
                    deliver=lambda reply: self._deliver(writer, reply),
                )
        except discord.HTTPException as exc:
            log.warning("Discord: could not answer in channel %s: %s", message.channel.id, exc)

    def _content_withheld(self, message: discord.Message) -> bool:
        """A server message for the bot whose text Discord withheld: a reply without a ping, no intent."""
        return (
            message.guild is not None and not self.settings.message_content_intent and not message.content
            and not message.attachments and not message.stickers and not message.embeds
        )

    async def _deliver(self, writer: ReplyWriter, reply: Reply) -> None:
        if reply.silent:
            await writer.finish("")
            return
        await writer.finish(reply.text)
        if writer.sent:
            await self.dispatcher.delivered(reply, str(writer.sent[0].id))
