"""The counts `/stats` and `/admin stats` show: the whole bot's for its operator, one server's for that
server's admins (who must not learn what people say elsewhere, not even how much)."""

from __future__ import annotations

from dataclasses import dataclass

from memory.jobqueue import queued_count
from memory.store import Store


@dataclass(frozen=True)
class BotCounts:
    users: int
    open_sessions: int
    messages: int
    queued_jobs: int
    flagged_outputs: int
    memory_versions: int


@dataclass(frozen=True)
class ServerCounts:
    people: int  # who talked with the bot in the server
    open_sessions: int
    messages: int  # theirs and the bot's, in the server's channels
    remembered_sessions: int  # the server's conversations with a written session memory
    waiting_sessions: int  # closed, memory not written yet


async def bot_counts(store: Store) -> BotCounts:
    q = store.scalar
    return BotCounts(
        users=int(await q("SELECT COUNT(*) FROM users") or 0),
        open_sessions=int(await q("SELECT COUNT(*) FROM sessions WHERE state = 'open'") or 0),
        messages=int(await q("SELECT COUNT(*) FROM messages") or 0),
        queued_jobs=await queued_count(store),
        flagged_outputs=int(await q("SELECT COUNT(*) FROM model_outputs WHERE flagged = 1") or 0),
        memory_versions=int(await q("SELECT COUNT(*) FROM compressive_memories") or 0),
    )


async def server_counts(store: Store, platform: str, server: str) -> ServerCounts:
    row = await store.fetchone(
        "SELECT COUNT(DISTINCT s.user_id), "
        "COALESCE(SUM(CASE WHEN s.state = 'open' THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM session_memories m WHERE m.session_id = s.id) "
        "THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN s.state = 'closed' AND NOT EXISTS "
        "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id) THEN 1 ELSE 0 END), 0) "
        "FROM sessions s JOIN chats c ON c.id = s.chat_id WHERE c.platform = ? AND c.server = ?",
        (platform, server),
    )
    messages = await store.scalar(
        "SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id WHERE c.platform = ? AND c.server = ?",
        (platform, server),
    )
    people, open_sessions, remembered, waiting = (int(v or 0) for v in row) if row else (0, 0, 0, 0)
    return ServerCounts(people, open_sessions, int(messages or 0), remembered, waiting)
