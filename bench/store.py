"""Store: message insert rate and FTS5 retrieval latency at 100k and 1M stored messages, database size.

    .venv/bin/python bench/store.py            # full run (~2-5 minutes on 2 cores)
    .venv/bin/python bench/store.py --quick    # a smoke test (2k and 10k messages)
    .venv/bin/python bench/store.py --backend postgresql [--quick]   # PostgreSQL, a throwaway cluster (~5 min)
    .venv/bin/python bench/store.py --backend postgresql --url postgresql://user@host/db   # an existing server

Messages are chat-like English (names, places, hobbies, dates; user and bot turns alternating) spread over
`--users` people in sessions of 20 turns, plus one heavy user holding `--heavy-share` of all messages (the
person whose replies search the most). They go in through the store's single writer (`Store.write()`,
BEGIN IMMEDIATE, executemany in chunks), so the FTS5 triggers index them as in production; the insert
rate includes that indexing. The baseline, built on the same database and asked the same questions, is the
index before migration 4 (plain terms, the owner filtered after the match). Retrieval is `memory.retrieval.search_user_messages` exactly as the reply
context calls it (limit 42 = 2 × max(retrieval_k, reply_context_tokens / 48) with the defaults, the current
session excluded), for the heavy user and for a typical one, with questions like "where does my sister live?".

`--backend postgresql` measures the same on PostgreSQL (memory/postgres_store.py): the same messages through
`Store.write()` (the trigger keys each lexeme to its owner, the GIN index takes it), a VACUUM ANALYZE after
each size (what autovacuum would do, timed apart), the same questions; the database size is
`pg_database_size`. Its baseline is a plain GIN expression index on to_tsvector('english', text) on the same
table, the owner filtered after the match (see PG_BASELINE_SEARCH). The throwaway cluster
(tests/postgres_server.py: fsync and synchronous_commit off) is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
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

from memory.store import inserted

SESSION_TURNS = 20
CHUNK = 20_000
PROGRESS = 100_000  # a line on stderr every this many messages


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
                pk = await inserted(
                    db, "INSERT INTO users(platform, platform_user_id, display_name, created) "
                    "VALUES ('bench', ?, ?, ?) RETURNING id", (f"u{i}", f"User{i}", self.when))
                self.user_pks.append(pk)
                self.chat_of[pk] = await inserted(
                    db, "INSERT INTO chats(platform, platform_chat_id, kind, created) "
                    "VALUES ('bench', ?, 'dm', ?) RETURNING id", (f"dm-{i}", self.when))

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
        session_id = await inserted(
            db, "INSERT INTO sessions(user_id, chat_id, private, started, last_activity) VALUES (?, ?, 1, ?, ?) "
            "RETURNING id", (user_pk, self.chat_of[user_pk], self.when, self.when))
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
            if self.messages // PROGRESS > (self.messages - count) // PROGRESS:
                log(f"{self.messages} messages stored ({self.messages / max(self.insert_seconds, 1e-9):.0f}/s "
                    f"in the inserts, {self.build_seconds:.0f} s building so far)")


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


async def run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
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
        "backend": "sqlite",
        "quick": args.quick,
        "settings": {"users": args.users, "heavy_share": args.heavy_share, "session_turns": SESSION_TURNS,
                     "chunk": CHUNK, "queries": args.queries, "limit": 42},
        "results": results,
        "target": f"FTS5 retrieval p95 <= 20 ms at {sizes[-1]} messages (heavy user)",
        "target_met": last["heavy_user_fts"]["p95_ms"] <= 20.0,
    }

# ---- PostgreSQL (--backend postgresql) -------------------------------------------------------------------
# The same messages through the same writer (`store.write()`, executemany in chunks of CHUNK), so the
# trigger keys every lexeme to its owner (memory/postgres_schema.py) and the GIN index takes it as in
# production; the insert rate includes both. The SQLite baseline above (FTS5 before migration 4) has no
# PostgreSQL twin. The baseline here is the plain way to index text in PostgreSQL, built on the same table
# in the same run: a GIN expression index on to_tsvector('english', text), asked the same OR of the
# question's stems (as membot_query builds it, unhashed; plainto_tsquery would AND them and find another
# set), the owner a filter after the match, ranked by ts_rank like the keyed search.

PG_BASELINE_INDEX = "CREATE INDEX baseline_plain_terms ON messages USING gin (to_tsvector('english', text))"
PG_BASELINE_SEARCH = (
    "WITH q AS (SELECT string_agg(DISTINCT lexeme, ' | ')::tsquery AS q FROM unnest(to_tsvector('english', ?))) "
    "SELECT m.id, -ts_rank(to_tsvector('english', m.text), q.q) AS score FROM q, messages m "
    "JOIN sessions s ON s.id = m.session_id "
    "WHERE to_tsvector('english', m.text) @@ q.q AND m.user_id = ? AND m.session_id != ? "
    "ORDER BY score, m.id LIMIT ?"
)


def database_url(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def pg_settings(store: Any) -> dict[str, Any]:
    names = ("server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size",
             "fsync", "synchronous_commit", "full_page_writes", "jit", "gin_pending_list_limit")
    rows = await store.fetchall("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(?)", (list(names),))
    found = {r[0]: f"{r[1]}{' x ' + r[2] if r[2] else ''}" for r in rows}
    return {name: found.get(name) for name in names}


async def pg_plan(store: Any, sql: str, params: list[Any]) -> list[str]:
    """The plan's nodes, outermost first (which index the planner chose), without running the query."""
    import json

    rows = await store.fetchall(f"EXPLAIN (FORMAT JSON) {sql}", params)
    plan = rows[0][0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node["Node Type"] + (f" ({node['Index Name']})" if "Index Name" in node else ""))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return nodes


