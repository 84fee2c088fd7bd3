"""Forget and export: everything stored about one person, and nothing about anyone else.

Forgetting deletes the user row; a trigger deletes their messages first (and through the FTS triggers
their index entries), then foreign keys cascade to sessions, session memories, compressive memories,
jobs and raw model outputs. `secure_delete` overwrites the freed bytes, the person's index key among
them: what FTS5 leaves of their postings until its next merge are hashes nothing can read any more
(memory/fts.py). The cost is the person's own data, never the whole index. The WAL is checkpointed
so the deleted bytes leave the log too.
"""

from __future__ import annotations

import json
from typing import Any

from memory.dates import to_datetime
from memory.jobqueue import delete_session_jobs, queue_compression
from memory.store import Store


async def forget_user(store: Store, user_pk: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with store.write() as db:
        for table in ("messages", "sessions", "session_memories", "compressive_memories", "jobs", "model_outputs"):
            async with db.execute(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (user_pk,)) as cur:
                row = await cur.fetchone()
            counts[table] = int(row[0]) if row else 0
        async with db.execute("SELECT platform, platform_user_id FROM users WHERE id = ?", (user_pk,)) as cur:
            user = await cur.fetchone()
        # A private chat belongs to the person (its id is often theirs, or holds their name on the console).
        async with db.execute(
            "SELECT DISTINCT s.chat_id FROM sessions s JOIN chats c ON c.id = s.chat_id "
            "WHERE s.user_id = ? AND c.kind IN ('dm', 'console')",
            (user_pk,),
        ) as cur:
            private_chats = [int(r[0]) for r in await cur.fetchall()]
        await db.execute("DELETE FROM users WHERE id = ?", (user_pk,))
        await db.executemany(
            "DELETE FROM chats WHERE id = ? AND NOT EXISTS (SELECT 1 FROM sessions WHERE chat_id = chats.id)",
            [(c,) for c in private_chats],
        )
        if user is not None:  # updates from them not handled yet (memory/inbox.py)
            await db.execute("DELETE FROM inbox WHERE platform = ? AND user_id = ?", (user[0], user[1]))
    # 1 when the deleted bytes have left the log too; 0 when a reader's snapshot kept the checkpoint from
    # finishing (it is finished at the next memory-job run).
    counts["erased"] = int(await store.checkpoint())
    return counts


async def forget_user_in_server(store: Store, user_pk: int, platform: str, server: str, now: float) -> dict[str, int]:
    """What one server's admins may delete: the person's sessions in that server's channels, with their
    messages (the bot's replies in them too), session memories, memory jobs and the raw outputs of those jobs.

    The compressive memory was written from all the person's sessions, the deleted ones among them: its
    versions are deleted too, and compression is queued again over the session memories that remain (from
    their DMs and other servers, which this does not touch), so the next memory job run recomposes it
    without anything said in the server.
    """
    counts = {"messages": 0, "sessions": 0}
    async with store.write() as db:
        async with db.execute(
            "SELECT s.id FROM sessions s JOIN chats c ON c.id = s.chat_id "
            "WHERE s.user_id = ? AND c.platform = ? AND c.server = ?",
            (user_pk, platform, server),
        ) as cur:
            sessions = [int(r[0]) for r in await cur.fetchall()]
        if not sessions:
            return counts
        marks = ",".join("?" * len(sessions))
        async with db.execute(f"SELECT COUNT(*) FROM messages WHERE session_id IN ({marks})", sessions) as cur:
            row = await cur.fetchone()
        counts = {"messages": int(row[0]) if row else 0, "sessions": len(sessions)}
        async with db.execute(
            f"SELECT COUNT(*) FROM session_memories WHERE session_id IN ({marks})", sessions
        ) as cur:
            row = await cur.fetchone()
        remembered = bool(row and row[0])
        await delete_session_jobs(db, user_pk, sessions)
        # Messages go through their own cascade (and the index's delete trigger); memories with the sessions.
        await db.execute(f"DELETE FROM sessions WHERE id IN ({marks})", sessions)
        if remembered:
            await db.execute("DELETE FROM compressive_memories WHERE user_id = ?", (user_pk,))
            await db.execute("DELETE FROM model_outputs WHERE user_id = ? AND task = 'compress'", (user_pk,))
            await db.execute(
                "UPDATE session_memories SET compressed_all = NULL, compressed_public = NULL WHERE user_id = ?",
                (user_pk,),
            )
            async with db.execute(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN private = 0 THEN 1 ELSE 0 END), 0) FROM session_memories WHERE user_id = ?",
                (user_pk,),
            ) as cur:
                left = await cur.fetchone()
            if left and left[0]:  # a run composing the old memory now saves nothing (memory/tasks.py)
                await queue_compression(db, user_pk, private=not left[1], now=now)
    counts["erased"] = int(await store.checkpoint())
    return counts


