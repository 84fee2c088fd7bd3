"""`membot db copy`: a SQLite database moved whole into an empty PostgreSQL one, then compared.

The path from one machine to several (docs/deployment.md): stop the bot, copy, point `[storage] url` at
PostgreSQL, start as many processes as needed. Every row keeps its id (so jobs' keys, which name sessions,
still hold) and every person keeps their full-text key (PostgreSQL's trigger indexes their messages with
it). Rows go in with COPY, the fastest way into PostgreSQL; then the counts of every table and a checksum
of every message (id, session, person, author, text, time) are compared, and any difference is an error.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.postgres_schema import TABLES
from memory.postgres_store import PostgresStore
from memory.store import StoreError

BATCH = 5000
_CHECKSUM_SQL = "SELECT id, session_id, user_id, author, text, created FROM messages ORDER BY id"


@dataclass
class CopyReport:
    counts: dict[str, int] = field(default_factory=dict)
    checksum: str = ""

    def summary(self) -> str:
        rows = ", ".join(f"{n} {t}" for t, n in self.counts.items() if n)
        return f"{rows or 'nothing'}; messages' checksum {self.checksum[:16]} matches"


def _digest(rows: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(repr((int(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]), float(r[5]))).encode())
    return h.hexdigest()


def _batches(conn: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
    order = " ORDER BY id" if "id" in columns else ""
    cur = conn.execute(f"SELECT {', '.join(columns)} FROM {table}{order}")
    while batch := cur.fetchmany(BATCH):
        yield [tuple(r) for r in batch]


async def copy_sqlite_to_postgres(source: Path, target: PostgresStore) -> CopyReport:
    """Copy every table of `source` into `target`, which must hold no memory yet; raises StoreError on any
    difference found afterwards. `source` is opened read-only (the caller holds its RunLock)."""
    if await target.scalar("SELECT COUNT(*) FROM users") or await target.scalar("SELECT COUNT(*) FROM chats"):
        raise StoreError("the PostgreSQL database already holds a memory; copy into an empty database")
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    report = CopyReport()
    try:
        async with target.pool.acquire() as pg, pg.transaction():
            for table in TABLES:
                wanted = [r[0] for r in await pg.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
                    "AND table_schema = current_schema() ORDER BY ordinal_position", table)]
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                columns = [c for c in wanted if c in have]  # messages.terms is PostgreSQL's, made by its trigger
                copied = 0
                for batch in _batches(conn, table, columns):
                    await pg.copy_records_to_table(table, records=batch, columns=columns)
                    copied += len(batch)
                report.counts[table] = copied
                if "id" in columns:  # new rows continue after the copied ids
                    await pg.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")
            for table in TABLES:
                there = int(await pg.fetchval(f"SELECT COUNT(*) FROM {table}"))
                here = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                if there != here:
                    raise StoreError(f"copy check failed: {table} has {here} rows in SQLite, {there} in PostgreSQL")
            here_sum = _digest(conn.execute(_CHECKSUM_SQL))
            there_sum = _digest(await pg.fetch(_CHECKSUM_SQL))
            if here_sum != there_sum:
                raise StoreError("copy check failed: the messages differ between SQLite and PostgreSQL")
            report.checksum = here_sum
    finally:
        conn.close()
    return report