async def pg_size(store: Any, relation: str) -> int:
    return int(await store.scalar("SELECT pg_relation_size(CAST(? AS regclass))", (relation,)) or 0)


async def measure_pg_baseline(store: Any, users: dict[str, int], seeds: dict[str, int],
                              queries: int) -> dict[str, Any]:
    """The plain expression index on the same table and the same questions (`seeds`, as the keyed search
    was asked), and how many top-42 lists the keyed search reproduces (the same stems and positions, so
    ts_rank should agree; a question neither finds anything for counts as agreeing)."""
    from memory.retrieval import query_words, search_user_messages

    start = time.perf_counter()
    async with store.write() as db:
        await db.execute("SET LOCAL maintenance_work_mem = '256MB'")
        await db.execute(PG_BASELINE_INDEX)
        await db.execute("ANALYZE messages")
    built = time.perf_counter() - start
    out: dict[str, Any] = {
        "index": "GIN on to_tsvector('english', text), owner filtered after the match",
        "index_build_s": rounded(built),
        "index_mib_keyed_terms": rounded(await pg_size(store, "messages_terms") / 2**20),
        "index_mib_baseline": rounded(await pg_size(store, "baseline_plain_terms") / 2**20),
    }
    try:
        for label, user_pk in users.items():
            exclude = await store.scalar("SELECT MAX(id) FROM sessions WHERE user_id = ?", (user_pk,))
            rng = random.Random(seeds[label])
            times: list[float] = []
            hits: list[int] = []
            overlap = 0.0
            plan: list[str] = []
            for _ in range(queries):
                text = question(rng)
                params = [" ".join(query_words(text)), user_pk, exclude or -1, 42]
                if not plan:
                    plan = await pg_plan(store, PG_BASELINE_SEARCH, params)
                t0 = time.perf_counter()
                rows = await store.fetchall(PG_BASELINE_SEARCH, params)
                times.append(time.perf_counter() - t0)
                hits.append(len(rows))
                now = await search_user_messages(store, user_pk, text, limit=42, exclude_session=exclude)
                old_ids, new_ids = {int(r[0]) for r in rows}, {e.message_id for e in now}
                overlap += len(old_ids & new_ids) / len(old_ids) if old_ids else float(not new_ids)
            out[label] = {"p50_ms": rounded(1000 * percentile(times, 50)),
                          "p95_ms": rounded(1000 * percentile(times, 95)),
                          "max_ms": rounded(1000 * max(times)),
                          "mean_hits": rounded(sum(hits) / len(hits)),
                          "top42_overlap_with_keyed_terms": rounded(overlap / queries),
                          "plan": plan}
    finally:
        async with store.write() as db:
            await db.execute("DROP INDEX baseline_plain_terms")
    return out


