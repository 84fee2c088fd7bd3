"""Helpers for the Discord adapter tests: request filters and the mention-safety assertion."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.fakes.discord_payloads import BOT_ID, GUILD_ID, RecordedRequest, bot_user_payload, message_payload

MESSAGES = r"/channels/\d+/messages"
MESSAGE = r"/channels/\d+/messages/\d+"
CALLBACK = r"/interactions/\d+/[^/]+/callback"
WEBHOOK = r"/webhooks/\d+/[^/]+(/messages/(\d+|@original))?"


def sent_bodies(calls: Iterable[RecordedRequest]) -> list[dict[str, Any]]:
    """Bodies of every request that puts text on Discord: messages, edits, interaction answers, followups."""
    bodies = []
    for call in calls:
        body = call.json if isinstance(call.json, dict) else None
        if body is None:
            continue
        if call.matches("POST", MESSAGES) or call.matches("PATCH", MESSAGE) or call.matches(None, WEBHOOK):
            bodies.append(body)
        elif call.matches("POST", CALLBACK) and isinstance(body.get("data"), dict):
            bodies.append(body["data"])
    return bodies


def assert_no_pings(calls: Iterable[RecordedRequest]) -> int:
    """Every text the bot sent carried `allowed_mentions` that parse nothing and ping no one; returns how many."""
    checked = 0
    for body in sent_bodies(calls):
        if "content" not in body and "embeds" not in body:
            continue  # a deferred "thinking" answer or a deletion: nothing that could mention anyone
        allowed = body.get("allowed_mentions")
        assert allowed is not None, f"sent without allowed_mentions: {body}"
        assert allowed.get("parse") == [], body
        assert not allowed.get("users") and not allowed.get("roles") and not allowed.get("replied_user"), body
        checked += 1
    return checked


def mention(content: str, **kwargs: Any) -> dict[str, Any]:
    """A server message in #general that mentions the bot."""
    kwargs.setdefault("guild_id", GUILD_ID)
    return message_payload(content=f"<@{BOT_ID}> {content}", mentions=[bot_user_payload()], **kwargs)


def contents(calls: Iterable[RecordedRequest]) -> list[str]:
    return [body.get("content", "") for body in sent_bodies(calls)]
