"""The SQLite backend of the storage boundary (memory/store.py): one file, WAL, one writer connection
behind a lock, a separate reader.

SQLite allows one writer at a time; funnelling every write through one connection and an asyncio lock
(with BEGIN IMMEDIATE so the write lock is taken up front) means "database is locked" cannot happen
inside the process, and the reader connection never waits on a writer thanks to WAL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from memory.fts import keyed_query, register_async
from memory.schema import MIGRATIONS, SCHEMA_VERSION
from memory.store import Forgotten, Row, Store, StoreError

log = logging.getLogger(__name__)


BUSY_TIMEOUT_MS = 10_000
MIGRATION_WAIT_MS = 600_000  # another process's migration may rebuild the index: minutes at 1M messages


async def _configure(conn: aiosqlite.Connection) -> None:
    conn.row_factory = sqlite3.Row
    await register_async(conn)  # the full-text index's triggers call it
    await conn.create_function("GREATEST", -1, _greatest, deterministic=True)
    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: a concurrent start may hold the lock
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA secure_delete=ON")


def _greatest(*values: Any) -> Any:
    """PostgreSQL's GREATEST (NULLs ignored), so the repositories' SQL is one text for both backends."""
    return max((v for v in values if v is not None), default=None)


class SQLiteTx:
    """A write transaction on the writer connection: the repositories' `tx`."""

    skip_locked = ""  # one writer at a time: a claimed row cannot be claimed by another meanwhile

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self.conn.execute(sql, tuple(params))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        await self.conn.executemany(sql, [tuple(r) for r in rows])

    async def lock_person(self, user_pk: int) -> None:
        """BEGIN IMMEDIATE took the database's write lock: nobody else writes until this commits."""


def _private_folder(folder: Path) -> None:
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask


def _private_file(path: Path) -> None:
    """The database holds private conversations: its folder, if membot makes it, is 0700 and the file 0600,
    whatever the umask. SQLite gives the -wal and -shm files the database file's permissions. A folder that
    already exists is left as its owner set it (it may be shared, e.g. /srv).

    An existing file of 0 bytes is refused, never taken for a new database: that would silently replace a
    person's whole memory with nothing (a truncated copy, a failed restore)."""
    _private_folder(path.parent)
    if not path.exists():
        _create(path)
    if path.stat().st_size == 0 and not Path(f"{path}-wal").exists():
        raise StoreError(f"database {path} is empty (0 bytes), not a membot database; restore a backup "
                         "(`membot db backup` makes one), or move the file away to start with no memory")
    os.chmod(path, 0o600)