async def run_postgres(args: argparse.Namespace, server_url: str) -> dict[str, Any]:
    import asyncpg

    from memory.store import Store

    sizes = [int(s) for s in args.sizes.split(",")]
    name = f"membot_bench_store_{os.getpid()}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = database_url(server_url, name)
    log(f"PostgreSQL database {name} created")
    results: dict[str, Any] = {}
    server: dict[str, Any] = {}
    try:
        store = await Store.open(url)
        try:
            server = await pg_settings(store)
            builder = Builder(store, args.users, args.heavy_share)
            await builder.setup()
            typical = builder.user_pks[len(builder.user_pks) // 2]
            users = {"heavy_user": builder.heavy, "typical_user": typical}
            for size in sizes:
                seeds = {"heavy_user": 1000 + size, "typical_user": 2000 + size}  # the baseline's questions too
                before_msgs, before_s, before_b = builder.messages, builder.insert_seconds, builder.build_seconds
                await builder.grow_to(size)
                added = builder.messages - before_msgs
                took = builder.insert_seconds - before_s
                built = builder.build_seconds - before_b
                # What autovacuum would do by itself sooner or later, done now so the plans and the GIN
                # pending list are the same from one run to the next: statistics, and the pending list merged.
                start = time.perf_counter()
                async with store.pool.acquire() as conn:
                    await conn.execute("VACUUM (ANALYZE) messages, sessions, users")
                vacuumed = time.perf_counter() - start
                await measure_queries(store, builder.heavy, 3, random.Random(1))  # warm-up, not counted
                heavy_count = await store.scalar("SELECT COUNT(*) FROM messages WHERE user_id = ?", (builder.heavy,))
                typical_count = await store.scalar("SELECT COUNT(*) FROM messages WHERE user_id = ?", (typical,))
                db_size = int(await store.scalar("SELECT pg_database_size(current_database())") or 0)
                entry: dict[str, Any] = {
                    "messages": builder.messages,
                    "inserted_in_this_step": added,
                    "insert_messages_per_s": rounded(added / took),
                    "build_messages_per_s": rounded(added / built),
                    "vacuum_analyze_s": rounded(vacuumed),
                    "db_bytes": db_size,
                    "db_mib": rounded(db_size / 2**20),
                    "messages_table_mib": rounded(await pg_size(store, "messages") / 2**20),
                    "terms_index_mib": rounded(await pg_size(store, "messages_terms") / 2**20),
                    "heavy_user_messages": int(heavy_count or 0),
                    "heavy_user_fts": await measure_queries(
                        store, builder.heavy, args.queries, random.Random(seeds["heavy_user"])),
                    "typical_user_messages": int(typical_count or 0),
                    "typical_user_fts": await measure_queries(
                        store, typical, args.queries, random.Random(seeds["typical_user"])),
                }
                if args.baseline:
                    entry["baseline_plain_tsvector"] = await measure_pg_baseline(store, users, seeds, args.queries)
                    for label in ("heavy_user", "typical_user"):
                        entry[f"{label}_p95_speedup_vs_baseline"] = rounded(
                            entry["baseline_plain_tsvector"][label]["p95_ms"]
                            / max(entry[f"{label}_fts"]["p95_ms"], 1e-6))
                log(f"{size}: {entry}")
                results[f"messages_{size}"] = entry
        finally:
            await store.close()
    finally:
        if not (args.keep and args.url):  # a throwaway cluster goes anyway; on a given server, unless --keep
            admin = await asyncpg.connect(server_url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
    last = results[f"messages_{sizes[-1]}"]
    return {
        "benchmark": "store",
        "backend": "postgresql",
        "quick": args.quick,
        "settings": {"users": args.users, "heavy_share": args.heavy_share, "session_turns": SESSION_TURNS,
                     "chunk": CHUNK, "queries": args.queries, "limit": 42,
                     "server": "given (--url)" if args.url else "throwaway cluster (tests/postgres_server.py)"},
        "server_settings": server,
        "results": results,
        "target": f"keyed tsvector retrieval p95 <= 20 ms at {sizes[-1]} messages (heavy user)",
        "target_met": last["heavy_user_fts"]["p95_ms"] <= 20.0,
    }


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def postgres_main(args: argparse.Namespace) -> dict[str, Any]:
    """On `--url`'s server, or on a throwaway cluster stopped at the end, whatever happens (SIGTERM too)."""
    if args.url:
        return asyncio.run(run_postgres(args, args.url))
    from tests.postgres_server import Cluster, binaries

    bindir = binaries()
    if bindir is None:
        raise SystemExit("bench/store.py: PostgreSQL's initdb and pg_ctl were not found: install PostgreSQL, "
                         "or give --url postgresql://... of a server to use")
    previous = signal.signal(signal.SIGTERM, _terminated)
    cluster = Cluster(bindir)
    try:
        url = cluster.start()
        log(f"throwaway PostgreSQL cluster started in {cluster.folder} ({bindir})")
        return asyncio.run(run_postgres(args, url))
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
        log("throwaway PostgreSQL cluster stopped")


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
                        help="skip the baseline (SQLite: the unowned index before migration 4; PostgreSQL: a "
                             "plain GIN expression index on to_tsvector('english', text))")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the store to measure (postgresql: a throwaway cluster unless --url)")
    parser.add_argument("--url", default=None,
                        help="postgresql://... of an existing server to use (a database is created on it and "
                             "dropped at the end unless --keep; the password from PGPASSWORD)")
    args = parser.parse_args(argv)
    if args.url and args.backend != "postgresql":
        parser.error("--url is for --backend postgresql")
    if args.quick:
        args.sizes, args.users, args.queries = "2000,10000", 50, 20
    result = postgres_main(args) if args.backend == "postgresql" else asyncio.run(run_sqlite(args))
    result["machine"] = machine()
    emit(result)


if __name__ == "__main__":
    main()
