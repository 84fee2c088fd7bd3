"""Per-chat settings an admin controls, platform-free: where the bot talks without being addressed, and
which server a chat belongs to (what a server's admins may act on).

`chats.always_reply` (migration 2) marks a group or server channel where the bot answers every message,
not only those that mention it or reply to it. A chat row may not exist yet when an admin enables a
channel nobody has talked in, so enabling creates it.
"""

from __future__ import annotations

import time

from memory.store import Store


async def set_always_reply(
    store: Store, platform: str, chat_id: str, enabled: bool, *, kind: str = "guild", title: str = "",
    now: float | None = None,
) -> None:
    """Turn answering every message in one chat on or off (creating the chat row when needed)."""
    async with store.write() as db:
        await db.execute(
            "INSERT INTO chats(platform, platform_chat_id, kind, title, created, always_reply) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(platform, platform_chat_id) DO UPDATE SET always_reply = excluded.always_reply, "
            "title = CASE WHEN excluded.title != '' THEN excluded.title ELSE chats.title END",
            (platform, str(chat_id), kind, title, time.time() if now is None else now, int(enabled)),
        )


async def place_in_server(store: Store, platform: str, server: str, chat_ids: list[str]) -> int:
    """Record the server of server chats stored before chats knew it (migration 6); returns how many."""
    placed = 0
    for start in range(0, len(chat_ids), 500):  # SQLite's limit on bound parameters
        part = chat_ids[start:start + 500]
        async with store.write() as db:
            cur = await db.execute(
                f"UPDATE chats SET server = ? WHERE platform = ? AND kind = 'guild' AND server IS NULL "
                f"AND platform_chat_id IN ({','.join('?' * len(part))})",
                (server, platform, *part),
            )
            placed += max(cur.rowcount, 0)
    return placed


async def always_reply_chats(store: Store, platform: str) -> set[str]:
    """The platform chat ids where the bot answers every message."""
    rows = await store.fetchall(
        "SELECT platform_chat_id FROM chats WHERE platform = ? AND always_reply = 1", (platform,)
    )
    return {str(row[0]) for row in rows}


async def is_always_reply(store: Store, platform: str, chat_id: str) -> bool:
    value = await store.scalar(
        "SELECT always_reply FROM chats WHERE platform = ? AND platform_chat_id = ?", (platform, str(chat_id))
    )
    return bool(value)
