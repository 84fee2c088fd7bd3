"""The inbox: platform updates the bot has received but not finished handling, kept in the database.

A platform that redelivers until told "received" (Telegram: the next getUpdates' offset, or the webhook's
HTTP 200) is told so only after the update is committed here, and the row is deleted once the update has
been handled. A crash in between leaves the row, and the next start hands it to the adapter again; a message
that was already stored is recognised by its platform message id and not stored twice. So a message the
platform was told we had is never lost, and never kept twice.

Rows hold raw update JSON for seconds; forgetting a person deletes theirs too (memory/privacy.py).

Each row names the process that received it (`owner`, as the job leases do). With several processes on one
PostgreSQL database, a process that starts replays only the rows of processes that are gone (on this
machine: their pid no longer runs; on another: kept over STALE_AFTER ago), never the updates a live process
is handling: that would answer them twice. An update the platform sends again (its first receiver never
said "received") belongs to the process that received it last, which handles it now. On SQLite only one bot
process runs, so every row left is a dead run's.
"""

from __future__ import annotations

import time

from memory.jobqueue import dead_here
from memory.store import Store

# An update kept this long ago by a process on another machine is taken as lost with it (a live process
# answers within a minute or two): the next process to start replays it.
STALE_AFTER = 600.0


async def keep(store: Store, platform: str, update_id: int, user_id: str | None, payload: str,
               now: float | None = None, *, owner: str | None = None) -> None:
    async with store.write() as db:
        await db.execute(
            "INSERT INTO inbox(platform, update_id, user_id, payload, received, owner) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(platform, update_id) DO UPDATE SET owner = excluded.owner",
            (platform, update_id, user_id, payload, time.time() if now is None else now, owner),
        )


async def done(store: Store, platform: str, update_id: int) -> None:
    async with store.write() as db:
        await db.execute("DELETE FROM inbox WHERE platform = ? AND update_id = ?", (platform, update_id))


async def pending(store: Store, platform: str, owner: str | None = None) -> list[tuple[int, str]]:
    """Updates left unhandled by an earlier run (no owner, or one that is gone), oldest first, now `owner`'s:
    two processes starting together take each row once."""
    rows = await store.fetchall(
        "SELECT update_id, payload, owner, received FROM inbox WHERE platform = ? ORDER BY update_id", (platform,)
    )
    mine: list[tuple[int, str]] = []
    for update_id, payload, was, received in rows:
        if (store.shared and was is not None and was != owner and not dead_here(str(was))
                and received > time.time() - STALE_AFTER):
            continue  # a live process's update, in its hands now
        async with store.write() as db:
            cur = await db.execute(
                "UPDATE inbox SET owner = ? WHERE platform = ? AND update_id = ? AND COALESCE(owner, '') = ?",
                (owner, platform, update_id, was or ""),
            )
            if cur.rowcount:
                mine.append((int(update_id), str(payload)))
    return mine
