"""The PostgreSQL backend of the storage boundary (memory/store.py), with asyncpg.

For several `membot run` processes, on one machine or several, sharing one memory. What SQLite got from
having one writer, PostgreSQL gets from locks: the migrations run under an advisory lock (two processes
starting together never race), a person's sessions change under a transaction-scoped advisory lock on
that person (one open session per person and chat, whichever process stores the message), jobs are claimed
with `FOR UPDATE SKIP LOCKED` (two processes never take the same one) and the scheduler's idle-session
sweep goes to one process at a time (`exclusive`).

The repositories' SQL is the same text as SQLite's, `?` placeholders turned into `$1, $2...` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from memory.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from memory.store import Forgotten, Row, Store, StoreError

log = logging.getLogger(__name__)

# Advisory-lock keys: one namespace per use, in the high bits of the 64-bit key.
_MIGRATE_KEY = 0x6D656D626F74  # "membot"
_PERSON = 1 << 48
_EXCLUSIVE = 2 << 48
# Every statement membot runs is small. A full-text search's tsquery is unknown when it is planned, so the
# planner guessed 5,000 hits and started parallel workers for every search: on 2 cores that cost more than
# the search (bench/store.py --backend postgresql: heavy-user p95 53.9 ms at 1M messages with them).
SESSION_SETTINGS = {"max_parallel_workers_per_gather": "0", "jit": "off"}
_TURNS = 0x6D656D62  # "memb": the class of the two-key advisory locks on turns (a key space of its own)
TURN_WAIT = 300.0  # seconds a reply waits for the same person's previous one in another process
TURN_POLL = 0.02  # seconds between tries meanwhile


def _number(text: str, bits: int) -> int:
    """A number of `bits` bits for `text`, the same in every process (Python's hash() is not): advisory-lock
    keys for names."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> (64 - bits)


@functools.lru_cache(maxsize=2048)
def positional(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2...`; a `?` inside a quoted literal is left alone."""
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


_ROWS = re.compile(r"^\s*(SELECT|WITH)\b|\bRETURNING\b", re.IGNORECASE)


def _count(status: str) -> int:
    """Rows touched, from a command tag ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def where(url: str) -> str:
    """The server and database of a URL, for messages: never its user or password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}{f':{parts.port}' if parts.port else ''}{parts.path or ''}"


def _translate(exc: BaseException, url: str) -> BaseException:
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return Forgotten(str(exc))
    if isinstance(exc, asyncpg.DiskFullError):
        return StoreError("the database server's disk is full")
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return StoreError("the database server is read-only (a standby?)")
    if isinstance(exc, OSError | asyncpg.CannotConnectNowError | asyncpg.ConnectionDoesNotExistError
                  | asyncpg.InterfaceError):
        return StoreError(f"the database server {where(url)} cannot be reached")
    return exc


class _Result:
    """One statement on the transaction's connection: awaited, `rowcount`; in `async with`, its rows."""

    def __init__(self, conn: asyncpg.Connection, sql: str, params: Sequence[Any]) -> None:
        self.conn, self.sql, self.params = conn, sql, params
        self.rowcount = 0
        self._rows: list[Row] = []

    async def _run(self) -> _Result:
        if _ROWS.search(self.sql):
            self._rows = list(await self.conn.fetch(positional(self.sql), *self.params))
            self.rowcount = len(self._rows)
        else:
            self.rowcount = _count(await self.conn.execute(positional(self.sql), *self.params))
        return self

    def __await__(self) -> Any:
        return self._run().__await__()

    async def __aenter__(self) -> _Result:
        return await self._run()

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Row]:
        return self._rows


class PostgresTx:
    """A write transaction on one pooled connection."""

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Result:
        return _Result(self.conn, sql, tuple(params))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        batch = [tuple(r) for r in rows]
        if batch:
            await self.conn.executemany(positional(sql), batch)

    async def lock_person(self, user_pk: int) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", _PERSON + int(user_pk))


class PostgresStore(Store):
    """A connection pool on one PostgreSQL database. `url` holds no password: it is given apart (from the
    environment variable the config names), so the URL can be shown and logged."""

    shared = True

    def __init__(self, url: str, *, password: str | None = None, max_connections: int = 10) -> None:
        self.url = url
        self.password = password
        self.max_connections = max_connections
        self._pool: asyncpg.Pool | None = None
        self._turns: asyncpg.Connection | None = None
        self._turn_mutex = asyncio.Lock()  # one statement at a time on the turns' connection

    def __repr__(self) -> str:
        return f"PostgresStore({where(self.url)})"

    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, password=self.password, min_size=1, max_size=self.max_connections,
                server_settings=SESSION_SETTINGS,
            )
        except asyncpg.InvalidPasswordError:
            raise StoreError(f"the database server {where(self.url)} refused the password (storage.password_env)"
                             ) from None
        except asyncpg.InvalidCatalogNameError:
            raise StoreError(f"the database {where(self.url)} does not exist; create it (createdb)") from None
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            raise StoreError(f"the database server {where(self.url)} cannot be reached: {exc}") from None
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        """Under an advisory lock, in one transaction: a second process starting at the same moment waits,
        then finds the schema up to date."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_KEY)
            await conn.execute("CREATE TABLE IF NOT EXISTS membot_schema (version INTEGER NOT NULL)")
            current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM membot_schema"))
            if current > SCHEMA_VERSION:
                raise StoreError(f"{where(self.url)} was written by a newer membot (schema {current} > "
                                 f"{SCHEMA_VERSION}); upgrade membot")
            for number in range(current + 1, SCHEMA_VERSION + 1):
                log.info("applying PostgreSQL migration %d", number)
                await conn.execute(MIGRATIONS[number - 1])
                await conn.execute("INSERT INTO membot_schema(version) VALUES ($1)", number)

    async def close(self) -> None:
        if self._turns is not None:
            await self._turns.close()
            self._turns = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is closed")
        return self._pool

    @asynccontextmanager
    async def write(self) -> AsyncIterator[PostgresTx]:  # type: ignore[override]
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield PostgresTx(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _translate(exc, self.url) from exc

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        try:
            async with self.pool.acquire() as conn:
                return list(await conn.fetch(positional(sql), *params))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _translate(exc, self.url) from exc

    no_limit = None

    async def _hits(self, user_pk: int, words: list[str]) -> tuple[str, list[Any]] | None:
        """The person's keyed terms (memory/postgres_schema.py) through the GIN index, ranked by ts_rank."""
        # MATERIALIZED: inlined, the keyed query (a sha256 per word) was computed again for every matching row.
        return ("q AS MATERIALIZED (SELECT membot_query((SELECT fts_key FROM users WHERE id = ?), ?) AS q), "
                "hits AS (SELECT m.id, -ts_rank(m.terms, q.q) AS score FROM messages m, q WHERE m.terms @@ q.q "
                "ORDER BY score LIMIT ?)", [user_pk, " ".join(words)])

    async def checkpoint(self, *, tries: int = 5, pause: float = 0.2) -> bool:
        """Deleted rows are gone from every table at commit; the space they took is PostgreSQL's to reuse
        (autovacuum), and its WAL and backups are the operator's (docs/deployment.md). Nothing owed here."""
        return True

    async def integrity_ok(self) -> bool:
        version = await self.scalar("SELECT MAX(version) FROM membot_schema")
        return version == SCHEMA_VERSION

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:  # type: ignore[override]
        """A session-level advisory lock on (TURNS, hash of `key`), all of this process's held by one connection
        of their own: a turn lasts while the model writes, and holding a connection each would take one per
        person being answered (PostgreSQL allows 100 by default for everything) or starve the storage pool.
        So the lock is tried, not waited for, and tried again every `TURN_POLL` seconds while another
        process holds it (only when the same person writes to two processes at once). Waiting longer than
        `TURN_WAIT` (a stuck process elsewhere), or a failing server, answers out of order rather than not
        at all. A process that dies releases its turns with its connection."""
        objid = _number(key, 32) - (1 << 31)  # the second key of pg_advisory_lock(int, int) is a signed int
        loop = asyncio.get_running_loop()
        deadline, locked, holder = loop.time() + TURN_WAIT, False, None
        try:
            while True:
                async with self._turn_mutex:
                    holder = await self._turn_holder()
                    locked = bool(await holder.fetchval("SELECT pg_try_advisory_lock($1, $2)", _TURNS, objid))
                if locked or loop.time() > deadline:
                    break
                await asyncio.sleep(TURN_POLL)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("answering without waiting for this person's previous turn: %s", type(exc).__name__)
        if not locked and loop.time() > deadline:
            log.warning("answering without waiting for this person's previous turn: still held after %.0f s",
                        TURN_WAIT)
        try:
            yield
        finally:
            if locked and holder is not None:
                async with self._turn_mutex:
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                        await holder.execute("SELECT pg_advisory_unlock($1, $2)", _TURNS, objid)

    async def _turn_holder(self) -> asyncpg.Connection:
        """The connection holding this process's turns (a new one if the last was lost, and its locks with it)."""
        if self._turns is None or self._turns.is_closed():
            self._turns = await asyncpg.connect(self.url, password=self.password)
        return self._turns

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:  # type: ignore[override]
        """A session-level advisory lock, tried without waiting, held on its own connection meanwhile."""
        key = _EXCLUSIVE + _number(name, 40)
        async with self.pool.acquire() as conn:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            try:
                yield got
            finally:
                if got:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
