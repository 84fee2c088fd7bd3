"""Forget: what one person's /forget costs at 1M stored messages, and what it makes everyone else wait.

    .venv/bin/python bench/forget.py                      # 1M messages, 2,000 people (build + measure)
    .venv/bin/python bench/forget.py --db /tmp/f.sqlite3  # build once and keep it; later runs skip the build
    .venv/bin/python bench/forget.py --quick              # a smoke test (20k messages, 100 people)

Why: forget used to rebuild the whole full-text index inside the write lock, so forgetting a person with 2
messages took seconds and stalled every other person's reply for as long. Forgetting should cost what that
person's data costs. The database is built fast (plain sqlite3, executemany, the FTS triggers indexing every
message) with chat-like text spread over many people in sessions of 20 turns, messages interleaved in time.
Then, on it: `memory.privacy.forget_user` of a person with 2 messages, of a typical person (the median
count) and of a heavy one (`--heavy`), each with another person's one-message write transaction started
right after the forget begins (its wait is reported); and the baseline, the old forget's cost: the FTS
'rebuild' in one write transaction, with the same concurrent write. With `--db`, the built file is kept as
it is and the measurements run on a copy of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import bot_message, emit, log, machine, rounded, user_message

SESSION_TURNS = 20
CHUNK = 50_000
META_KEY = "bench_forget"


def owners(messages: int, people: int, heavy: int, rng: random.Random) -> list[int]:
    """Whose each user+bot turn pair is, in time order: person 1 has one pair (2 messages), person 2 has
    `heavy` messages, the others share the rest with a skew (lognormal weights: a few talk a lot)."""
    pairs = messages // 2
    rest = pairs - 1 - heavy // 2
    weights = [rng.lognormvariate(0, 1) for _ in range(people - 2)]
    seq = [1] + [2] * (heavy // 2) + rng.choices(range(3, people + 1), weights=weights, k=rest)
    rng.shuffle(seq)
    return seq


def build(path: Path, messages: int, people: int, heavy: int, seed: int = 7) -> dict[str, Any]:
    from memory.fts import register

    rng = random.Random(seed)
    start = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    register(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    when = time.time() - 400 * 86_400
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO users(id, platform, platform_user_id, display_name, created) VALUES (?, 'bench', ?, ?, ?)",
                     [(p, f"u{p}", f"User{p}", when) for p in range(1, people + 1)])
    conn.executemany("INSERT INTO chats(id, platform, platform_chat_id, kind, created) VALUES (?, 'bench', ?, 'dm', ?)",
                     [(p, f"dm-{p}", when) for p in range(1, people + 1)])
    conn.execute("COMMIT")
    current: dict[int, list[Any]] = {}  # person -> [session id, pairs left]
    next_session = 1
    seq = owners(messages, people, heavy, rng)
    for at in range(0, len(seq), CHUNK // 2):
        sessions: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        for person in seq[at:at + CHUNK // 2]:
            when += 14.0
            session = current.get(person)
            if session is None or session[1] == 0:
                session = current[person] = [next_session, SESSION_TURNS // 2]
                sessions.append((next_session, person, person, when, when + 3600, when + 3600))
                next_session += 1
            session[1] -= 1
            rows.append((session[0], person, person, "user", user_message(rng), when))
            rows.append((session[0], person, person, "bot", bot_message(rng), when + 7))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO sessions(id, user_id, chat_id, private, started, last_activity, closed, state) "
                         "VALUES (?, ?, ?, 1, ?, ?, ?, 'closed')", sessions)
        conn.executemany("INSERT INTO messages(session_id, user_id, chat_id, author, text, created) "
                         "VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        log(f"built {min(2 * (at + CHUNK // 2), 2 * len(seq))} messages")
    conn.executemany("UPDATE sessions SET state = 'open', closed = NULL WHERE id = ?", [(s[0],) for s in current.values()])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    seconds = time.perf_counter() - start
    return {"seconds": rounded(seconds), "messages_per_s": rounded(2 * len(seq) / seconds)}


async def write_one(store: Any, person: int, text: str) -> float:
    """Another person's message committed through the store's writer (what a reply does first)."""
    start = time.perf_counter()
    session = await store.scalar("SELECT MAX(id) FROM sessions WHERE user_id = ?", (person,))
    async with store.write() as db:
        await db.execute("INSERT INTO messages(session_id, user_id, chat_id, author, text, created) "
                         "VALUES (?, ?, ?, 'user', ?, ?)", (session, person, person, text, time.time()))
    return time.perf_counter() - start


async def with_probe(store: Any, work: Any, other: int, rng: random.Random) -> dict[str, Any]:
    """Run `work` (a coroutine) and, right after it begins, another person's write: both timings."""
    await store.checkpoint()
    start = time.perf_counter()
    task = asyncio.create_task(work)
    await asyncio.sleep(0)  # the work starts (and takes the write lock if it goes there first)
    waited = await write_one(store, other, user_message(rng))
    await task
    return {"seconds": rounded(time.perf_counter() - start), "other_write_wait_s": rounded(waited)}


