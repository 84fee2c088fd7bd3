"""Sessions: one person's conversation with the bot in one chat, closed after a quiet spell.

Closing a session and queueing its session-memory job happen in one transaction, so a crash can never
leave a closed session that no job will summarise. A user's message is committed before any model call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from memory.jobqueue import JobKind, enqueue, requeue_expired
from memory.store import Store, Tx, inserted

Clock = Callable[[], float]
PRIVATE_KINDS = frozenset({"dm", "console"})


def _key(value: str) -> str:
    """A platform id as stored: a lone surrogate (SQLite cannot store one) becomes U+FFFD, valid pairs rejoin."""
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


@dataclass(frozen=True)
class Recorded:
    """Where a stored user message landed. `duplicate` is set when the platform re-delivered it."""

    user_pk: int
    chat_pk: int
    session_id: int
    message_id: int
    private: bool
    duplicate: bool = False
    new_session: bool = False


async def _upsert_user(db: Tx, platform: str, user_id: str, name: str, now: float) -> int:
    await db.execute(
        "INSERT INTO users(platform, platform_user_id, display_name, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(platform, platform_user_id) DO UPDATE SET display_name = "
        "CASE WHEN excluded.display_name != '' THEN excluded.display_name ELSE users.display_name END",
        (platform, user_id, name, now),
    )
    async with db.execute(
        "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?", (platform, user_id)
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _upsert_chat(
    db: Tx, platform: str, chat_id: str, kind: str, title: str, now: float, server: str | None
) -> int:
    await db.execute(
        "INSERT INTO chats(platform, platform_chat_id, kind, title, created, server) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(platform, platform_chat_id) DO UPDATE SET title = excluded.title, "
        "server = COALESCE(excluded.server, chats.server)",
        (platform, chat_id, kind, title, now, server),
    )
    async with db.execute(
        "SELECT id FROM chats WHERE platform = ? AND platform_chat_id = ?", (platform, chat_id)
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def close_session_tx(db: Tx, session_id: int, user_pk: int, now: float, reason: str,
                           *, idle_before: float | None = None) -> bool:
    """Close and queue the session-memory job, inside the caller's transaction (which holds the person's
    lock). `idle_before`: only if the session is still quiet since then (another process may have stored a
    message in it since the caller looked). False when it was not open (or no longer quiet)."""
    cur = await db.execute(
        "UPDATE sessions SET state = 'closed', closed = ?, close_reason = ? WHERE id = ? AND state = 'open'"
        + ("" if idle_before is None else " AND last_activity < ?"),
        (now, reason, session_id) + (() if idle_before is None else (idle_before,)),
    )
    if not cur.rowcount:
        return False
    await enqueue(db, JobKind.SESSION_MEMORY, str(session_id), user_pk, now)
    return True


class SessionManager:
    """Stores messages into sessions and closes sessions; every method is one transaction."""

    def __init__(self, store: Store, *, inactivity_timeout: float = 1800.0, clock: Clock = time.time) -> None:
        self.store = store
        self.timeout = inactivity_timeout
        self.clock = clock

    async def record_user_message(
        self,
        *,
        platform: str,
        user_id: str,
        display_name: str,
        chat_id: str,
        chat_kind: str,
        text: str,
        chat_title: str = "",
        platform_message_id: str | None = None,
        when: float | None = None,
        server_id: str | None = None,
    ) -> Recorded:
        now = self.clock() if when is None else when
        user_id, chat_id = _key(user_id), _key(chat_id)
        platform_message_id = None if platform_message_id is None else _key(platform_message_id)
        async with self.store.write() as db:
            user_pk = await _upsert_user(db, platform, user_id, display_name, now)
            await db.lock_person(user_pk)  # one open session per person and chat, whichever process stores
            chat_pk = await _upsert_chat(db, platform, chat_id, chat_kind, chat_title, now, server_id)
            if platform_message_id is not None:
                async with db.execute(
                    "SELECT id, session_id FROM messages WHERE chat_id = ? AND author = 'user' "
                    "AND platform_message_id = ?",
                    (chat_pk, platform_message_id),
                ) as cur:
                    seen = await cur.fetchone()
                if seen is not None:
                    return Recorded(user_pk, chat_pk, int(seen[1]), int(seen[0]), chat_kind in PRIVATE_KINDS, True)
            session_id, new = await self._current_session(db, user_pk, chat_pk, chat_kind, now)
            message_id = await inserted(db,
                "INSERT INTO messages(session_id, user_id, chat_id, author, text, created, platform_message_id) "
                "VALUES (?, ?, ?, 'user', ?, ?, ?) RETURNING id",
                (session_id, user_pk, chat_pk, text, now, platform_message_id),
            )
            await db.execute("UPDATE sessions SET last_activity = ? WHERE id = ?", (now, session_id))
        return Recorded(user_pk, chat_pk, session_id, message_id, chat_kind in PRIVATE_KINDS, False, new)

    async def answered(self, recorded: Recorded) -> bool:
        """Whether this message has its reply. Replies name the message they answer (`reply_to`); for
        replies stored before they did, any bot message after it in the session counts, as it did then.
        A later message's reply does not: with several processes, another one may have answered it while
        this one's process died before replying."""
        row = await self.store.fetchone(
            "SELECT 1 FROM messages WHERE author = 'bot' AND (reply_to = ? OR (reply_to IS NULL "
            "AND session_id = ? AND id > ?)) LIMIT 1",
            (recorded.message_id, recorded.session_id, recorded.message_id),
        )
        return row is not None

    async def undelivered_reply(self, recorded: Recorded) -> tuple[int, str] | None:
        """The stored reply to this message that no platform confirmed sending (a process died between
        storing and sending it), as (id, text): a redelivery sends it then, rather than never."""
        row = await self.store.fetchone(
            "SELECT id, text FROM messages WHERE author = 'bot' AND reply_to = ? AND platform_message_id IS NULL "
            "ORDER BY id LIMIT 1", (recorded.message_id,))
        return None if row is None else (int(row[0]), str(row[1]))

    async def delivered(self, reply_id: int, platform_message_id: str) -> None:
        """The platform confirmed the reply (its message id): a redelivered message is not answered again."""
        async with self.store.write() as db:
            await db.execute(
                "UPDATE messages SET platform_message_id = ? WHERE id = ? AND author = 'bot' "
                "AND platform_message_id IS NULL", (_key(platform_message_id), reply_id))

    async def ensure_session(
        self, *, platform: str, user_id: str, display_name: str, chat_id: str, chat_kind: str,
        when: float | None = None,
    ) -> Recorded:
        """The person's open session in the chat, opened if needed, without storing a message.

        For replays where the bot spoke first (LoCoMo sessions may open with the other speaker).
        """
        now = self.clock() if when is None else when
        async with self.store.write() as db:
            user_pk = await _upsert_user(db, platform, user_id, display_name, now)
            await db.lock_person(user_pk)
            chat_pk = await _upsert_chat(db, platform, chat_id, chat_kind, "", now, None)
            session_id, new = await self._current_session(db, user_pk, chat_pk, chat_kind, now)
        return Recorded(user_pk, chat_pk, session_id, 0, chat_kind in PRIVATE_KINDS, False, new)

    async def _current_session(
        self, db: Tx, user_pk: int, chat_pk: int, chat_kind: str, now: float
    ) -> tuple[int, bool]:
        async with db.execute(
            "SELECT id, last_activity FROM sessions WHERE user_id = ? AND chat_id = ? AND state = 'open'",
            (user_pk, chat_pk),
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            if now - float(row[1]) <= self.timeout:
                return int(row[0]), False
            await close_session_tx(db, int(row[0]), user_pk, float(row[1]), "inactivity")
        session_id = await inserted(db,
            "INSERT INTO sessions(user_id, chat_id, private, started, last_activity) VALUES (?, ?, ?, ?, ?) "
            "RETURNING id",
            (user_pk, chat_pk, int(chat_kind in PRIVATE_KINDS), now, now),
        )
        return session_id, True

    async def record_bot_message(
        self, recorded: Recorded, text: str, *, platform_message_id: str | None = None, when: float | None = None
    ) -> int:
        now = self.clock() if when is None else when
        async with self.store.write() as db:
            async with db.execute("SELECT state FROM sessions WHERE id = ?", (recorded.session_id,)) as cur:
                row = await cur.fetchone()
            if row is None:  # forgotten while the reply was being generated: store nothing
                return 0
            message_id = await inserted(db,
                "INSERT INTO messages(session_id, user_id, chat_id, author, text, created, platform_message_id, "
                "reply_to) VALUES (?, ?, ?, 'bot', ?, ?, ?, ?) RETURNING id",
                (recorded.session_id, recorded.user_pk, recorded.chat_pk, text, now, platform_message_id,
                 recorded.message_id or None),
            )
            if row[0] == "open":
                await db.execute(
                    "UPDATE sessions SET last_activity = GREATEST(last_activity, CAST(? AS DOUBLE PRECISION)) "
                    "WHERE id = ?", (now, recorded.session_id))
            return message_id

    async def end_session(self, user_pk: int, chat_pk: int | None = None, *, reason: str = "ended") -> int:
        """Close the user's open session (in one chat, or everywhere); returns how many were closed."""
        now = self.clock()
        async with self.store.write() as db:
            await db.lock_person(user_pk)
            sql = "SELECT id FROM sessions WHERE user_id = ? AND state = 'open'"
            params: tuple[int, ...] = (user_pk,)
            if chat_pk is not None:
                sql += " AND chat_id = ?"
                params += (chat_pk,)
            async with db.execute(sql, params) as cur:
                rows = await cur.fetchall()
            for row in rows:
                await close_session_tx(db, int(row[0]), user_pk, now, reason)
        return len(rows)

    async def sweep(self, now: float | None = None) -> list[int]:
        """Close every open session idle past the timeout; each gets its session-memory job."""
        now = self.clock() if now is None else now
        closed: list[int] = []
        async with self.store.write() as db:
            async with db.execute(
                "SELECT id, user_id, last_activity FROM sessions WHERE state = 'open' AND last_activity < ? "
                "ORDER BY user_id, id",  # persons' locks in one order: two sweeps never deadlock
                (now - self.timeout,),
            ) as cur:
                rows = await cur.fetchall()
            for row in rows:
                await db.lock_person(int(row[1]))
                # The session ended when it went quiet, not when the sweep noticed.
                if await close_session_tx(db, int(row[0]), int(row[1]), float(row[2]), "inactivity",
                                          idle_before=now - self.timeout):
                    closed.append(int(row[0]))
        return closed

    async def recover(self) -> dict[str, int]:
        """At start-up: close sessions a crash left open and idle; requeue the jobs of processes that died
        (their leases expired; a live process's are left alone: memory/jobqueue.py)."""
        closed = await self.sweep()
        requeued = await requeue_expired(self.store, self.clock(), repair=True)
        return {"closed": len(closed), "requeued": requeued}

    async def unremembered(self, user_pk: int) -> tuple[int, int]:
        """(closed sessions still without their session memory, open sessions) of one person."""
        row = await self.store.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN s.state = 'closed' AND NOT EXISTS "
            "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id) THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN s.state = 'open' THEN 1 ELSE 0 END), 0) FROM sessions s WHERE s.user_id = ?",
            (user_pk,),
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def find_user(self, platform: str, user_id: str) -> int | None:
        value = await self.store.scalar(
            "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?", (platform, _key(str(user_id)))
        )
        return None if value is None else int(value)

    async def find_chat(self, platform: str, chat_id: str) -> int | None:
        value = await self.store.scalar(
            "SELECT id FROM chats WHERE platform = ? AND platform_chat_id = ?", (platform, _key(str(chat_id)))
        )
        return None if value is None else int(value)