def _iso(ts: float) -> str:
    """A stored UTC time as ISO 8601 ("2023-05-08T13:56:00Z"), the form programs reading an export parse.

    Whole seconds, like the readable form people saw before; "Z" rather than "+00:00" because it is the form
    most tools expect (Python's datetime.fromisoformat reads both).
    """
    return to_datetime(ts).isoformat(timespec="seconds").replace("+00:00", "Z")


async def export_user(store: Store, user_pk: int) -> dict[str, Any]:
    """A JSON-ready document of one person's data; every query is keyed by that person's id.

    Every time in it is ISO 8601 UTC (see _iso), so the export can be read back by programs, not just people.
    """
    user = await store.fetchone(
        "SELECT platform, platform_user_id, display_name, created FROM users WHERE id = ?", (user_pk,)
    )
    if user is None:
        return {}
    sessions = await store.fetchall(
        "SELECT s.id, c.platform_chat_id, c.kind, s.started, s.last_activity, s.closed, s.state "
        "FROM sessions s JOIN chats c ON c.id = s.chat_id WHERE s.user_id = ? ORDER BY s.started",
        (user_pk,),
    )
    out_sessions = []
    for s in sessions:
        messages = await store.fetchall(
            "SELECT author, text, created FROM messages WHERE session_id = ? AND user_id = ? ORDER BY id",
            (s[0], user_pk),
        )
        memory = await store.fetchone(
            "SELECT facts, source, model, created FROM session_memories WHERE session_id = ? AND user_id = ?",
            (s[0], user_pk),
        )
        out_sessions.append({
            "id": s[0], "chat": s[1], "chat_kind": s[2], "started": _iso(s[3]),
            "last_activity": _iso(s[4]), "closed": _iso(s[5]) if s[5] else None,
            "state": s[6],
            "messages": [{"author": m[0], "text": m[1], "time": _iso(m[2])} for m in messages],
            "session_memory": None if memory is None else {
                "facts": json.loads(memory[0]), "source": memory[1], "model": memory[2],
            },
        })
    versions = await store.fetchall(
        "SELECT scope, version, profile, relationship, events, source_sessions, model, flagged, created "
        "FROM compressive_memories WHERE user_id = ? ORDER BY scope, version",
        (user_pk,),
    )
    outputs = await store.fetchall(
        "SELECT task, raw, reason, created FROM model_outputs WHERE user_id = ? ORDER BY id", (user_pk,)
    )
    return {
        "user": {"platform": user[0], "id": user[1], "display_name": user[2], "first_seen": _iso(user[3])},
        "sessions": out_sessions,
        "compressive_memory": [
            {"scope": v[0], "version": v[1], "profile": v[2], "relationship": v[3], "events": v[4],
             "source_sessions": json.loads(v[5]), "model": v[6], "flagged": bool(v[7]),
             "created": _iso(v[8])}
            for v in versions
        ],
        # Model outputs about the person that could not be used (kept raw for inspection and retries).
        "flagged_model_outputs": [
            {"task": o[0], "raw": o[1], "reason": o[2], "created": _iso(o[3])} for o in outputs
        ],
    }
