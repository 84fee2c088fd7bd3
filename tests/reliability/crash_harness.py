"""Crash drill: the real bot process under a multi-user load, SIGKILLed at chosen moments, over and over.

    python -m tests.reliability.crash_harness --rounds 20 [--seed 1] [--users 8] [--keep DIR]
        [--backend postgresql | --postgres-url postgresql://user@host:port/empty_database]

prints one JSON summary on stdout and exits 0 when every guarantee held, 1 otherwise.

Storage: a SQLite file in the work folder by default; with `--postgres-url` the bot's `[storage] url` is that
(empty) PostgreSQL database, and with `--backend postgresql` alone the drill starts a throwaway cluster
(tests/postgres_server.py) for itself and stops it at the end. On PostgreSQL the bot process dies but the
server stays up, which is the realistic crash: the server's own recovery is its business, the rows are ours.

Set-up: a fake Telegram Bot API server (tests.fakes.telegram_api) runs in this process on 127.0.0.1; the bot is
`membot run` in its own process (wrapped by tests.reliability.netaudit, which records every connection it
tries), with the fake model slowed down (`name = "delay=0.3"`) so generation, session-memory and compression
jobs each take long enough to be caught, short session timeouts and a memory-job run every second.

Each round starts the bot on the same database, drives a scripted load (people writing in private chats and
mentioning the bot in a group, bursts of several messages, `/end`), and SIGKILLs the bot in one of five ways,
in turn: while it stores a burst of messages, while it generates replies, while a session-memory job runs,
while a compression job runs, and at a random moment. After every kill the database is checked:

- SQLite: `PRAGMA integrity_check` and the FTS5 index's own integrity check pass; PostgreSQL: the store's
  `integrity_ok()` (schema at the current version); on both, the row-level checks below, the same SQL text;
- every message the bot had acknowledged to Telegram (update ids up to the offset it confirmed) is stored,
  once; nothing is stored that was not sent;
- no job is lost: every closed session without a session memory has its pending (or running) job, every
  session memory not yet compressed has its pending compression job;
- compressive memory versions only grow: every version seen before is still there, unchanged, numbered
  1..n without gaps; no job is doubled: a session memory is compressed into one version per scope, never
  re-compressed, and one session has at most one session memory.

At the end the bot is started once more and left to settle: then every message ever sent is stored exactly
once, every closed session has exactly one session memory, all of it is compressed, no job is waiting, the
bot stops cleanly on SIGTERM, the bot token appears in no log, and no connection left 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.fts import register as register_fts
from memory.store import Store, is_postgres
from tests.fakes.telegram_api import FakeTelegramServer
from tests.membot_process import MembotRun
from tests.reliability import netaudit

TOKEN = "4242424242:AAH-crash-drill-SECRET-token"
BOT_USERNAME = "membot_test_bot"
GROUP = -1001234567890
MODES = ("storing", "generating", "session_memory", "compress", "random")
FACTS = ("I keep bees", "my cat is Pixel", "I play the violin", "I moved to Lyon", "I run marathons",
         "I grow tomatoes", "my sister is Ines", "I work night shifts", "I collect stamps", "I fear spiders")


@dataclass
class Sent:
    update_id: int
    chat_id: int
    message_id: int
    user_id: int
    text: str


@dataclass
class State:
    """What the harness knows between rounds: what was sent, and what the database showed at each kill."""

    sent: list[Sent] = field(default_factory=list)
    versions: dict[tuple[int, str, int], str] = field(default_factory=dict)
    compressed: dict[tuple[int, str], int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    seq: int = 0


def _config(work: Path, server: FakeTelegramServer, target: str) -> Path:
    path = work / "membot.toml"
    storage = f'url = "{target}"' if is_postgres(target) else f'path = "{target}"'
    path.write_text(
        f"""
[bot]
name = "Membot"

[model]
backend = "fake"
name = "delay=0.3"

[sessions]
inactivity_timeout = "3s"
sweep_interval = "0.5s"

[jobs]
interval = "1s"
batch_size = 3
retry_backoff = "1s"

[storage]
{storage}

[logging]
level = "INFO"

