"""The storage boundary: what every repository in memory/ may ask of a database, whichever it is.

Two backends implement it, one thin module each: SQLite (memory/sqlite_store.py), the embedded default
that needs nothing, and PostgreSQL (memory/postgres_store.py), for several processes or machines on one
memory. The repositories (sessions, jobqueue, tasks, privacy, channels, inbox, retention, stats, context)
write one SQL text for both, in the subset the two share: `?` placeholders, `ON CONFLICT`, `RETURNING`,
`GREATEST`, `CAST(? AS DOUBLE PRECISION)`, `CASE` rather than summed booleans. What cannot be shared
(the full-text index, locks, file checks) is a method of the store or of its transaction.

Why not SQLAlchemy Core: the ~130 statements are plain enough to share as text, and what differs (FTS5
against tsvector, BEGIN IMMEDIATE against advisory locks, PRAGMAs) would still be written per backend; a
query builder would add a layer without removing either half.

Modelled on python-telegram-bot's BaseRequest: the shared methods are final here and each backend fills
in the few abstract ones.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol


class StoreError(Exception):
    """A storage failure a user can be told about in one sentence (disk full, read-only file...)."""


class Forgotten(Exception):
    """A write about a person or session deleted while the model worked (a foreign key no longer holds).
    Both backends raise this for their own driver's foreign-key error, so a job can drop its result."""


class Row(Protocol):
    """A result row: by position and by column name (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> Any: ...


class Tx(Protocol):
    """One write transaction (`async with store.write() as tx`)."""

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Awaited, the result gives `rowcount`; as `async with tx.execute(...) as cur`, the rows
        (`await cur.fetchone()`, `await cur.fetchall()`)."""

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None: ...

    async def lock_person(self, user_pk: int) -> None:
        """Until the transaction ends, no other process changes this person's sessions (SQLite: its single
        writer already ensures it; PostgreSQL: a transaction-scoped advisory lock)."""

    @property
    def skip_locked(self) -> str:
        """Appended to a job-claiming SELECT: PostgreSQL's `FOR UPDATE SKIP LOCKED`; nothing on SQLite."""
        ...


async def inserted(db: Tx, sql: str, params: Iterable[Any]) -> int:
    """The id of the row an `INSERT ... RETURNING id` made (PostgreSQL's results have no `lastrowid`)."""
    async with db.execute(sql, params) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


class Store(abc.ABC):
    """Owns the connections. Use `async with store.write() as tx:` for a transaction; reads go through
    `fetchall`, `fetchone` and `scalar` (each one statement, seeing everything committed before it)."""

    # Whether several bot processes may use this database at once (PostgreSQL). SQLite: one (RunLock).
    shared: bool = False

    @staticmethod
    def at(target: str | Path, *, password: str | None = None) -> Store:
        """The store for a SQLite file path or a `postgresql://` URL (its password given apart, never in the
        URL's text that config files and logs show), not yet connected (`async with Store.at(...)`)."""
        if is_postgres(target):
            from memory.postgres_store import PostgresStore

            return PostgresStore(str(target), password=password)
        from memory.sqlite_store import SQLiteStore

        return SQLiteStore(target)

    @staticmethod
    async def open(target: str | Path, *, password: str | None = None) -> Store:
        store = Store.at(target, password=password)
        await store.connect()
        return store

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connections and bring the schema up to date (once, whoever else is starting)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Store:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    def write(self) -> AbstractAsyncContextManager[Tx]:
        """One write transaction; commits on success, rolls back on any error (the caller sees it)."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...

    # `LIMIT ?` given this means no limit (SQLite: -1; PostgreSQL: NULL).
    no_limit: Any = None

    @abc.abstractmethod
    async def _hits(self, user_pk: int, words: list[str]) -> tuple[str, list[Any]] | None:
        """The backend's full-text part of `search`: a `hits(id, score)` common table expression ending in
        `LIMIT ?`, and the parameters before that limit; None when nothing can match."""

    async def search(self, user_pk: int, words: list[str], filters: str, params: list[Any],
                     top: int, limit: int) -> list[Row]:
        """Rows (id, session_id, author, text, created, score) of the person's messages matching any of
        `words`, best first (lower score is better), `filters` (on `m` messages and `s` sessions) applied;
        the index is ranked first and only its best `top` joined, unless fewer than `limit` remain."""
        hits = await self._hits(user_pk, words)
        if hits is None:
            return []
        cte, first = hits
        sql = (
            f"WITH {cte} SELECT m.id, m.session_id, m.author, m.text, m.created, hits.score FROM hits "
            "JOIN messages m ON m.id = hits.id JOIN sessions s ON s.id = m.session_id "
            f"WHERE {filters} ORDER BY hits.score, m.id LIMIT ?"
        )
        rows = await self.fetchall(sql, [*first, top, *params, limit])
        if len(rows) < limit:
            rows = await self.fetchall(sql, [*first, self.no_limit, *params, limit])
        return rows

    @abc.abstractmethod
    async def checkpoint(self, *, tries: int = 5, pause: float = 0.2) -> bool:
        """After a forget: make deleted bytes leave the database's files where the backend can. True when done."""

    async def optimize_search(self) -> None:
        """After a large delete (retention): let the full-text index reclaim space. Nothing by default."""
        return None

    @abc.abstractmethod
    async def integrity_ok(self) -> bool: ...

    @abc.abstractmethod
    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Yields True to one process at a time for `name` (the scheduler's sweep and job runs), False to
        the others meanwhile, which skip their turn rather than repeat the work."""

    def turn(self, key: str) -> AbstractAsyncContextManager[None]:
        """Held while one person's message in one chat is answered (`key` names the person and chat), so that
        their next message, whichever process it reaches, is answered after this one, with this reply in its
        context. One process owns a SQLite file, and the dispatcher's own lock orders its turns: nothing to do
        here; the PostgreSQL store waits on an advisory lock."""
        return contextlib.nullcontext()

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def get_kv(self, key: str) -> str | None:
        return await self.scalar("SELECT value FROM kv WHERE key = ?", (key,))

    async def set_kv(self, key: str, value: str) -> None:
        async with self.write() as db:
            await db.execute(
                "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def settle(self) -> None:
        """Finish what an earlier forget could not (the memory jobs call this on each run)."""
        return None