def _new_private_file(path: Path) -> None:
    """Create `path` empty, readable by its owner only whatever the umask; refuse if it exists."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def _create(path: Path) -> None:
    """A new database appears whole: made beside it with its header written (SQLite writes one only at the
    first write, so a crash, or a second process starting at the same moment, would find 0 bytes), then
    linked into place; if another process linked theirs first, theirs is used."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    _new_private_file(tmp)
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA user_version = 0")
            conn.execute("VACUUM")
        finally:
            conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def statements(script: str) -> list[str]:
    """A migration script as single statements (one transaction can then hold them all, which executescript's
    own COMMIT would end). Split at line ends where SQLite's tokenizer says a statement is complete, so a
    trigger's body, with its own semicolons, stays whole."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"a migration ends with an incomplete statement: {pending.strip()[:80]}")
    return out


class RunLock:
    """`membot run` holds this for its whole life: one file has one writer process, and two bots answering
    the same people from one file would each think the other's sessions are theirs. A lock file beside the
    database, `flock`ed (released by the kernel when the process ends, even by SIGKILL). `membot memory`
    and `membot jobs run` do not take it: they are safe beside a running bot (job leases)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.path = Path(f"{db_path}.run-lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        _private_folder(self.path.parent)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"another `membot run` (pid {holder}) is using the database {self.db_path}; stop it "
                "first. Several bot processes need PostgreSQL"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _damaged(path: Path, detail: str) -> StoreError:
    detail = " ".join(detail.replace("*** in database main ***", "").split())  # one line
    return StoreError(f"database {path} is damaged: {detail}; restore a backup or run `membot db check`")


def check_file(path: Path) -> list[str]:
    """Every problem SQLite finds in the file (full integrity check, and the full-text index's own check);
    an empty list when it is sound. Used by `membot db check`; changes nothing."""
    if not path.exists():
        return [f"{path} does not exist"]
    if path.stat().st_size == 0:
        return [f"{path} is empty (0 bytes)"]
    problems: list[str] = []
    try:  # read-write: the full-text index's check is issued as an INSERT command (it changes nothing)
        conn = sqlite3.connect(path)
    except sqlite3.Error as exc:
        return [str(exc)]
    try:
        from memory.fts import register

        register(conn)
        problems += [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        try:
            conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.Error as exc:
            problems.append(f"full-text index: {exc}")
    except sqlite3.Error as exc:
        problems.append(str(exc))
    finally:
        conn.close()
    return problems


def backup_file(path: Path, out: Path) -> int:
    """A consistent copy of the database made with SQLite's online backup API (safe while the bot runs),
    readable by its owner only; returns its size in pages."""
    if out.exists():
        raise StoreError(f"{out} exists already; choose a new file for the backup")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        _new_private_file(out)
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)
            return int(dst.execute("PRAGMA page_count").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()


class SQLiteStore(Store):
    """One file. Use `async with store.write() as tx:` for a transaction."""


    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.checkpoint_owed = False  # a forget's checkpoint that a reader's snapshot blocked

    async def connect(self) -> None:
        if str(self.path) != ":memory:":
            _private_file(self.path)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._check()
            await _configure(self._writer)
            await self._migrate()
        except BaseException:
            await self._writer.close()
            self._writer = None
            raise
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await _configure(self._reader)

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> SQLiteStore:
        if self._writer is None:
            await self.connect()
        return self

    async def _check(self) -> None:
        """A quick check at start (`PRAGMA quick_check`: every page readable and well formed, without the
        slower index-content comparison), so a damaged file stops membot with one clear line instead of
        apologies on every reply later."""
        assert self._writer is not None
        if str(self.path) == ":memory:":
            return
        # A process starting at the same moment may hold the lock (migrating): wait for it, as every
        # connection does, rather than take "database is locked" for damage.
        await self._writer.execute(f"PRAGMA busy_timeout={MIGRATION_WAIT_MS}")
        try:
            async with self._writer.execute("PRAGMA quick_check(1)") as cur:
                row = await cur.fetchone()
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            raise _damaged(self.path, str(exc)) from None
        if row is None or row[0] != "ok":
            raise _damaged(self.path, str(row[0]) if row else "no answer to quick_check")

    async def _migrate(self) -> None:
        """Bring the schema up to date inside one write transaction, the version read under its lock: two
        processes starting on a new or newly upgraded file (before: "table users already exists" in 5 of 15
        tries) run the migrations once, the second waiting for the first and then finding nothing to do."""
        db = self.writer
        await db.execute(f"PRAGMA busy_timeout={MIGRATION_WAIT_MS}")
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                async with db.execute("PRAGMA user_version") as cur:
                    row = await cur.fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise StoreError(f"{self.path} was written by a newer membot (schema {current} > "
                                     f"{SCHEMA_VERSION}); upgrade membot")
                for number in range(current + 1, SCHEMA_VERSION + 1):
                    log.info("applying database migration %d", number)
                    for statement in statements(MIGRATIONS[number - 1]):
                        await db.execute(statement)
                    await db.execute(f"PRAGMA user_version = {number}")
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        finally:
            await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("the store is closed")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is closed")
        return self._reader

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SQLiteTx]:  # type: ignore[override]
        """One write transaction; commits on success, rolls back on any error (the caller sees it)."""
        async with self._lock:
            db = self.writer
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _translate(exc) from exc
            try:
                yield SQLiteTx(db)
                await db.commit()
            except BaseException as exc:
                if db.in_transaction:
                    await db.rollback()
                if isinstance(exc, sqlite3.OperationalError):
                    raise _translate(exc) from exc
                if isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in str(exc):
                    raise Forgotten(str(exc)) from exc
                raise

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:  # type: ignore[override]
        """One bot process per file (RunLock): its scheduler is the only one."""
        yield True

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        # One step on the reader's thread: execute, fetch, reset. Were a statement left open between steps
        # (execute, then fetch), every other read interleaved meanwhile would share its read transaction and
        # see the database as it was then: under load a reply could miss the message just committed.
        return list(await self.reader.execute_fetchall(sql, tuple(params)))

    no_limit = -1

    async def _hits(self, user_pk: int, words: list[str]) -> tuple[str, list[Any]] | None:
        """FTS5 over the person's keyed terms (memory/fts.py), ranked by bm25 inside the index."""
        key = await self.scalar("SELECT fts_key FROM users WHERE id = ?", (user_pk,))
        query = keyed_query(bytes(key), words) if key else None
        if query is None:
            return None
        return ("hits AS (SELECT rowid AS id, bm25(messages_fts) AS score FROM messages_fts "
                "WHERE messages_fts MATCH ? ORDER BY score LIMIT ?)", [query])

    async def optimize_search(self) -> None:
        """FTS5 merges its segments, so deleted postings leave the index."""
        async with self.write() as db:
            await db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('optimize')")

    async def checkpoint(self, *, tries: int = 5, pause: float = 0.2) -> bool:
        """Fold the WAL back into the main file and truncate it (after forget and retention, so deleted bytes
        leave the log). A reader holding an older snapshot makes SQLite answer `busy`: try again a few times;
        if it still cannot finish, say so (False) and owe it: `settle()` finishes it later."""
        for attempt in range(tries):
            async with self._lock:
                async with self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                    row = await cur.fetchone()
            if row is not None and int(row[0]) == 0:
                self.checkpoint_owed = False
                return True
            if attempt + 1 < tries:
                await asyncio.sleep(pause)
        self.checkpoint_owed = True
        return False

    async def settle(self) -> None:
        """Finish a checkpoint that an earlier forget could not (the memory jobs call this on each run)."""
        if self.checkpoint_owed and await self.checkpoint(tries=1):
            log.info("the deferred checkpoint is done: forgotten data has left the database's log")

    async def integrity_ok(self) -> bool:
        row = await self.fetchone("PRAGMA integrity_check")
        return row is not None and row[0] == "ok"


def _translate(exc: sqlite3.OperationalError) -> Exception:
    text = str(exc).lower()
    if "full" in text:
        return StoreError("the database disk is full")
    if "readonly" in text or "read-only" in text:
        return StoreError("the database file is read-only")
    return exc