[telegram]
base_url = "{server.base_url}"
base_file_url = "{server.base_file_url}"
poll_timeout = 1
""",
        encoding="utf-8",
    )
    return path


class Bot:
    """One `membot run` process (under netaudit) at a time, started and killed by the harness; each start
    logs to its own file."""

    def __init__(self, work: Path, config: Path) -> None:
        self.work = work
        self.config = config
        self.run: MembotRun | None = None

    async def start(self, name: str) -> None:
        self.run = MembotRun(self.config, self.work / f"{name}.log", {"TELEGRAM_BOT_TOKEN": TOKEN},
                             program=("-m", "tests.reliability.netaudit", "--log", str(self.work / "net.jsonl"), "--"))
        await self.run.start()

    async def kill(self) -> None:
        if self.run is not None and self.run.running:
            await self.run.kill()

    async def stop(self, timeout: float = 30) -> int:  # noqa: ASYNC109
        assert self.run is not None
        return int(await self.run.stop(timeout) or 0)


class Db:
    """The drill's view of the database, one SQL text (`?` placeholders) for both backends: `all` gives rows as
    tuples, `one` the first column of the first row as an int (0 for no row or NULL), `problems` what the
    backend's own integrity checks find."""

    async def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def one(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        rows = await self.all(sql, params)
        return int(rows[0][0] or 0) if rows else 0

    async def problems(self) -> list[str]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @staticmethod
    async def open(target: str, *, read_only: bool) -> Db | None:
        """For the peeks (`read_only`), None when there is nothing to open yet (no SQLite file); for the
        checks, the database or the error that kept it from opening."""
        if is_postgres(target):
            return await PostgresDb.connect(target)
        return SQLiteDb.connect(Path(target), read_only=read_only)


class SQLiteDb(Db):
    """sqlite3 on the file: read-only for the peeks while the bot runs (WAL lets them go on beside its
    writer); read-write for the checks after a kill, so that WAL recovery runs and the FTS5 index's
    integrity-check (an INSERT command that changes nothing) can be issued."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @staticmethod
    def connect(path: Path, *, read_only: bool) -> SQLiteDb | None:
        if read_only:
            if not path.exists():
                return None
            return SQLiteDb(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2))
        conn = sqlite3.connect(path, timeout=10)
        register_fts(conn)
        return SQLiteDb(conn)

    async def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(sql, params).fetchall()]

    async def problems(self) -> list[str]:
        found: list[str] = []
        integrity = self.conn.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            found.append(f"integrity_check: {integrity}")
        try:
            self.conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.Error as exc:
            found.append(f"fts integrity-check: {exc}")
        return found

    async def close(self) -> None:
        self.conn.close()


class PostgresDb(Db):
    """The bot's own store (memory/postgres_store.py) on the same database: its `fetchall` turns the `?`
    placeholders into PostgreSQL's, and its `integrity_ok` is what `membot db check` asks of the server."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    async def connect(url: str) -> PostgresDb:
        store = Store.at(url)
        await store.connect()
        return PostgresDb(store)

    async def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.store.fetchall(sql, params)]

    async def problems(self) -> list[str]:
        found = [] if await self.store.integrity_ok() else ["integrity_ok: the schema is not at its current version"]
        # The full-text index's counterpart of FTS5's integrity-check: every message's keyed terms are what
        # the trigger computes from its text and its owner's key (memory/postgres_schema.py).
        stale = await self.one(
            "SELECT COUNT(*) FROM messages m JOIN users u ON u.id = m.user_id "
            "WHERE m.terms IS DISTINCT FROM membot_terms(u.fts_key, m.text)")
        if stale:
            found.append(f"full-text terms: {stale} messages' terms do not match their text")
        return found

    async def close(self) -> None:
        await self.store.close()


