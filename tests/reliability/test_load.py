"""Load: 200 people × 20 messages at once through the dispatcher (fake model), memory jobs running meanwhile.

Nothing is lost, nothing is doubled, each person's turns stay in the order they were sent (each person's 20
messages are all in flight at once), no "database is locked", and the store latency is reported (p50/p99/max
of committing a user message, waiting for the single writer included; and, for comparison, of one person
alone) — printed, never asserted: timings depend on the machine. `python tests/reliability/test_load.py [USERS] [MESSAGES]` prints the figures as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.config import load_settings
from bot.incoming import IncomingMessage
from memory.fts import register as register_fts
from models.fake import FakeBackend

USERS = 200
MESSAGES = 20


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(db: Path, users: int = USERS, messages: int = MESSAGES, *, seed: int = 8) -> dict[str, Any]:
    settings = load_settings(None, overrides={"storage.path": str(db), "model.backend": "fake",
                                              "model.max_batch": 64})
    app = await App.create(settings, backend=FakeBackend())
    await app.start(schedule=False)
    rng = random.Random(seed)
    latencies: list[float] = []
    record = app.sessions.record_user_message

    async def timed(**kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await record(**kwargs)
        finally:
            latencies.append(time.perf_counter() - started)

    app.sessions.record_user_message = timed  # type: ignore[method-assign]

    def message(user: int, i: int) -> IncomingMessage:
        kind = "group" if user % 10 == 0 else "dm"  # some people talk in a shared group
        chat = "group-1" if kind == "group" else f"dm-{user}"
        return IncomingMessage(platform="telegram", user_id=f"u{user}", display_name=f"User {user}", chat_id=chat,
                               chat_kind=kind, text=f"user {user} message {i}: I like item {rng.randint(1, 9999)}",
                               message_id=f"{user}-{i}")

    async def person(user: int) -> list[Any]:
        # All of a person's messages are in flight together, as when a platform delivers a burst.
        tasks = [asyncio.ensure_future(app.dispatcher.handle(message(user, i))) for i in range(messages)]
        return list(await asyncio.gather(*tasks))

    stop = asyncio.Event()
    job_runs = 0

    async def memory_jobs() -> None:  # sessions end and memories are written while the load goes on
        nonlocal job_runs
        while not stop.is_set():
            for user in rng.sample(range(users), min(5, users)):
                await app.dispatcher.end_session("telegram", f"u{user}")
            await app.jobs.run_due()
            job_runs += 1
            await asyncio.sleep(0.05)

    try:
        # Baseline: one person alone, message after message (no queue for the writer).
        for i in range(100):
            await app.dispatcher.handle(IncomingMessage(
                platform="telegram", user_id="alone", display_name="Alone", chat_id="dm-alone", chat_kind="dm",
                text=f"quiet message {i}"))
        quiet, latencies[:] = list(latencies), []
        started = time.perf_counter()
        jobs = asyncio.ensure_future(memory_jobs())
        replies = await asyncio.gather(*(person(u) for u in range(users)))
        elapsed = time.perf_counter() - started
        stop.set()
        await jobs
        return {
            "replies": replies,
            "users": users,
            "messages_per_user": messages,
            "elapsed_s": round(elapsed, 2),
            "messages_per_s": round(users * messages / elapsed, 1),
            "store_latency_ms": {"p50": round(_percentile(latencies, 0.5) * 1000, 1),
                                 "p99": round(_percentile(latencies, 0.99) * 1000, 1),
                                 "max": round(max(latencies) * 1000, 1)},
            "store_latency_alone_ms": {"p50": round(_percentile(quiet, 0.5) * 1000, 1),
                                       "p99": round(_percentile(quiet, 0.99) * 1000, 1)},
            "stored_user_messages": len(latencies),
            "memory_job_runs": job_runs,
            "session_memories": await app.store.scalar("SELECT COUNT(*) FROM session_memories"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                       f"SQLite {sqlite3.sqlite_version}",
        }
    finally:
        await app.close()


@pytest.mark.parametrize("users,messages", [(USERS, MESSAGES)])
async def test_200_people_20_messages_each_nothing_lost_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, users: int, messages: int
) -> None:
    caplog.set_level(logging.WARNING)
    db = tmp_path / "load.sqlite3"
    result = await run_load(db, users, messages)
    replies = result.pop("replies")
    print("\nload:", json.dumps(result))

    assert all(r.kind == "reply" for person in replies for r in person), "every message got a reply"
    assert "database is locked" not in caplog.text.lower()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    with sqlite3.connect(db) as conn:
        register_fts(conn)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        rows = conn.execute(
            "SELECT u.platform_user_id, m.author, m.text FROM messages m JOIN users u ON u.id = m.user_id "
            "ORDER BY m.id"
        ).fetchall()
    per_person: dict[str, list[tuple[str, str]]] = {}
    for user, author, text in rows:
        per_person.setdefault(user, []).append((author, text))
    per_person.pop("alone")
    assert len(per_person) == users
    for user in range(users):
        turns = per_person[f"u{user}"]
        assert len(turns) == 2 * messages, f"u{user}: {len(turns)} turns"  # nothing lost, nothing doubled
        for i in range(messages):
            (a1, t1), (a2, t2) = turns[2 * i], turns[2 * i + 1]
            # The person's messages in the order sent, each followed by its own reply.
            assert a1 == "user" and t1.startswith(f"user {user} message {i}:"), (user, i, t1)
            assert a2 == "bot" and t2 == "echo: " + t1, (user, i, t2)


async def test_reads_see_the_latest_commit_while_other_reads_run(tmp_path: Path) -> None:
    """Each read is one step on the reader connection, so it never shares a stale snapshot with reads that
    other coroutines have in flight (under load a reply prompt missed the message just stored)."""
    from memory.store import Store

    store = await Store.open(tmp_path / "reads.sqlite3")
    try:
        await store.set_kv("x", "0")
        stop = asyncio.Event()

        async def other_reads() -> None:
            while not stop.is_set():
                await store.fetchall("SELECT * FROM kv")
                await store.fetchone("SELECT value FROM kv WHERE key = 'x'")

        readers = [asyncio.ensure_future(other_reads()) for _ in range(20)]
        stale = 0
        for i in range(1, 201):
            await store.set_kv("x", str(i))
            stale += await store.get_kv("x") != str(i)
        stop.set()
        await asyncio.gather(*readers)
        assert stale == 0
    finally:
        await store.close()


if __name__ == "__main__":  # the figures for docs/reliability.md
    import tempfile

    args = [int(a) for a in sys.argv[1:3]]
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(run_load(Path(tmp) / "load.sqlite3", *args))
    out.pop("replies")
    print(json.dumps(out, indent=2))
