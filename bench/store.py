"""Store: message insert rate and FTS5 retrieval latency at 100k and 1M stored messages, database size.

    .venv/bin/python bench/store.py            # full run (~2-5 minutes on 2 cores)
    .venv/bin/python bench/store.py --quick    # a smoke test (2k and 10k messages)

Messages are chat-like English (names, places, hobbies, dates; user and bot turns alternating) spread over
`--users` people in sessions of 20 turns, plus one heavy user holding `--heavy-share` of all messages (the
person whose replies search the most). They go in through the store's single writer (`Store.write()`,
BEGIN IMMEDIATE, executemany in chunks), so the FTS5 triggers index them as in production; the insert
rate includes that indexing. The baseline, built on the same database and asked the same questions, is the
index before migration 4 (plain terms, the owner filtered after the match). Retrieval is `memory.retrieval.search_user_messages` exactly as the reply
context calls it (limit 42 = 2 × max(retrieval_k, reply_context_tokens / 48) with the defaults, the current
session excluded), for the heavy user and for a typical one, with questions like "where does my sister live?".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    bot_message,
    emit,
    log,
    machine,
    percentile,
    question,
    rounded,
    user_message,
)

SESSION_TURNS = 20
CHUNK = 20_000


class Builder:
    """Grows one database to a target message count, through the store's writer."""

    def __init__(self, store: Any, users: int, heavy_share: float, seed: int = 5) -> None:
        self.store = store
        self.users = users
        self.heavy_share = heavy_share
        self.rng = random.Random(seed)
        self.messages = 0
        self.when = time.time() - 400 * 86_400
        self.sessions: dict[int, tuple[int, int]] = {}  # user pk -> (session id, turns left)
        self.user_pks: list[int] = []
        self.chat_of: dict[int, int] = {}
        self.insert_seconds = 0.0  # the executemany of the messages (FTS5 indexing included)
        self.build_seconds = 0.0  # the whole build, text generation and sessions included

    async def setup(self) -> None:
        async with self.store.write() as db:
            for i in range(self.users + 1):
                cur = await db.execute(
                    "INSERT INTO users(platform, platform_user_id, display_name, created) VALUES ('bench', ?, ?, ?)",
                    (f"u{i}", f"User{i}", self.when),
                )
                pk = int(cur.lastrowid or 0)
                cur = await db.execute(
                    "INSERT INTO chats(platform, platform_chat_id, kind, created) VALUES ('bench', ?, 'dm', ?)",
                    (f"dm-{i}", self.when),
                )
                self.user_pks.append(pk)
                self.chat_of[pk] = int(cur.lastrowid or 0)

    @property
    def heavy(self) -> int:
        return self.user_pks[0]

    async def _session_for(self, db: Any, user_pk: int) -> int:
        current = self.sessions.get(user_pk)
        if current is not None and current[1] > 0:
            self.sessions[user_pk] = (current[0], current[1] - 1)
            return current[0]
        if current is not None:
            await db.execute("UPDATE sessions SET state = 'closed', closed = ? WHERE id = ?", (self.when, current[0]))
        cur = await db.execute(
            "INSERT INTO sessions(user_id, chat_id, private, started, last_activity) VALUES (?, ?, 1, ?, ?)",
            (user_pk, self.chat_of[user_pk], self.when, self.when),
        )
        session_id = int(cur.lastrowid or 0)
        self.sessions[user_pk] = (session_id, SESSION_TURNS - 1)
        return session_id

    async def grow_to(self, target: int) -> None:
        rng = self.rng
        while self.messages < target:
            count = min(CHUNK, target - self.messages)
            start = time.perf_counter()
            async with self.store.write() as db:
                rows = []
                user_pk = self.heavy
                for i in range(count):
                    if i % 2 == 0:  # a new user turn: pick whose
                        user_pk = self.heavy if rng.random() < self.heavy_share else rng.choice(self.user_pks[1:])
                        author, text = "user", user_message(rng)
                    else:
                        author, text = "bot", bot_message(rng)
                    session_id = await self._session_for(db, user_pk)
                    self.when += 7.0
                    rows.append((session_id, user_pk, self.chat_of[user_pk], author, text, self.when))
                insert_start = time.perf_counter()
                await db.executemany(
                    "INSERT INTO messages(session_id, user_id, chat_id, author, text, created) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self.insert_seconds += time.perf_counter() - insert_start
            self.build_seconds += time.perf_counter() - start
            self.messages += count


async def measure_queries(store: Any, user_pk: int, queries: int, rng: random.Random) -> dict[str, Any]:
    from memory.retrieval import search_user_messages

    exclude = await store.scalar("SELECT MAX(id) FROM sessions WHERE user_id = ?", (user_pk,))
    times: list[float] = []
    hits: list[int] = []
    for _ in range(queries):
        text = question(rng)
        start = time.perf_counter()
        found = await search_user_messages(store, user_pk, text, limit=42, exclude_session=exclude,
                                           include_private=True)
        times.append(time.perf_counter() - start)
        hits.append(len(found))
    return {
        "queries": queries,
        "p50_ms": rounded(1000 * percentile(times, 50)),
        "p95_ms": rounded(1000 * percentile(times, 95)),
        "max_ms": rounded(1000 * max(times)),
        "mean_hits": rounded(sum(hits) / len(hits)),
    }


# ---- the baseline: the index as it was before migration 4, built on the same database ------------------
# A plain porter index over the text, with the owner applied as a filter after the match: SQLite ranks every
# matching message of every person (bm25 per row) before `m.user_id = ?` throws almost all of them away.
BASELINE_SQL = """
DROP TABLE IF EXISTS baseline_fts;
CREATE VIRTUAL TABLE baseline_fts USING fts5(
    text, content='messages', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
INSERT INTO baseline_fts(baseline_fts) VALUES ('rebuild');
"""


async def baseline_search(store: Any, user_pk: int, query_text: str, limit: int, exclude_session: int | None) -> list[Any]:
    """The retrieval before migration 4: unowned terms, user filter after the match."""
    from memory.retrieval import query_words

    terms = query_words(query_text)
    if not terms:
        return []
    sql = (
        "SELECT m.id, bm25(baseline_fts) AS score FROM baseline_fts JOIN messages m ON m.id = baseline_fts.rowid "
        "JOIN sessions s ON s.id = m.session_id "
        "WHERE baseline_fts MATCH ? AND m.user_id = ? AND m.session_id != ? ORDER BY score LIMIT ?"
    )
    query = " OR ".join(f'"{t}"' for t in terms)
    return await store.fetchall(sql, (query, user_pk, exclude_session or -1, limit))


async def measure_baseline(store: Any, heavy: int, typical: int, queries: int, rng: random.Random) -> dict[str, Any]:
    """The old index on the same data and questions, and how many top-42 lists the new one reproduces."""
    from memory.retrieval import search_user_messages

    start = time.perf_counter()
    async with store.write() as db:
        await db.conn.executescript(BASELINE_SQL)
    built = time.perf_counter() - start
    sizes = await store.fetchall(
        "SELECT (SELECT SUM(LENGTH(block)) FROM messages_fts_data), (SELECT SUM(LENGTH(block)) FROM baseline_fts_data)")
    out: dict[str, Any] = {"index_build_s": rounded(built), "fts_data_mib_owner_terms": rounded(sizes[0][0] / 2**20),
                           "fts_data_mib_baseline": rounded(sizes[0][1] / 2**20)}
    for label, user_pk in (("heavy_user", heavy), ("typical_user", typical)):
        exclude = await store.scalar("SELECT MAX(id) FROM sessions WHERE user_id = ?", (user_pk,))
        times: list[float] = []
        overlap = 0.0
        for _ in range(queries):
            text = question(rng)
            t0 = time.perf_counter()
            rows = await baseline_search(store, user_pk, text, 42, exclude)
            times.append(time.perf_counter() - t0)
            now = await search_user_messages(store, user_pk, text, limit=42, exclude_session=exclude)
            old_ids = {int(r[0]) for r in rows}
            overlap += len(old_ids & {e.message_id for e in now}) / max(len(old_ids), 1)
        out[label] = {"p50_ms": rounded(1000 * percentile(times, 50)), "p95_ms": rounded(1000 * percentile(times, 95)),
                      "top42_overlap_with_owner_terms": rounded(overlap / queries)}
    async with store.write() as db:
        await db.conn.executescript("DROP TABLE baseline_fts;")
    return out


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from memory.store import Store

    sizes = [int(s) for s in args.sizes.split(",")]
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="membot-bench-store-"))
    path = directory / "store.sqlite3"
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    store = await Store.open(path)
    results: dict[str, Any] = {}
    try:
        builder = Builder(store, args.users, args.heavy_share)
        await builder.setup()
        rng = random.Random(99)
        typical = builder.user_pks[len(builder.user_pks) // 2]
        for size in sizes:
            before_msgs, before_s, before_b = builder.messages, builder.insert_seconds, builder.build_seconds
            await builder.grow_to(size)
            added = builder.messages - before_msgs
            took = builder.insert_seconds - before_s
            built = builder.build_seconds - before_b
            await store.checkpoint()
            # A warm-up query per user (first touch of the pages), not counted.
            await measure_queries(store, builder.heavy, 3, random.Random(1))
            heavy_count = await store.scalar("SELECT COUNT(*) FROM messages WHERE user_id = ?", (builder.heavy,))
            typical_count = await store.scalar("SELECT COUNT(*) FROM messages WHERE user_id = ?", (typical,))
            entry = {
                "messages": builder.messages,
                "inserted_in_this_step": added,
                "insert_messages_per_s": rounded(added / took),
                "build_messages_per_s": rounded(added / built),
                "db_bytes": db_bytes(path),
                "db_mib": rounded(db_bytes(path) / 2**20),
                "heavy_user_messages": int(heavy_count or 0),
                "heavy_user_fts": await measure_queries(store, builder.heavy, args.queries, rng),
                "typical_user_messages": int(typical_count or 0),
                "typical_user_fts": await measure_queries(store, typical, args.queries, rng),
            }
            if args.baseline:
                entry["baseline_unowned_fts"] = await measure_baseline(
                    store, builder.heavy, typical, args.queries, random.Random(99))
                for label in ("heavy_user", "typical_user"):
                    entry[f"{label}_p95_speedup_vs_baseline"] = rounded(
                        entry["baseline_unowned_fts"][label]["p95_ms"] / max(entry[f"{label}_fts"]["p95_ms"], 1e-6))
            log(f"{size}: {entry}")
            results[f"messages_{size}"] = entry
    finally:
        await store.close()
        if not args.keep:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
            if not args.dir:
                os.rmdir(directory)
    last = results[f"messages_{sizes[-1]}"]
    return {
        "benchmark": "store",
        "quick": args.quick,
        "settings": {"users": args.users, "heavy_share": args.heavy_share, "session_turns": SESSION_TURNS,
                     "chunk": CHUNK, "queries": args.queries, "limit": 42},
        "results": results,
        "target": f"FTS5 retrieval p95 <= 20 ms at {sizes[-1]} messages (heavy user)",
        "target_met": last["heavy_user_fts"]["p95_ms"] <= 20.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2k and 10k messages: a smoke test")
    parser.add_argument("--sizes", default="100000,1000000", help="message counts to measure at")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--heavy-share", type=float, default=0.02, help="share of messages from the heavy user")
    parser.add_argument("--queries", type=int, default=200, help="queries per user and size")
    parser.add_argument("--dir", default=None, help="where to build the database (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the baseline (the unowned index before migration 4)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.users, args.queries = "2000,10000", 50, 20
    result = asyncio.run(run(args))
    result["machine"] = machine()
    emit(result)


if __name__ == "__main__":
    main()