class Reader:
    """Read-only peeks at the database while the bot runs; any error (the bot not yet up, the file being
    created) reads as 0 and the next peek opens it again."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.db: Db | None = None

    async def one(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        try:
            if self.db is None:
                self.db = await Db.open(self.target, read_only=True)
                if self.db is None:
                    return 0
            return await self.db.one(sql, params)
        except Exception:
            await self.close()
            return 0

    async def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            with contextlib.suppress(Exception):
                await db.close()


class Drill:
    def __init__(self, args: argparse.Namespace, work: Path, target: str | None = None) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.state = State()
        # A SQLite file in the work folder, or the PostgreSQL URL (an empty database).
        self.target = target or str(work / "membot.sqlite3")
        self.backend = "postgresql" if is_postgres(self.target) else "sqlite"
        self.users = [100_001 + i for i in range(args.users)]
        self.server = FakeTelegramServer(bot_token=TOKEN, bot_username=BOT_USERNAME)

    # -- load -------------------------------------------------------------------------------------

    def send(self, user: int, *, group: bool | None = None) -> None:
        s = self.state
        s.seq += 1
        text = f"u{user} note {s.seq}: {self.rng.choice(FACTS)} ({self.rng.randint(1, 999)})"
        in_group = self.rng.random() < 0.25 if group is None else group
        if in_group:
            message = self.server.send_group_text(GROUP, user, text, mention_bot=True, first_name=f"P{user}")
            chat = GROUP
        else:
            message = self.server.send_private_text(user, text, first_name=f"P{user}")
            chat = user
        update_id = self.server._next_update_id - 1  # the id push_update just gave it
        s.sent.append(Sent(update_id, chat, int(message["message_id"]), user, text))

    def end(self, user: int) -> None:
        self.server.send_command(user, user, "/end")

    async def load(self, end_rate: float, seconds: float = float("inf")) -> None:
        """People write (bursts of one to three messages) and sometimes end their conversation."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            user = self.rng.choice(self.users)
            for _ in range(self.rng.randint(1, 3)):
                self.send(user)
            if self.rng.random() < end_rate:
                self.end(self.rng.choice(self.users))
            await asyncio.sleep(self.rng.uniform(0.05, 0.4))

    # -- kill triggers ----------------------------------------------------------------------------

    async def wait_for(self, reader: Reader, sql: str, timeout: float) -> bool:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await reader.one(sql) > 0:
                return True
            await asyncio.sleep(0.005)
        return False

    async def trigger(self, mode: str, reader: Reader) -> bool:
        if mode == "storing":
            # Bursts from different people at once; kill when some but not all of a burst are stored.
            for _ in range(20):
                base = await reader.one("SELECT COUNT(*) FROM messages WHERE author = 'user'")
                burst = self.rng.randint(4, 8)
                for user in self.rng.sample(self.users, min(burst, len(self.users))):
                    self.send(user)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    now = await reader.one("SELECT COUNT(*) FROM messages WHERE author = 'user'")
                    if base < now < base + burst:
                        return True
                    if now >= base + burst:
                        break
                    await asyncio.sleep(0.002)
                await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            return False
        baseline = await reader.one("SELECT COALESCE(MAX(id), 0) FROM messages")
        # Jobs yield to replies, so for the job modes the people pause after a while and the jobs get the model.
        seconds = self.rng.uniform(1.0, 2.5) if mode in ("session_memory", "compress") else float("inf")
        load = asyncio.create_task(self.load(end_rate=0.1 if mode in ("generating", "random") else 0.6,
                                             seconds=seconds))
        try:
            if mode == "random":
                await asyncio.sleep(self.rng.uniform(0.3, 6.0))
                return True
            if mode == "generating":
                await asyncio.sleep(self.rng.uniform(0.0, 0.4))
                return await self.wait_for(reader, (
                    "SELECT COUNT(*) FROM messages m WHERE m.author = 'user' AND m.id > "
                    f"{baseline} AND NOT EXISTS (SELECT 1 FROM messages b WHERE b.session_id = m.session_id "
                    "AND b.id > m.id)"), 15)
            kind = "session_memory" if mode == "session_memory" else "compress"
            running = f"SELECT COUNT(*) FROM jobs WHERE kind = '{kind}' AND state = 'running'"
            if kind == "compress":
                # Preferably a later compression, adding to versions that must survive it unchanged.
                hit = await self.wait_for(reader, running + " AND EXISTS (SELECT 1 FROM compressive_memories)", 12)
                hit = hit or await self.wait_for(reader, running, 10)
            else:
                hit = await self.wait_for(reader, running, 20)
            # Somewhere inside the job run: while the model writes, or as a batch is being saved.
            await asyncio.sleep(self.rng.uniform(0.0, 0.6))
            return hit
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load

    # -- checks -----------------------------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.state.violations.append(text)

    async def check(self, *, acked_up_to: int, final: bool = False) -> dict[str, int]:
        """The invariants, on the database the killed bot left (SQLite: opened read-write, so WAL recovery runs;
        PostgreSQL: the server, still up, has rolled back what the dead process left open)."""
        s = self.state
        conn = await Db.open(self.target, read_only=False)
        if conn is None:
            raise RuntimeError(f"cannot open the drill's database {self.target}")
        try:
            for problem in await conn.problems():
                self.violation(problem)

            stored: dict[tuple[str, str], list[str]] = {}
            for chat, mid, text in await conn.all(
                "SELECT c.platform_chat_id, m.platform_message_id, m.text FROM messages m "
                "JOIN chats c ON c.id = m.chat_id WHERE m.author = 'user'"
            ):
                stored.setdefault((str(chat), str(mid)), []).append(text)
            sent_keys = {(str(x.chat_id), str(x.message_id)): x for x in s.sent}
            for key, texts in stored.items():
                if len(texts) != 1:
                    self.violation(f"message {key} stored {len(texts)} times")
                x = sent_keys.get(key)
                if x is None or texts[0] != x.text:
                    self.violation(f"stored message {key} was never sent as {texts[0]!r}")
            # Acknowledged to Telegram means stored, or kept in the inbox to be stored at the next start.
            kept = {int(r[0]) for r in await conn.all("SELECT update_id FROM inbox WHERE platform = 'telegram'")}
            acked = 0
            for x in s.sent:
                if x.update_id <= acked_up_to or final:
                    acked += 1
                    if (str(x.chat_id), str(x.message_id)) in stored:
                        continue
                    if final or x.update_id not in kept:
                        self.violation(f"{'sent' if final else 'acknowledged'} update {x.update_id} "
                                       f"({x.text!r}) is not stored" + ("" if final else " nor kept"))
                    else:
                        s.counters["acked_in_inbox"] += 1

            # No job lost.
            lost = await conn.all(
                "SELECT s.id FROM sessions s WHERE s.state = 'closed' "
                "AND NOT EXISTS (SELECT 1 FROM session_memories m WHERE m.session_id = s.id) "
                "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'session_memory' "
                "AND j.key = CAST(s.id AS TEXT) AND j.state IN ('pending', 'running'))"
            )
            for (sid,) in lost:
                self.violation(f"closed session {sid} has no session memory and no job to write it")
            for scope, marker, where in (("all", "compressed_all", ""), ("public", "compressed_public",
                                                                         " AND m.private = 0")):
                rows = await conn.all(
                    f"SELECT DISTINCT m.user_id FROM session_memories m WHERE m.{marker} IS NULL{where} "
                    "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'compress' "
                    "AND j.key = CAST(m.user_id AS TEXT) || ':' || ? AND j.state IN ('pending', 'running'))",
                    (scope,),
                )
                for (uid,) in rows:
                    self.violation(f"user {uid} has uncompressed {scope} memories and no compression job")
            doubled = await conn.all(
                "SELECT session_id, COUNT(*) FROM session_memories GROUP BY session_id HAVING COUNT(*) > 1"
            )
            for sid, n in doubled:
                self.violation(f"session {sid} has {n} session memories")
            jobs = await conn.all("SELECT kind, key, COUNT(*) FROM jobs GROUP BY kind, key HAVING COUNT(*) > 1")
            for kind, key, n in jobs:
                self.violation(f"job {kind}:{key} exists {n} times")

            # Compressive versions only grow; each session memory goes into one version per scope, once.
            versions: dict[tuple[int, str, int], str] = {}
            sources: dict[tuple[int, str], list[int]] = {}
            for uid, scope, version, profile, rel, events, src in await conn.all(
                "SELECT user_id, scope, version, profile, relationship, events, source_sessions "
                "FROM compressive_memories"
            ):
                versions[(uid, scope, version)] = hashlib.sha256(
                    json.dumps([profile, rel, events, src]).encode()).hexdigest()
                for sid in json.loads(src):
                    sources.setdefault((sid, scope), []).append(version)
            for key, digest in s.versions.items():
                if versions.get(key) != digest:
                    self.violation(f"compressive memory version {key} changed or vanished")
            by_user: dict[tuple[int, str], list[int]] = {}
            for uid, scope, version in versions:
                by_user.setdefault((uid, scope), []).append(version)
            for key, vs in by_user.items():
                if sorted(vs) != list(range(1, len(vs) + 1)):
                    self.violation(f"compressive memory versions of {key} are not 1..n: {sorted(vs)}")
            for (sid, scope), vs in sources.items():
                if len(vs) > 1:
                    self.violation(f"session {sid} was compressed {len(vs)} times into scope {scope}")
            compressed: dict[tuple[int, str], int] = {}
            for sid, call, cpub in await conn.all(
                "SELECT session_id, compressed_all, compressed_public FROM session_memories"
            ):
                for scope, value in (("all", call), ("public", cpub)):
                    if value is not None:
                        compressed[(sid, scope)] = value
                        if value not in sources.get((sid, scope), []):
                            self.violation(f"session {sid} marked compressed into {scope} v{value}, not in it")
            for key, value in s.compressed.items():
                if compressed.get(key) != value:
                    self.violation(f"session memory {key} was compressed into v{value}, now {compressed.get(key)}")
            s.versions, s.compressed = versions, compressed

            counts = {
                "acked_checked": acked,
                "stored": len(stored),
                "closed_sessions": await conn.one("SELECT COUNT(*) FROM sessions WHERE state = 'closed'"),
                "session_memories": await conn.one("SELECT COUNT(*) FROM session_memories"),
                "versions": len(versions),
            }
            if final:
                open_sessions = await conn.one("SELECT COUNT(*) FROM sessions WHERE state = 'open'")
                waiting = await conn.one("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')")
                missing = await conn.one(
                    "SELECT COUNT(*) FROM sessions s WHERE NOT EXISTS "
                    "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id)")
                uncompressed = await conn.one(
                    "SELECT COUNT(*) FROM session_memories WHERE compressed_all IS NULL "
                    "OR (private = 0 AND compressed_public IS NULL)")
                inbox = await conn.one("SELECT COUNT(*) FROM inbox")
                for name, value in (("open sessions", open_sessions), ("waiting jobs", waiting),
                                    ("updates left in the inbox", inbox),
                                    ("sessions without a session memory", missing),
                                    ("uncompressed session memories", uncompressed)):
                    if value:
                        self.violation(f"after settling: {value} {name}")
            return counts
        finally:
            await conn.close()

    async def settled(self, reader: Reader) -> bool:
        return (
            not self.server.pending_updates
            and await reader.one("SELECT COUNT(*) FROM sessions WHERE state = 'open'") == 0
            and await reader.one("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')") == 0
            and await reader.one("SELECT COUNT(*) FROM sessions s WHERE NOT EXISTS "
                           "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id)") == 0
        )

    async def database_version(self) -> str:
        if self.backend == "sqlite":
            return f"SQLite {sqlite3.sqlite_version}"
        db = await Db.open(self.target, read_only=True)
        assert db is not None
        try:
            rows = await db.all("SHOW server_version")
            return f"PostgreSQL {rows[0][0]}"
        finally:
            await db.close()

    # -- the drill --------------------------------------------------------------------------------

    async def wait_polling(self, bot: Bot, mark: int) -> None:
        await self.server.wait_for_call("getUpdates", timeout=90, start=mark)

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        await self.server.start()
        config = _config(self.work, self.server, self.target)
        bot = Bot(self.work, config)
        rounds: list[dict[str, Any]] = []
        try:
            for number in range(self.args.rounds):
                mode = MODES[number % len(MODES)]
                mark = len(self.server.calls)
                await bot.start(f"round-{number:02d}")
                await self.wait_polling(bot, mark)
                reader = Reader(self.target)
                t0 = time.monotonic()
                try:
                    hit = await self.trigger(mode, reader)
                finally:
                    await reader.close()
                await bot.kill()
                alive = time.monotonic() - t0
                confirmed = self.server.confirmed_update_id
                before = len(self.state.violations)
                counts = await self.check(acked_up_to=confirmed)
                self.state.counters[f"mode:{mode}"] += 1
                self.state.counters[f"hit:{mode}"] += int(hit)
                rounds.append({"round": number, "mode": mode, "trigger_hit": hit, "alive_s": round(alive, 2),
                               "acked_update_id": confirmed, "sent": len(self.state.sent),
                               "new_violations": len(self.state.violations) - before, **counts})
                if self.args.verbose:
                    print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)

            # Settle: one more start, no new load; everything owed is done, then a clean stop.
            mark = len(self.server.calls)
            await bot.start("final")
            await self.wait_polling(bot, mark)
            reader = Reader(self.target)
            deadline = time.monotonic() + self.args.settle_timeout
            try:
                while time.monotonic() < deadline and not await self.settled(reader):  # noqa: ASYNC110 - polls another process' database
                    await asyncio.sleep(0.2)
            finally:
                await reader.close()
            code = await bot.stop()
            if code != 0:
                self.violation(f"the bot exited with {code} on SIGTERM")
            final = await self.check(acked_up_to=self.server.confirmed_update_id, final=True)
            version = await self.database_version()
        finally:
            await bot.kill()
            await self.server.stop()

        logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(self.work.glob("*.log")))
        secret = TOKEN.split(":", 1)[1]
        if TOKEN in logs or secret in logs:
            self.violation("the bot token appears in the logs")
        foreign = netaudit.foreign(self.work / "net.jsonl")
        if foreign:
            self.violation(f"connections off this machine: {foreign[:5]}")
        if "Traceback" in logs:
            self.violation("a traceback in the logs")
        c = self.state.counters
        return {
            "ok": not self.state.violations,
            "backend": self.backend,
            "rounds": self.args.rounds,
            "seed": self.args.seed,
            "users": self.args.users,
            "kills_by_mode": {m: c[f"mode:{m}"] for m in MODES if c[f"mode:{m}"]},
            "kills_at_target_moment": {m: c[f"hit:{m}"] for m in MODES if c[f"mode:{m}"]},
            "messages_sent": len(self.state.sent),
            "acked_but_not_yet_stored_at_a_kill_found_in_the_inbox": c["acked_in_inbox"],
            "messages_stored": final["stored"],
            "closed_sessions": final["closed_sessions"],
            "session_memories": final["session_memories"],
            "compressive_versions": final["versions"],
            "violations": len(self.state.violations),
            "first_violations": self.state.violations[:20],
            "connections_checked": len(netaudit.destinations(self.work / "net.jsonl")),
            "wall_s": round(time.monotonic() - started, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                       f"{version}",
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "per_round": rounds,
        }


async def run_drill(args: argparse.Namespace) -> dict[str, Any]:
    if args.postgres_url is None and args.backend == "postgresql":
        return await _on_own_cluster(args)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
        return await Drill(args, work, args.postgres_url).run()
    with tempfile.TemporaryDirectory(prefix="membot-crash-") as tmp:
        return await Drill(args, Path(tmp), args.postgres_url).run()


async def _on_own_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """`--backend postgresql` without a URL: a throwaway cluster (tests/postgres_server.py) with one empty
    database, stopped and deleted at the end whatever happens."""
    import asyncpg

    from tests.postgres_server import Cluster, binaries

    bindir = binaries()
    if bindir is None:
        raise SystemExit("--backend postgresql: PostgreSQL's initdb and pg_ctl were not found; install "
                         "PostgreSQL or give --postgres-url")
    cluster = Cluster(bindir)
    try:
        await asyncio.to_thread(cluster.start)
        conn = await asyncpg.connect(cluster.url("postgres"))
        try:
            await conn.execute("CREATE DATABASE crash_drill")
        finally:
            await conn.close()
        return await run_drill(argparse.Namespace(**{**vars(args), "postgres_url": cluster.url("crash_drill")}))
    finally:
        await asyncio.to_thread(cluster.stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="SIGKILLs (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=8, help="simulated people (default 8)")
    parser.add_argument("--settle-timeout", type=float, default=90.0)
    parser.add_argument("--keep", help="work in this folder and keep it (database, logs)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="sqlite (default: a file in the work folder) or postgresql (a throwaway cluster "
                             "started and stopped here, unless --postgres-url names a database)")
    parser.add_argument("--postgres-url", metavar="URL",
                        help="run on this empty PostgreSQL database (postgresql://user@host:port/name; a "
                             "password from PGPASSWORD) instead of SQLite; implies --backend postgresql")
    parser.add_argument("--verbose", action="store_true", help="one JSON line per round on stderr")
    args = parser.parse_args(argv)
    if args.postgres_url is not None:
        if not is_postgres(args.postgres_url):
            parser.error("--postgres-url: a postgresql://... URL")
        args.backend = "postgresql"
    return args


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # a killed bot drops its connections
    summary = asyncio.run(run_drill(parse_args(argv)))
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
