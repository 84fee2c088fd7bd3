"""Retention: raw messages older than `memory.retention_days` are deleted once their session is summarised.

Off by default (keep everything). When set, each memory-job run deletes the user and bot turns of sessions
that are closed, have their session memory, and ended more than N days ago, plus the raw model outputs kept
for inspection that are as old. Session memories and compressive memories stay: they are the summary the
messages were condensed into. A session whose memory is not written yet keeps its messages, whatever their
age, so retention never loses anything that was not summarised.

The FTS5 index follows through its delete trigger; after a purge the index is optimised (merged into one
segment, which drops the deleted entries instead of keeping them as tombstones next to the old terms) and
the WAL checkpointed, so with `secure_delete` the purged words leave the database files too.
"""

from __future__ import annotations

from memory.store import Store

DAY = 86_400.0


async def purge_expired(store: Store, retention_days: int | None, now: float) -> int:
    """Delete what retention allows; returns how many messages were deleted (0 when retention is off)."""
    if not retention_days:
        return 0
    cutoff = now - retention_days * DAY
    async with store.write() as db:
        cur = await db.execute(
            "DELETE FROM messages WHERE created < ? AND session_id IN ("
            "SELECT s.id FROM sessions s JOIN session_memories m ON m.session_id = s.id "
            "WHERE s.state = 'closed' AND COALESCE(s.closed, s.last_activity) < ?)",
            (cutoff, cutoff),
        )
        deleted = max(cur.rowcount, 0)
        await db.execute("DELETE FROM model_outputs WHERE created < ?", (cutoff,))
    if deleted:
        await store.optimize_search()
        await store.checkpoint()
    return deleted
