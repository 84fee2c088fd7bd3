"""The store: migrations from an old file, concurrent writers, pragmas, clear errors."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from memory.schema import MIGRATIONS, SCHEMA_VERSION
from memory.sessions import SessionManager
from memory.sqlite_store import SQLiteStore as Store
from memory.store import StoreError


def _make_v1_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO users(platform, platform_user_id, display_name, created) VALUES ('console', 'old', 'Old', 1)"
    )
    conn.execute(
        "INSERT INTO chats(platform, platform_chat_id, kind, title, created) VALUES ('console', 'c', 'console', '', 1)"
    )
    conn.commit()
    conn.close()


async def test_migrates_an_old_database_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    _make_v1_database(path)
    async with Store(path) as store:
        assert await store.scalar("PRAGMA user_version") == SCHEMA_VERSION
        assert await store.scalar("SELECT display_name FROM users WHERE platform_user_id = 'old'") == "Old"
        # Migration 2's column exists with its default on the old row.
        assert await store.scalar("SELECT always_reply FROM chats") == 0
    # Re-opening applies nothing twice.
    async with Store(path) as store:
        assert await store.scalar("PRAGMA user_version") == SCHEMA_VERSION


async def test_pragmas(tmp_path: Path) -> None:
    async with Store(tmp_path / "db.sqlite3") as store:
        assert await store.scalar("PRAGMA journal_mode") == "wal"
        assert await store.scalar("PRAGMA foreign_keys") == 1
        assert await store.scalar("PRAGMA busy_timeout") == 10000
        assert await store.integrity_ok()


async def test_refuses_a_database_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer membot"):
        await Store.open(path)


async def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Many tasks through one store plus a second store on the same file, writing at once."""
    path = tmp_path / "db.sqlite3"
    a, b = await Store.open(path), await Store.open(path)
    try:
        sa, sb = SessionManager(a), SessionManager(b)

        async def user(manager: SessionManager, name: str) -> None:
            for i in range(20):
                await manager.record_user_message(
                    platform="console", user_id=name, display_name=name, chat_id=name, chat_kind="console",
                    text=f"{name} message {i}",
                )

        await asyncio.gather(*(user(sa if n % 2 else sb, f"u{n}") for n in range(30)))
        assert await a.scalar("SELECT COUNT(*) FROM messages") == 600
        rows = await a.fetchall("SELECT text FROM messages WHERE user_id = (SELECT id FROM users WHERE platform_user_id='u3') ORDER BY id")
        assert [r[0] for r in rows] == [f"u3 message {i}" for i in range(20)]
    finally:
        await a.close()
        await b.close()


async def test_a_failed_transaction_rolls_back(tmp_path: Path) -> None:
    async with Store(tmp_path / "db.sqlite3") as store:
        with pytest.raises(RuntimeError):
            async with store.write() as db:
                await db.execute("INSERT INTO kv(key, value) VALUES ('a', 'b')")
                raise RuntimeError("boom")
        assert await store.get_kv("a") is None
        await store.set_kv("a", "c")
        assert await store.get_kv("a") == "c"
