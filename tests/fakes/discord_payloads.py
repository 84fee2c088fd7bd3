"""Discord payload factories, a canned fake REST backend, and a socket-free harness.

Why: the bot's discord.py adapter must be testable without Discord. discord.py
builds every model (``Message``, ``Interaction``, ``Guild`` ...) from plain gateway
dicts, so tests can feed it realistic payloads and observe the REST calls it makes.

Three layers, usable separately:

* payload factories (``user_payload``, ``guild_payload``, ``message_payload``,
  ``command_interaction_payload`` ...) returning plain dicts shaped like Discord's API v10;
* ``FakeRestBackend``: answers REST calls (method + path + JSON/multipart) with canned,
  stateful payloads; shared by ``DiscordHarness`` and ``tests.fakes.discord_server``;
* ``DiscordHarness``: a real ``discord.Client`` (or ``commands.Bot``) whose HTTP layer is
  replaced by a recorder, so handlers and app-command trees run with no sockets at all::

      async with DiscordHarness() as h:          # logs in, adds guilds, fires on_ready
          await h.dispatch_message(message_payload(...))   # runs on_message to completion
          interaction = await h.invoke_command(tree, command_interaction_payload("ping"))
          h.calls("POST", r"/channels/\\d+/messages")      # -> [RecordedRequest]
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import discord
from discord import app_commands
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter

Payload = dict[str, Any]

# --------------------------------------------------------------------------- ids

DISCORD_EPOCH_MS = 1420070400000
_BASE_MS = 1704067200000  # 2024-01-01T00:00:00Z: generated ids look like real ones
_ids = itertools.count(1)

BOT_ID = 900000000000000001
APP_ID = BOT_ID  # for bots the application id equals the bot user id
GUILD_ID = 900000000000000100
CHANNEL_ID = 900000000000000200
OTHER_CHANNEL_ID = 900000000000000201
OWNER_ID = 900000000000000300
USER_ID = 900000000000000301
ADMIN_ROLE_ID = 900000000000000400

PERM_NONE = "0"
PERM_ADMIN_BIT = str(discord.Permissions(administrator=True).value)  # "8": the raw role bit only
#: What Discord sends for an administrator in ``member.permissions``: every bit set.
#: (discord.py's ``has_permissions`` checks bits literally, so "8" alone lacks manage_guild.)
PERM_ADMINISTRATOR = str(discord.Permissions.all().value)
PERM_MANAGE_GUILD = str(discord.Permissions(manage_guild=True).value)  # "32"
#: What an ordinary member typically has: can talk, cannot manage anything.
PERM_MEMBER = str(
    discord.Permissions(
        view_channel=True,
        send_messages=True,
        read_message_history=True,
        embed_links=True,
        attach_files=True,
        add_reactions=True,
        use_application_commands=True,
    ).value
)
#: Permissions handed to the bot in interactions (``app_permissions``).
PERM_BOT = str(
    discord.Permissions(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        read_message_history=True,
        embed_links=True,
        attach_files=True,
        add_reactions=True,
        use_application_commands=True,
    ).value
)

EPHEMERAL = 64  # MessageFlags.ephemeral
LOADING = 128  # MessageFlags.loading (deferred "thinking" response)


def snowflake() -> int:
    """Return a new unique, increasing snowflake (deterministic per process)."""
    n = next(_ids)
    return ((_BASE_MS - DISCORD_EPOCH_MS + n) << 22) | (n & 0xFFF)


def snowflake_time(sid: int | str) -> str:
    """ISO timestamp embedded in a snowflake: keeps ``created_at`` and payload times consistent."""
    ms = (int(sid) >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isoformat()


# --------------------------------------------------------------------------- payload factories


def user_payload(
    id: int,
    name: str = "user",
    *,
    bot: bool = False,
    global_name: str | None = None,
    avatar: str | None = None,
    discriminator: str = "0",
) -> Payload:
    """A Discord user object (``/users/@me`` shape; also used as message author)."""
    data: Payload = {
        "id": str(id),
        "username": name,
        "discriminator": discriminator,
        "global_name": global_name,
        "avatar": avatar,
        "public_flags": 0,
        "flags": 0,
    }
    if bot:
        data["bot"] = True
    return data


def bot_user_payload(id: int = BOT_ID, name: str = "membot") -> Payload:
    """The bot's own user (as in READY / ``GET /users/@me``)."""
    data = user_payload(id, name, bot=True)
    data.update({"verified": True, "mfa_enabled": False, "locale": "en-US", "email": None})
    return data


