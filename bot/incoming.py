"""The platform-free message and reply: adapters translate to and from these, nothing else crosses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ChatKind = Literal["dm", "group", "guild", "console"]


@dataclass(frozen=True)
class IncomingMessage:
    platform: str
    user_id: str
    display_name: str
    chat_id: str
    chat_kind: ChatKind
    text: str
    message_id: str | None = None
    chat_title: str = ""
    is_admin: bool = False
    time: float | None = None
    # The server (Discord guild) the chat is in; None for DMs and platforms without servers.
    server_id: str | None = None


@dataclass
class Reply:
    """What the bot says back. `kind` tells adapters how to present it (e.g. refusals privately)."""

    text: str
    kind: Literal["reply", "command", "apology", "refusal", "notice", "none"] = "reply"
    document: bytes | None = None
    filename: str | None = None
    confirm: str | None = None  # an action the adapter asks the person to confirm (e.g. "forget")
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def silent(self) -> bool:
        return self.kind == "none"
