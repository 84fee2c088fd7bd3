"""The inbox: platform updates the bot has received but not finished handling, kept in the database.

A platform that redelivers until told "received" (Telegram: the next getUpdates' offset, or the webhook's
HTTP 200) is told so only after the update is committed here, and the row is deleted once the update has
been handled. A crash in between leaves the row, and the next start hands it to the adapter again; a message
that was already stored is recognised by its platform message id and not stored twice. So a message the
platform was told we had is never lost, and never kept twice.

Rows hold raw update JSON for seconds; forgetting a person deletes theirs too (memory/privacy.py).
"""

from __future__ import annotations

import time

from memory.store import Store


async def keep(store: Store, platform: str, update_id: int, user_id: str | None, payload: str,
               now: float | None = None) -> None:
    async with store.write() as db:
        await db.execute(
            "INSERT INTO inbox(platform, update_id, user_id, payload, received) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(platform, update_id) DO NOTHING",
            (platform, update_id, user_id, payload, time.time() if now is None else now),
        )


async def done(store: Store, platform: str, update_id: int) -> None:
    async with store.write() as db:
        await db.execute("DELETE FROM inbox WHERE platform = ? AND update_id = ?", (platform, update_id))


async def pending(store: Store, platform: str) -> list[tuple[int, str]]:
    """Updates left unhandled by an earlier run, oldest first."""
    rows = await store.fetchall(
        "SELECT update_id, payload FROM inbox WHERE platform = ? ORDER BY update_id", (platform,)
    )
    return [(int(r[0]), str(r[1])) for r in rows]