async def rebuild(store: Any) -> None:
    async with store.write() as db:
        await db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")


async def measure(path: Path) -> dict[str, Any]:
    from memory.privacy import forget_user
    from memory.store import Store

    rng = random.Random(11)
    store = await Store.open(path)
    try:
        counts = await store.fetchall("SELECT user_id, COUNT(*) FROM messages GROUP BY user_id ORDER BY 2, 1")
        sizes = {int(r[0]): int(r[1]) for r in counts}
        db_bytes = await store.scalar("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        by_count = [int(r[0]) for r in counts if int(r[0]) not in (1, 2)]
        typical, other = by_count[len(by_count) // 2], by_count[len(by_count) // 3]
        idle = sorted([await write_one(store, other, user_message(rng)) for _ in range(5)])[2]
        forgets: dict[str, Any] = {}
        for label, person in (("two_messages", 1), ("typical", typical), ("heavy", 2)):
            probe = await with_probe(store, forget_user(store, person), other, rng)
            forgets[label] = {"user_messages": sizes[person], "forget_s": probe["seconds"],
                              "other_write_wait_s": probe["other_write_wait_s"]}
            log(f"forget {label}: {forgets[label]}")
        probe = await with_probe(store, rebuild(store), other, rng)
        baseline = {"rebuild_s": probe["seconds"], "other_write_wait_s": probe["other_write_wait_s"]}
        log(f"baseline rebuild: {baseline}")
    finally:
        await store.close()
    two = forgets["two_messages"]
    return {
        "db_mib": rounded(db_bytes / 2**20),
        "forget": forgets,
        "idle_other_write_s": rounded(idle),
        "baseline_rebuild_in_write_tx": baseline,
        "ratio_rebuild_over_forget_two_messages": rounded(baseline["rebuild_s"] / max(two["forget_s"], 1e-9)),
        "ratio_rebuild_wait_over_forget_wait_two_messages": rounded(
            baseline["other_write_wait_s"] / max(two["other_write_wait_s"], 1e-9)),
        "target": "forgetting a 2-message person and another person's concurrent write each <= 0.1 s",
        "target_met": two["forget_s"] <= 0.1 and two["other_write_wait_s"] <= 0.1,
    }


async def prepare(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The database at `path`, built unless it holds this benchmark's data already; its build description."""
    from memory.store import Store

    store = await Store.open(path)  # creates or migrates the schema
    try:
        stored = await store.get_kv(META_KEY)
        if stored is not None:
            log(f"reusing {path}: {stored} (--messages/--people/--heavy are those it was built with)")
            return {**json.loads(stored), "reused": True}
    finally:
        await store.close()
    log(f"building {args.messages} messages over {args.people} people at {path}")
    meta = {"messages": args.messages, "people": args.people, "heavy": args.heavy,
            "build": build(path, args.messages, args.people, args.heavy)}
    store = await Store.open(path)
    try:
        await store.set_kv(META_KEY, json.dumps(meta))
    finally:
        await store.close()
    return {**meta, "reused": False}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="membot-bench-forget-"))
    built = Path(args.db) if args.db else folder / "built.sqlite3"
    work = folder / "work.sqlite3"
    try:
        meta = await prepare(built, args)
        if args.db:  # the kept file stays as built: the forgets run on a copy (Store.close left no WAL)
            shutil.copyfile(built, work)
        result = await measure(work if args.db else built)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"benchmark": "forget", "quick": args.quick, "messages": meta["messages"], "people": meta["people"],
            "heavy_user_messages": meta["heavy"], "build": {**meta["build"], "reused": meta["reused"]},
            **result, "sqlite_version": sqlite3.sqlite_version}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k messages, 100 people: a smoke test")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--heavy", type=int, default=5000, help="messages of the heavy person forgotten")
    parser.add_argument("--db", default=None, help="build here and keep it; reuse it if already built")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.people, args.heavy = 20_000, 100, 1000
    result = asyncio.run(run(args))
    result["machine"] = machine()
    emit(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