def member_payload(
    user: Payload,
    *,
    roles: Iterable[int] = (),
    nick: str | None = None,
    joined_at: str = "2024-01-01T00:00:00+00:00",
    permissions: str | None = None,
) -> Payload:
    """A guild member; ``permissions`` is only present in interaction payloads."""
    data: Payload = {
        "user": user,
        "roles": [str(r) for r in roles],
        "nick": nick,
        "avatar": None,
        "joined_at": joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
    }
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def role_payload(
    id: int, name: str, *, permissions: str = PERM_MEMBER, position: int = 0, managed: bool = False
) -> Payload:
    """A guild role. The ``@everyone`` role has the guild's id."""
    return {
        "id": str(id),
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": str(permissions),
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def text_channel_payload(
    id: int,
    guild_id: int,
    name: str = "general",
    *,
    position: int = 0,
    topic: str | None = None,
    nsfw: bool = False,
    parent_id: int | None = None,
    permission_overwrites: Sequence[Payload] = (),
    type: int = 0,
) -> Payload:
    """A guild text channel (``type=5`` for announcement channels)."""
    return {
        "id": str(id),
        "type": type,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "topic": topic,
        "nsfw": nsfw,
        "parent_id": str(parent_id) if parent_id else None,
        "permission_overwrites": list(permission_overwrites),
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "flags": 0,
    }


def dm_channel_payload(id: int, recipient: Payload) -> Payload:
    """A 1:1 DM channel (``POST /users/@me/channels`` shape)."""
    return {"id": str(id), "type": 1, "recipients": [recipient], "last_message_id": None, "flags": 0}


def guild_payload(
    id: int,
    *,
    name: str = "Test Guild",
    owner_id: int = OWNER_ID,
    channels: Sequence[Payload] = (),
    roles: Sequence[Payload] | None = None,
    members: Sequence[Payload] = (),
    large: bool = False,
) -> Payload:
    """A full guild as sent in GUILD_CREATE. ``roles`` defaults to just ``@everyone``."""
    if roles is None:
        roles = [role_payload(id, "@everyone")]
    return {
        "id": str(id),
        "name": name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "features": [],
        "emojis": [],
        "stickers": [],
        "roles": list(roles),
        "channels": list(channels),
        "threads": [],
        "members": list(members),
        "member_count": len(members),
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "large": large,
        "unavailable": False,
        "joined_at": "2024-01-01T00:00:00+00:00",
        "premium_progress_bar_enabled": False,
    }


def default_users() -> dict[str, Payload]:
    """The stock cast: ``bot``, ``owner`` (guild owner) and ``user`` (ordinary member)."""
    return {
        "bot": bot_user_payload(),
        "owner": user_payload(OWNER_ID, "owner"),
        "user": user_payload(USER_ID, "alice"),
    }


def default_guild_payload(bot_user: Payload | None = None) -> Payload:
    """One guild with ``#general`` and ``#random``, an admin role, owner, user and the bot."""
    users = default_users()
    bot = bot_user or users["bot"]
    return guild_payload(
        GUILD_ID,
        owner_id=OWNER_ID,
        channels=[
            text_channel_payload(CHANNEL_ID, GUILD_ID, "general", position=0),
            text_channel_payload(OTHER_CHANNEL_ID, GUILD_ID, "random", position=1),
        ],
        roles=[
            role_payload(GUILD_ID, "@everyone", permissions=PERM_MEMBER),
            role_payload(ADMIN_ROLE_ID, "admin", permissions=PERM_ADMIN_BIT, position=1),
        ],
        members=[
            member_payload(users["owner"], roles=[ADMIN_ROLE_ID]),
            member_payload(users["user"]),
            member_payload(bot),
        ],
    )


def attachment_payload(
    id: int | None = None,
    filename: str = "file.txt",
    *,
    size: int = 0,
    content_type: str | None = "text/plain",
    url: str | None = None,
) -> Payload:
    """A message attachment; point ``url`` at ``FakeRestBackend.add_cdn_file`` to make ``read()`` work."""
    aid = id or snowflake()
    url = url or f"https://cdn.fake.invalid/attachments/0/{aid}/{filename}"
    data: Payload = {"id": str(aid), "filename": filename, "size": size, "url": url, "proxy_url": url}
    if content_type:
        data["content_type"] = content_type
    return data


def sticker_item_payload(id: int, name: str = "sticker", format_type: int = 1) -> Payload:
    """A sticker item as it appears in ``message.sticker_items``."""
    return {"id": str(id), "name": name, "format_type": format_type}


def message_payload(
    id: int | None = None,
    channel_id: int = CHANNEL_ID,
    author: Payload | None = None,
    content: str = "",
    guild_id: int | None = None,
    mentions: Sequence[Payload] = (),
    mention_roles: Sequence[int] = (),
    mention_everyone: bool = False,
    referenced_message: Payload | None = None,
    webhook_id: int | None = None,
    attachments: Sequence[Payload] = (),
    sticker_items: Sequence[Payload] = (),
    *,
    member: Payload | None = None,
    include_member: bool = True,
    message_reference: Payload | None = None,
    embeds: Sequence[Payload] = (),
    components: Sequence[Payload] = (),
    flags: int = 0,
    tts: bool = False,
    nonce: str | int | None = None,
    type: int | None = None,
    edited_timestamp: str | None = None,
    application_id: int | None = None,
) -> Payload:
    """A MESSAGE_CREATE payload (also the REST message shape).

    Guild messages get a partial ``member`` like the real gateway sends, unless
    ``include_member=False`` or the message comes from a webhook. A
    ``referenced_message`` implies ``message_reference`` and reply type 19.
    """
    mid = id or snowflake()
    author = author or user_payload(USER_ID, "alice")
    data: Payload = {
        "id": str(mid),
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": snowflake_time(mid),
        "edited_timestamp": edited_timestamp,
        "tts": tts,
        "mention_everyone": mention_everyone,
        "mentions": list(mentions),
        "mention_roles": [str(r) for r in mention_roles],
        "attachments": list(attachments),
        "embeds": list(embeds),
        "components": list(components),
        "sticker_items": list(sticker_items),
        "pinned": False,
        "flags": flags,
    }
    if nonce is not None:
        data["nonce"] = nonce
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
        if include_member and webhook_id is None:
            data["member"] = member or {k: v for k, v in member_payload(author).items() if k != "user"}
    if webhook_id is not None:
        data["webhook_id"] = str(webhook_id)
    if application_id is not None:
        data["application_id"] = str(application_id)
    if referenced_message is not None and message_reference is None:
        message_reference = {
            "type": 0,
            "message_id": referenced_message["id"],
            "channel_id": referenced_message["channel_id"],
        }
        if guild_id is not None:
            message_reference["guild_id"] = str(guild_id)
    if message_reference is not None:
        data["message_reference"] = message_reference
        if referenced_message is not None:
            data["referenced_message"] = referenced_message
    data["type"] = type if type is not None else (19 if message_reference is not None else 0)
    return data


def option_payload(name: str, value: Any, type: int | None = None, *, focused: bool = False) -> Payload:
    """One application-command option; the option type is inferred from ``value`` if not given."""
    if type is None:
        if isinstance(value, bool):
            type = 5
        elif isinstance(value, int):
            type = 4
        elif isinstance(value, float):
            type = 10
        else:
            type = 3
    data: Payload = {"name": name, "type": type, "value": value}
    if focused:
        data["focused"] = True
    return data


def _options(options: Mapping[str, Any] | Sequence[Payload] | None) -> list[Payload]:
    if options is None:
        return []
    if isinstance(options, Mapping):
        return [option_payload(k, v) for k, v in options.items()]
    return list(options)


def command_data(
    command: str,
    options: Mapping[str, Any] | Sequence[Payload] | None = None,
    *,
    command_id: int | None = None,
    command_type: int = 1,
    guild_id: int | None = None,
    resolved: Payload | None = None,
) -> Payload:
    """``interaction.data`` for a chat-input command.

    ``command`` is the full path as typed: ``"ping"``, ``"memory forget"`` (subcommand)
    or ``"admin memory forget"`` (group + subcommand). ``guild_id`` marks a guild command.
    """
    parts = command.split()
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"bad command path {command!r}")
    leaf = _options(options)
    if len(parts) == 3:
        leaf = [{"type": 2, "name": parts[1], "options": [{"type": 1, "name": parts[2], "options": leaf}]}]
    elif len(parts) == 2:
        leaf = [{"type": 1, "name": parts[1], "options": leaf}]
    data: Payload = {
        "id": str(command_id or snowflake()),
        "name": parts[0],
        "type": command_type,
        "options": leaf,
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    if resolved is not None:
        data["resolved"] = resolved
    return data


def interaction_payload(
    *,
    type: int = 2,
    data: Payload | None = None,
    user: Payload | None = None,
    guild_id: int | None = GUILD_ID,
    channel: Payload | None = None,
    permissions: str = PERM_MEMBER,
    roles: Iterable[int] = (),
    app_permissions: str = PERM_BOT,
    message: Payload | None = None,
    id: int | None = None,
    token: str | None = None,
    application_id: int = APP_ID,
    locale: str = "en-US",
    guild_locale: str = "en-US",
    context: int | None = None,
    attachment_size_limit: int = 25 * 1024 * 1024,
) -> Payload:
    """An INTERACTION_CREATE payload.

    ``guild_id=None`` makes it a DM interaction (``user`` instead of ``member``).
    ``permissions`` is the invoking member's resolved permission string, e.g.
    ``PERM_ADMINISTRATOR`` (all bits, as Discord resolves admins), ``PERM_ADMIN_BIT`` ("8"),
    ``PERM_MANAGE_GUILD`` ("32"), ``PERM_MEMBER`` or ``PERM_NONE`` ("0");
    this is what ``app_commands.checks.has_permissions`` inspects.
    """
    iid = id or snowflake()
    user = user or user_payload(USER_ID, "alice")
    payload: Payload = {
        "id": str(iid),
        "application_id": str(application_id),
        "type": type,
        "token": token or f"itoken-{iid}",
        "version": 1,
        "locale": locale,
        "app_permissions": str(app_permissions),
        "entitlements": [],
        "authorizing_integration_owners": {"0": str(guild_id)} if guild_id else {"1": str(user["id"])},
        "attachment_size_limit": attachment_size_limit,
    }
    if data is not None:
        payload["data"] = data
    if guild_id is not None:
        payload["guild_id"] = str(guild_id)
        payload["guild_locale"] = guild_locale
        payload["guild"] = {"id": str(guild_id), "locale": guild_locale, "features": []}
        payload["member"] = member_payload(user, roles=roles, permissions=permissions)
        channel = channel or text_channel_payload(CHANNEL_ID, guild_id)
        payload["context"] = 0 if context is None else context
    else:
        payload["user"] = user
        channel = channel or dm_channel_payload(snowflake(), user)
        payload["context"] = 1 if context is None else context
    payload["channel"] = channel
    payload["channel_id"] = channel["id"]
    if message is not None:
        payload["message"] = message
    return payload


def command_interaction_payload(
    command: str,
    options: Mapping[str, Any] | Sequence[Payload] | None = None,
    *,
    command_guild_id: int | None = None,
    resolved: Payload | None = None,
    **kwargs: Any,
) -> Payload:
    """A slash-command interaction (type 2); ``kwargs`` go to ``interaction_payload``."""
    data = command_data(command, options, guild_id=command_guild_id, resolved=resolved)
    return interaction_payload(type=2, data=data, **kwargs)


def component_interaction_payload(
    custom_id: str,
    *,
    component_type: int = 2,
    values: Sequence[str] | None = None,
    message: Payload | None = None,
    bot_user: Payload | None = None,
    **kwargs: Any,
) -> Payload:
    """A component interaction (type 3): button press (2) or select (3...8) with ``values``.

    ``message`` is the bot message carrying the component (a stub by ``bot_user`` if omitted).
    """
    data: Payload = {"custom_id": custom_id, "component_type": component_type}
    if values is not None:
        data["values"] = list(values)
    if message is None:
        channel_id = int((kwargs.get("channel") or {}).get("id", CHANNEL_ID))
        message = message_payload(author=bot_user or bot_user_payload(), channel_id=channel_id)
    return interaction_payload(type=3, data=data, message=message, **kwargs)


# --------------------------------------------------------------------------- recorded requests


@dataclass
class UploadedFile:
    """One multipart file part (``files[n]``) with its raw bytes."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """One REST call as seen by the fake (server or harness).

    ``path`` has the ``/api/v10`` prefix stripped, e.g. ``/channels/1/messages``.
    ``json`` is the JSON body, or the parsed ``payload_json`` of a multipart body.
    """

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: list[UploadedFile] = field(default_factory=list)
    form: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    response: Any = None
    route: Route | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def matches(self, method: str | None = None, path_regex: str | None = None) -> bool:
        """``method`` is case-insensitive; ``path_regex`` must match the whole path."""
        if method is not None and self.method.upper() != method.upper():
            return False
        return path_regex is None or re.fullmatch(path_regex, self.path) is not None


# --------------------------------------------------------------------------- fake REST backend


@dataclass
class RestReply:
    """Status, JSON-able body (``None`` means empty) and extra headers of a fake REST answer."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Override:
    method: str
    pattern: re.Pattern[str]
    reply: Callable[[RecordedRequest], RestReply]
    times: int | None


Handler = Callable[[RecordedRequest, re.Match[str]], RestReply]


class FakeRestBackend:
    """Stateful canned answers for the REST routes discord.py uses.

    Why shared: the socket server and the in-process harness must answer identically,
    so tests written against one behave the same against the other. Unknown routes
    answer ``200 {}`` (``204`` for DELETE). Use ``respond_with`` to override a route.
    """

    def __init__(
        self,
        *,
        bot_user: Payload | None = None,
        application_id: int | None = None,
        guilds: Sequence[Payload] = (),
        gateway_url: str = "ws://127.0.0.1:1/",
        cdn_base: str = "https://cdn.fake.invalid",
    ) -> None:
        self.bot_user: Payload = bot_user or bot_user_payload()
        self.application_id: int = application_id or int(self.bot_user["id"])
        self.gateway_url = gateway_url
        self.cdn_base = cdn_base.rstrip("/")
        self.guilds: dict[int, Payload] = {}
        self.users: dict[int, Payload] = {int(self.bot_user["id"]): self.bot_user}
        self.channels: dict[int, Payload] = {}
        self.messages: dict[int, Payload] = {}
        self.interactions: dict[str, Payload] = {}  # token -> INTERACTION_CREATE payload
        self.originals: dict[str, Payload] = {}  # token -> original response message
        self.commands: dict[int | None, list[Payload]] = {}  # guild id (None=global) -> commands
        self.cdn: dict[str, bytes] = {}
        self._dms: dict[int, Payload] = {}
        self._overrides: list[_Override] = []
        for guild in guilds:
            self.add_guild(guild)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        r = self._route
        r("GET", r"/gateway(/bot)?", self._gateway)
        r("GET", r"/users/@me", lambda q, m: RestReply(200, self.bot_user))
        r("PATCH", r"/users/@me", self._edit_me)
        r("GET", r"/users/(?P<uid>\d+)", self._get_user)
        r("GET", r"/(oauth2/)?applications/@me", lambda q, m: RestReply(200, self.app_info()))
        r("POST", r"/users/@me/channels", self._create_dm)
        r("GET", r"/channels/(?P<cid>\d+)", self._get_channel)
        r("POST", r"/channels/(?P<cid>\d+)/messages", self._create_message)
        r("GET", r"/channels/(?P<cid>\d+)/messages", self._history)
        r("GET", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", self._get_message)
        r("PATCH", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", self._edit_message)
        r("DELETE", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", self._delete_message)
        r("POST", r"/channels/(?P<cid>\d+)/typing", lambda q, m: RestReply(204))
        r("PUT", r"/channels/\d+/messages/\d+/reactions/.+", lambda q, m: RestReply(204))
        r("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", self._interaction_callback)
        r("POST", r"/webhooks/(?P<wid>\d+)/(?P<token>[^/]+)", self._execute_webhook)
        r(
            "GET",
            r"/webhooks/(?P<wid>\d+)/(?P<token>[^/]+)/messages/(?P<mid>\d+|@original)",
            self._webhook_get,
        )
        r(
            "PATCH",
            r"/webhooks/(?P<wid>\d+)/(?P<token>[^/]+)/messages/(?P<mid>\d+|@original)",
            self._webhook_edit,
        )
        cmds = r"/applications/(?P<app>\d+)(/guilds/(?P<gid>\d+))?/commands"
        r("PUT", cmds, self._put_commands)
        r("GET", cmds, self._get_commands)
        r("POST", cmds, self._post_command)
        r("GET", r"/guilds/(?P<gid>\d+)", self._get_guild)
        r("GET", r"/guilds/(?P<gid>\d+)/channels", self._get_guild_channels)
        r("GET", r"/guilds/(?P<gid>\d+)/members/(?P<uid>\d+)", self._get_member)

    # -- configuration -------------------------------------------------------

    def add_guild(self, guild: Payload) -> None:
        """Register a guild so its channels, members and users resolve in REST answers."""
        gid = int(guild["id"])
        self.guilds[gid] = guild
        for channel in guild.get("channels", []):
            self.channels[int(channel["id"])] = {**channel, "guild_id": str(gid)}
        for member in guild.get("members", []):
            self.users.setdefault(int(member["user"]["id"]), member["user"])

    def add_cdn_file(self, name: str, data: bytes) -> str:
        """Serve ``data`` at a CDN URL (for ``Attachment.read()``); returns the URL."""
        url = f"{self.cdn_base}/attachments/{snowflake()}/{name}"
        self.cdn[url] = data
        return url

    def register_interaction(self, payload: Payload) -> None:
        """Remember an interaction so callbacks/followups land in its channel."""
        self.interactions[payload["token"]] = payload

    def respond_with(
        self,
        method: str,
        path_regex: str,
        body: Any = None,
        status: int = 200,
        *,
        times: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Override a route. ``body`` may be a callable ``(RecordedRequest) -> body``."""

        def reply(req: RecordedRequest) -> RestReply:
            value = body(req) if callable(body) else body
            return RestReply(status, value, dict(headers or {}))

        self.add_override(method, path_regex, reply, times=times)

    def add_override(
        self,
        method: str,
        path_regex: str,
        reply: Callable[[RecordedRequest], RestReply],
        *,
        times: int | None = None,
    ) -> None:
        """Lowest-level override hook; newest overrides win."""
        self._overrides.insert(0, _Override(method.upper(), re.compile(path_regex), reply, times))

    def app_info(self) -> Payload:
        """``GET /oauth2/applications/@me`` answer."""
        return {
            "id": str(self.application_id),
            "name": self.bot_user["username"],
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.users.get(OWNER_ID, user_payload(OWNER_ID, "owner")),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED
            "summary": "",
            "bot": self.bot_user,
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
        }

    # -- dispatch ------------------------------------------------------------

    def handle(self, req: RecordedRequest) -> RestReply:
        """Answer a recorded request (fills ``req.status``/``req.response``)."""
        reply = self._answer(req)
        req.status, req.response = reply.status, reply.body
        return reply

    def _answer(self, req: RecordedRequest) -> RestReply:
        method = req.method.upper()
        for ov in list(self._overrides):
            if ov.method == method and ov.pattern.fullmatch(req.path):
                if ov.times is not None:
                    ov.times -= 1
                    if ov.times <= 0:
                        self._overrides.remove(ov)
                return ov.reply(req)
        for m, pattern, handler in self._routes:
            if m == method:
                match = pattern.fullmatch(req.path)
                if match:
                    return handler(req, match)
        return RestReply(204) if method == "DELETE" else RestReply(200, {})

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    # -- handlers ------------------------------------------------------------

    def _gateway(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        body: Payload = {"url": self.gateway_url}
        if m.group(1):
            body.update(
                shards=1,
                session_start_limit={"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
            )
        return RestReply(200, body)

    def _edit_me(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        self.bot_user.update({k: v for k, v in (req.json or {}).items() if k in ("username", "avatar")})
        return RestReply(200, self.bot_user)

    def _get_user(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        uid = int(m["uid"])
        return RestReply(200, self.users.get(uid) or user_payload(uid, f"user{uid}"))

    def _create_dm(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        rid = int((req.json or {})["recipient_id"])
        if rid not in self._dms:
            dm = dm_channel_payload(snowflake(), self.users.get(rid) or user_payload(rid, f"user{rid}"))
            self._dms[rid] = dm
            self.channels[int(dm["id"])] = dm
        return RestReply(200, self._dms[rid])

    def _get_channel(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        channel = self.channels.get(int(m["cid"]))
        return RestReply(200, channel) if channel else _not_found("Unknown Channel", 10003)

    def _attachments(self, body: Payload, files: Sequence[UploadedFile]) -> list[Payload]:
        out = []
        for index, upload in enumerate(files):
            name = upload.filename or f"file{index}"
            url = self.add_cdn_file(name, upload.data)
            out.append(attachment_payload(filename=name, size=len(upload.data), content_type=None, url=url))
        return out

    def new_message(
        self,
        channel_id: int,
        body: Payload | None,
        *,
        files: Sequence[UploadedFile] = (),
        webhook_id: int | None = None,
        author: Payload | None = None,
    ) -> Payload:
        """Build and store the message Discord would create from a send body."""
        body = body or {}
        ref = body.get("message_reference")
        referenced = self.messages.get(int(ref["message_id"])) if ref and ref.get("message_id") else None
        msg = message_payload(
            channel_id=channel_id,
            author=author or self.bot_user,
            content=body.get("content") or "",
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            attachments=self._attachments(body, files),
            sticker_items=[sticker_item_payload(int(s)) for s in body.get("sticker_ids") or []],
            flags=int(body.get("flags") or 0),
            tts=bool(body.get("tts")),
            nonce=body.get("nonce"),
            webhook_id=webhook_id,
            application_id=webhook_id,
            message_reference=ref,
            referenced_message=referenced,
        )
        if "allowed_mentions" in body:
            msg["allowed_mentions"] = body["allowed_mentions"]  # echoed for convenience; not in real API
        self.messages[int(msg["id"])] = msg
        return msg

    def _create_message(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        return RestReply(200, self.new_message(int(m["cid"]), req.json, files=req.files))

    def _history(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        cid = m["cid"]
        limit = int(req.query.get("limit", 50))
        msgs = [msg for msg in self.messages.values() if msg["channel_id"] == cid]
        msgs.sort(key=lambda msg: int(msg["id"]), reverse=True)
        return RestReply(200, msgs[:limit])

    def _get_message(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        msg = self.messages.get(int(m["mid"]))
        return RestReply(200, msg) if msg else _not_found("Unknown Message", 10008)

    def _apply_edit(self, msg: Payload, body: Payload | None, files: Sequence[UploadedFile]) -> Payload:
        body = body or {}
        for key in ("content", "embeds", "components", "flags", "allowed_mentions"):
            if key in body:
                msg[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if files:
            msg["attachments"] = list(msg.get("attachments", [])) + self._attachments(body, files)
        msg["edited_timestamp"] = snowflake_time(snowflake())
        return msg

    def _edit_message(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        mid = int(m["mid"])
        msg = self.messages.get(mid) or message_payload(mid, int(m["cid"]), self.bot_user)
        self.messages[mid] = self._apply_edit(msg, req.json, req.files)
        return RestReply(200, msg)

    def _delete_message(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        self.messages.pop(int(m["mid"]), None)
        return RestReply(204)

    def _interaction_channel(self, token: str) -> int:
        inter = self.interactions.get(token)
        if inter is None:
            return 0
        return int(inter.get("channel_id") or inter.get("channel", {}).get("id", 0))

    def _interaction_callback(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        body = req.json or {}
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        token, inter = m["token"], self.interactions.get(m["token"], {})
        info: Payload = {"id": m["iid"], "type": int(inter.get("type", 2))}
        resource: Payload = {"type": kind}
        if kind in (4, 5):  # CHANNEL_MESSAGE_WITH_SOURCE / DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            flags = int(data.get("flags") or 0) | (LOADING if kind == 5 else 0)
            msg = self.new_message(
                self._interaction_channel(token),
                {**data, "flags": flags},
                files=req.files,
                webhook_id=self.application_id,
            )
            self.originals[token] = msg
            info.update(
                response_message_id=msg["id"],
                response_message_loading=kind == 5,
                response_message_ephemeral=bool(flags & EPHEMERAL),
            )
            resource["message"] = msg
        elif kind == 7 and inter.get("message"):  # UPDATE_MESSAGE on the component's message
            mid = int(inter["message"]["id"])
            msg = self.messages.setdefault(mid, dict(inter["message"]))
            resource["message"] = self._apply_edit(msg, data, req.files)
            info["response_message_id"] = str(mid)
        return RestReply(200, {"interaction": info, "resource": resource})

    def _execute_webhook(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        msg = self.new_message(
            self._interaction_channel(m["token"]), req.json, files=req.files, webhook_id=int(m["wid"])
        )
        wait = req.query.get("wait", "0").lower() in ("1", "true")
        return RestReply(200, msg) if wait else RestReply(204)

    def _webhook_message(self, m: re.Match[str]) -> Payload | None:
        if m["mid"] == "@original":
            return self.originals.get(m["token"])
        return self.messages.get(int(m["mid"]))

    def _webhook_get(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        msg = self._webhook_message(m)
        return RestReply(200, msg) if msg else _not_found("Unknown Message", 10008)

    def _webhook_edit(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        msg = self._webhook_message(m)
        if msg is None:  # editing an original that was never sent (e.g. after defer elsewhere)
            msg = self.new_message(self._interaction_channel(m["token"]), {}, webhook_id=int(m["wid"]))
            if m["mid"] == "@original":
                self.originals[m["token"]] = msg
        body = dict(req.json or {})
        if m["mid"] == "@original":  # editing a deferred response clears the loading flag
            msg["flags"] = int(msg.get("flags", 0)) & ~LOADING
        return RestReply(200, self._apply_edit(msg, body, req.files))

    def _command(self, cmd: Payload, gid: int | None, old: Mapping[tuple[str, int], Payload]) -> Payload:
        ctype = int(cmd.get("type", 1))
        previous = old.get((cmd["name"], ctype))
        out: Payload = {
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            **cmd,
            "id": previous["id"] if previous else str(snowflake()),
            "application_id": str(self.application_id),
            "version": str(snowflake()),
            "type": ctype,
        }
        if gid is not None:
            out["guild_id"] = str(gid)
        return out

    def _put_commands(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        gid = int(m["gid"]) if m["gid"] else None
        old = {(c["name"], int(c.get("type", 1))): c for c in self.commands.get(gid, [])}
        self.commands[gid] = [self._command(c, gid, old) for c in req.json or []]
        return RestReply(200, self.commands[gid])

    def _get_commands(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        return RestReply(200, self.commands.get(int(m["gid"]) if m["gid"] else None, []))

    def _post_command(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        gid = int(m["gid"]) if m["gid"] else None
        current = self.commands.setdefault(gid, [])
        old = {(c["name"], int(c.get("type", 1))): c for c in current}
        cmd = self._command(req.json or {}, gid, old)
        current[:] = [c for c in current if (c["name"], int(c.get("type", 1))) != (cmd["name"], cmd["type"])]
        current.append(cmd)
        return RestReply(200, cmd)

    def _get_guild(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        guild = self.guilds.get(int(m["gid"]))
        return RestReply(200, guild) if guild else _not_found("Unknown Guild", 10004)

    def _get_guild_channels(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        guild = self.guilds.get(int(m["gid"]))
        return RestReply(200, guild["channels"]) if guild else _not_found("Unknown Guild", 10004)

    def _get_member(self, req: RecordedRequest, m: re.Match[str]) -> RestReply:
        guild = self.guilds.get(int(m["gid"])) or {}
        for member in guild.get("members", []):
            if member["user"]["id"] == m["uid"]:
                return RestReply(200, member)
        return _not_found("Unknown Member", 10007)


def _not_found(message: str, code: int) -> RestReply:
    return RestReply(404, {"message": message, "code": code})


# --------------------------------------------------------------------------- harness


class _FakeResponse:
    """Enough of ``aiohttp.ClientResponse`` for ``discord.HTTPException``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}.get(
            status, "Error"
        )


def _raise_for(reply: RestReply) -> None:
    if reply.status < 400:
        return
    resp: Any = _FakeResponse(reply.status)
    body = reply.body if reply.body is not None else ""
    if reply.status == 403:
        raise discord.Forbidden(resp, body)
    if reply.status == 404:
        raise discord.NotFound(resp, body)
    if reply.status >= 500:
        raise discord.DiscordServerError(resp, body)
    raise discord.HTTPException(resp, body)


_API_PREFIX = re.compile(r"^[a-z]+://[^/]+/api/v\d+")


def _read_part(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    pos = value.tell()
    data = value.read()
    value.seek(pos)
    return data


def _record_from_route(
    route: Route,
    *,
    json: Any,
    multipart: Iterable[Mapping[str, Any]] | None,
    params: Mapping[str, Any] | None,
) -> RecordedRequest:
    """Normalise discord.py's request arguments into a ``RecordedRequest``."""
    req = RecordedRequest(method=route.method, path=_API_PREFIX.sub("", route.url), route=route)
    req.path = req.path.split("?", 1)[0]
    req.query = {k: str(v) for k, v in (params or {}).items()}
    req.json = json
    for part in multipart or ():
        if part.get("filename") is not None or not isinstance(part.get("value"), str):
            req.files.append(
                UploadedFile(
                    part["name"], part.get("filename"), part.get("content_type"), _read_part(part["value"])
                )
            )
        elif part["name"] == "payload_json":
            req.json = discord.utils._from_json(part["value"])
        else:
            req.form[part["name"]] = part["value"]
    return req


class _FakeSession:
    """Stands in for the aiohttp session; interactions capture it to send responses.

    The patched ``AsyncWebhookAdapter.request`` recognises it and routes to its harness.
    """

    closed = False

    def __init__(self, harness: DiscordHarness) -> None:
        self.harness = harness

    async def close(self) -> None:
        self.closed = True


class RecordingHTTPClient(HTTPClient):
    """``HTTPClient`` whose ``request`` records and answers from a ``FakeRestBackend``.

    Everything above ``request`` (route building, JSON/multipart assembly, model
    parsing) is the real discord.py code, so recorded bodies are what Discord would get.
    """

    def __init__(self, loop: Any, harness: DiscordHarness) -> None:
        super().__init__(loop)
        self.harness = harness
        self._HTTPClient__session = _FakeSession(harness)  # read by Interaction/Webhook

    async def static_login(self, token: str) -> Any:
        self.token = token
        self._global_over = asyncio.Event()
        self._global_over.set()
        return await self.request(Route("GET", "/users/@me"))

    async def request(self, route: Route, *, files: Any = None, form: Any = None, **kwargs: Any) -> Any:
        req = _record_from_route(route, json=kwargs.get("json"), multipart=form, params=kwargs.get("params"))
        req.kwargs = dict(kwargs)
        if kwargs.get("reason"):
            req.headers["X-Audit-Log-Reason"] = kwargs["reason"]
        return self.harness._serve(req)

    async def get_from_cdn(self, url: str) -> bytes:
        self.harness.http_calls.append(RecordedRequest("GET", url, status=200))
        try:
            return self.harness.backend.cdn[url]
        except KeyError:
            _raise_for(RestReply(404, "asset not found"))
            raise

    async def ws_connect(self, url: str, *, compress: int = 0) -> Any:
        raise RuntimeError("DiscordHarness has no gateway; use tests.fakes.discord_server for sockets")

    async def close(self) -> None:
        pass


_original_webhook_request = AsyncWebhookAdapter.request
_webhook_patch_users = 0


async def _patched_webhook_request(
    self: AsyncWebhookAdapter, route: Route, session: Any, **kwargs: Any
) -> Any:
    if not isinstance(session, _FakeSession):
        return await _original_webhook_request(self, route, session, **kwargs)
    req = _record_from_route(
        route, json=kwargs.get("payload"), multipart=kwargs.get("multipart"), params=kwargs.get("params")
    )
    req.kwargs = dict(kwargs)
    return session.harness._serve(req)


def _install_webhook_patch() -> None:
    global _webhook_patch_users
    _webhook_patch_users += 1
    AsyncWebhookAdapter.request = _patched_webhook_request  # type: ignore[method-assign]


def _uninstall_webhook_patch() -> None:
    global _webhook_patch_users
    _webhook_patch_users = max(0, _webhook_patch_users - 1)
    if _webhook_patch_users == 0:
        AsyncWebhookAdapter.request = _original_webhook_request  # type: ignore[method-assign]


def default_intents() -> discord.Intents:
    """Default intents plus message content and members (what a chat bot asks for)."""
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    return intents


class DiscordHarness:
    """A real discord.py client wired to a recording fake HTTP layer, no sockets.

    Why: adapter tests need real ``Message``/``Interaction`` objects and real handler
    dispatch, but must be fast and deterministic.

    ``client`` may be any ``discord.Client`` subclass (e.g. the bot's ``commands.Bot``);
    it is created with ``default_intents()`` if omitted. ``start()`` runs the real
    ``login`` (``GET /users/@me``, app info, ``setup_hook``), caches ``guilds``
    (default: ``default_guild_payload()``) and fires ``on_ready``. Every REST call —
    including interaction callbacks and webhook followups — is appended to
    ``http_calls`` as a ``RecordedRequest`` and answered by ``backend``.
    """

    def __init__(
        self,
        client: discord.Client | None = None,
        *,
        intents: discord.Intents | None = None,
        bot_user: Payload | None = None,
        guilds: Sequence[Payload] | None = None,
        backend: FakeRestBackend | None = None,
        task_timeout: float = 5.0,
    ) -> None:
        self.bot_user = bot_user or bot_user_payload()
        self.guild_payloads = list(guilds) if guilds is not None else [default_guild_payload(self.bot_user)]
        self.backend = backend or FakeRestBackend(bot_user=self.bot_user, guilds=self.guild_payloads)
        self.client = client or discord.Client(intents=intents or default_intents())
        self.http_calls: list[RecordedRequest] = []
        self.task_timeout = task_timeout
        self.http = RecordingHTTPClient(self.client.http.loop, self)
        self.client.http = self.http
        self.client._connection.http = self.http
        # CommandTree caches client.http at construction (commands.Bot builds one in __init__)
        for tree in (getattr(self.client, "tree", None), self.state._command_tree):
            if isinstance(tree, app_commands.CommandTree):
                tree._http = self.http
        self._patched = False

    # -- lifecycle ----------------------------------------------------------

    @property
    def state(self) -> Any:
        """The client's ``ConnectionState`` (``client._connection``)."""
        return self.client._connection

    async def start(self, *, token: str = "fake-token", ready: bool = True) -> DiscordHarness:
        """Log in via the fake REST layer, cache guilds, optionally dispatch ``ready``."""
        if not self._patched:
            _install_webhook_patch()
            self._patched = True
        await self.client.login(token)
        for guild in self.guild_payloads:
            self.state._add_guild_from_data(guild)
        if ready:
            before = asyncio.all_tasks()
            self.client.dispatch("connect")
            self.state.call_handlers("ready")
            self.client.dispatch("ready")
            await self.drain(before)
        return self

    async def close(self) -> None:
        """Close the client (runs its ``close`` override) and undo the webhook patch."""
        try:
            if self.client.loop is not discord.utils.MISSING and not self.client.is_closed():
                await self.client.close()
        finally:
            if self._patched:
                _uninstall_webhook_patch()
                self._patched = False

    async def __aenter__(self) -> DiscordHarness:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lookups -------------------------------------------------------------

    @property
    def user(self) -> discord.ClientUser:
        """The bot's ``ClientUser``."""
        assert self.client.user is not None, "harness not started"
        return self.client.user

    def guild(self, guild_id: int = GUILD_ID) -> discord.Guild:
        """A cached guild (default: the stock guild)."""
        guild = self.client.get_guild(guild_id)
        assert guild is not None, f"guild {guild_id} not cached"
        return guild

    def channel(self, channel_id: int = CHANNEL_ID) -> Any:
        """A cached channel (default: ``#general`` of the stock guild)."""
        channel = self.client.get_channel(channel_id)
        assert channel is not None, f"channel {channel_id} not cached"
        return channel

    def calls(self, method: str | None = None, path_regex: str | None = None) -> list[RecordedRequest]:
        """Recorded REST calls, filtered (``path_regex`` must match the whole path)."""
        return [c for c in self.http_calls if c.matches(method, path_regex)]

    def interaction_callbacks(self) -> list[RecordedRequest]:
        """Recorded ``POST /interactions/{id}/{token}/callback`` calls."""
        return self.calls("POST", r"/interactions/\d+/[^/]+/callback")

    # -- building models ----------------------------------------------------------

    def message(self, payload: Payload | None = None, **kwargs: Any) -> discord.Message:
        """Build a ``discord.Message`` from a payload or ``message_payload`` kwargs.

        Defaults to a guild message by the stock user in ``#general``.
        """
        if payload is None:
            kwargs.setdefault("guild_id", GUILD_ID)
            payload = message_payload(**kwargs)
        channel, _ = self.state._get_guild_channel(payload)
        return discord.Message(state=self.state, channel=channel, data=payload)

    def interaction(self, payload: Payload) -> discord.Interaction:
        """Build a ``discord.Interaction`` (registered so callbacks land in its channel)."""
        self.backend.register_interaction(payload)
        return discord.Interaction(data=payload, state=self.state)

    # -- driving events -----------------------------------------------------

    async def dispatch(self, event: str, payload: Payload, *, wait: bool = True) -> None:
        """Feed a raw gateway dispatch (e.g. ``"MESSAGE_CREATE"``) to the real parser.

        With ``wait`` the handler tasks it spawns are run to completion.
        """
        if event == "INTERACTION_CREATE":
            self.backend.register_interaction(payload)
        before = asyncio.all_tasks()
        self.state.parsers[event](payload)
        if wait:
            await self.drain(before)

    async def dispatch_message(self, payload: Payload, *, wait: bool = True) -> discord.Message | None:
        """MESSAGE_CREATE: runs ``on_message`` (and command processing) to completion.

        Returns the cached ``Message`` the handlers saw (``None`` if ``max_messages=None``).
        """
        await self.dispatch("MESSAGE_CREATE", payload, wait=wait)
        return self.state._get_message(int(payload["id"]))

    async def dispatch_interaction(self, payload: Payload, *, wait: bool = True) -> None:
        """INTERACTION_CREATE through the real parser: reaches the tree, views and ``on_interaction``."""
        await self.dispatch("INTERACTION_CREATE", payload, wait=wait)

    async def invoke_command(
        self, tree: app_commands.CommandTree | None, payload: Payload, *, wait: bool = True
    ) -> discord.Interaction:
        """Run an app command like ``CommandTree._from_interaction`` does, but awaited.

        Errors reach ``tree.on_error`` / command error handlers exactly as in production.
        ``tree`` defaults to the client's tree.
        """
        tree = tree or getattr(self.client, "tree", None) or self.state._command_tree
        assert tree is not None, "no CommandTree"
        interaction = self.interaction(payload)
        before = asyncio.all_tasks()
        try:
            await tree._call(interaction)
        except app_commands.AppCommandError as exc:
            await tree._dispatch_error(interaction, exc)
        if wait:
            await self.drain(before)
        return interaction

    async def press_button(self, custom_id: str, *, wait: bool = True, **kwargs: Any) -> Payload:
        """Dispatch a button-press interaction (``component_interaction_payload`` kwargs)."""
        payload = component_interaction_payload(custom_id, bot_user=self.bot_user, **kwargs)
        await self.dispatch_interaction(payload, wait=wait)
        return payload

    async def drain(self, before: set[asyncio.Task[Any]] | None = None) -> None:
        """Wait until tasks created since ``before`` finish (at most ``task_timeout`` s).

        Why: discord.py runs every handler in its own task; tests must not race them.
        ``discord.ext.tasks`` loops are ignored. Raises ``TimeoutError`` naming stragglers.
        """
        before = before if before is not None else set()
        current = asyncio.current_task()
        deadline = asyncio.get_running_loop().time() + self.task_timeout
        await asyncio.sleep(0)
        while True:
            pending = {
                t
                for t in asyncio.all_tasks()
                if t not in before and t is not current and not t.get_name().startswith("discord-ext-tasks")
            }
            if not pending:
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                names = sorted(t.get_name() for t in pending)
                raise TimeoutError(f"handler tasks still running: {names}")
            await asyncio.wait(pending, timeout=remaining)

    # -- internals ------------------------------------------------------------

    def _serve(self, req: RecordedRequest) -> Any:
        self.http_calls.append(req)
        reply = self.backend.handle(req)
        _raise_for(reply)
        return reply.body
