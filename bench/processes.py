"""Processes: replies/s and memory jobs/min with 1, 2 and 4 `membot run` processes on one PostgreSQL database,
against 1 process on SQLite (the most a SQLite file allows), on the fake model.

    .venv/bin/python bench/processes.py            # full run (~2-3 minutes on 2 cores)
    .venv/bin/python bench/processes.py --quick    # a smoke test (under a minute)

Needs PostgreSQL's programs (initdb, pg_ctl: tests/postgres_server.py starts a throwaway cluster, fsync off).

Each setup gets fresh databases and its own real processes (`python -m bot.cli --config X run`, Telegram in
webhook mode, `[model] backend = "fake"`, so the figures are the bot's own work: HTTP, storage, Python;
no model time). This script plays Telegram (tests/fakes/telegram_api.py) and the load balancer: every
update is posted to the next process in turn.

replies: `--people` simulated people each send `--messages` messages one after another (closed loop: the
next once the bot's reply to the previous one has reached the fake Telegram server). Replies/s = replies /
wall time of the run; latency per reply = from posting the update to the sendMessage call arriving. One
warm-up message per process first (not timed). Inactivity timeout 1 h and no job run during the phase.
Run twice per setup, each on a fresh database: `replies` as shipped, where python-telegram-bot's
AIORateLimiter holds each process to Telegram's 30 requests/s per bot (so with the fake model the replies
queue there: latency ~ people / 30 s), and `replies_unthrottled`, the same processes with that overall limit
off (`overall_max_rate = 0`, patched in by the launcher below, no file changed): what the processes and the
database can do. The limiter is per process, so N replicas allow N x 30/s, which the real Telegram would
answer with 429s (the fake one does not enforce it).

jobs: a backlog of `--sessions` closed sessions, one per person, of `--turns` messages each, stored through
the SessionManager (so their session-memory jobs are the ones production queues), is held back
(`not_before` far in the future) while the processes start (`[jobs] interval = --jobs-interval`, the
scheduler every process runs), then released at once. Timed from the release to the last job finished
(the `updated` time of the last job done, read once every closed session has its memory and no job is
queued): each session-memory job queues its person's compression, so the jobs counted are the session
memories and the compressions (2 per session here). Some of the fake model's outputs do not parse
(`malformed_outputs_retried`): those jobs are pending again at once and taken by a later scheduler run, so
the tail of the phase waits up to a few `--jobs-interval`s, as production would. `duplicate_session_memories`
must be 0 (each session remembered once whichever process took it); `per_process_session_memories` is read
from each process's "memory jobs: ..." log lines. `cpu_s`: CPU seconds each side spent in the timed window
(this driver, the bot processes, the PostgreSQL server), and their share of all the machine's cores.

Every process's log is read at the end: ERROR records are counted (`process_log_errors`, the first ones
printed on stderr), except a jobs run cut short by the benchmark's own SIGTERM, counted apart
(`process_log_errors_cancelled_at_stop`). `--logs DIR` keeps the configs and logs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import NAMES, emit, log, machine, percentile, rounded, seed_history, user_message

from tests.membot_process import WebhookReplica
from tests.ports import free_port

TOKEN = "6262626262:AAH-bench-processes-SECRET"
SECRET = "bench-processes-webhook-secret"
HELD = 1e12  # `not_before` of the held-back backlog: far in the future
FIRST_PERSON = 800_000
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")  # a log record's first line (bot/cli.py)


# Warnings this benchmark causes on purpose: no Discord token, the readiness probe's post without the secret,
# and the scheduler skipping a jobs run while the previous one (draining the backlog) still works.
BENIGN = ("not started: the environment variable", "refused a webhook post without the right secret",
          "skipped: maximum number of running instances reached")


# `membot run` with PTB's overall rate limit off (overall_max_rate = 0; AIORateLimiter's default is Telegram's
# 30 requests/s per bot, kept by each process on its own): what the processes and the database can do.
UNTHROTTLED = """
import sys
import bot.telegram_adapter as adapter

class Unthrottled(adapter.RateLimiter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "overall_max_rate": 0})

adapter.RateLimiter = Unthrottled
from bot.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _level(line: str) -> str | None:
    match = RECORD.match(line)
    return match.group(1) if match else None


def _when(line: str) -> float:
    """The time of a log record (bot/cli.py's asctime: local time, milliseconds after a comma)."""
    stamp, _, millis = line[:23].partition(",")
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    except ValueError:
        return 0.0


def _cpu_of(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds used so far: user + system) of a process, from /proc; (0, 0.0) if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0, 0.0


class CpuMeter:
    """CPU seconds spent in a timed window by this driver, the bot processes and the PostgreSQL server (its
    postmaster and every backend alive at the end of the window; Linux /proc)."""

    def __init__(self, postmaster: int | None) -> None:
        self.postmaster = postmaster
        self._start: dict[str, dict[int, float]] = {}
        self._wall = 0.0

    def _postgres(self) -> dict[int, float]:
        if self.postmaster is None:
            return {}
        found = {self.postmaster: _cpu_of(self.postmaster)[1]}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                parent, used = _cpu_of(int(entry.name))
                if parent == self.postmaster:
                    found[int(entry.name)] = used
        return found

    def _snapshot(self, bots: list[int]) -> dict[str, dict[int, float]]:
        times = os.times()
        return {"driver": {0: times.user + times.system}, "bot_processes": {p: _cpu_of(p)[1] for p in bots},
                "postgresql": self._postgres()}

    def start(self, bots: list[int]) -> None:
        self._start = self._snapshot(bots)
        self._wall = time.perf_counter()

    def stop(self, bots: list[int]) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        end = self._snapshot(bots)
        used = {part: rounded(sum(v - self._start[part].get(pid, 0.0) for pid, v in end[part].items()) or 0.0)
                for part in end}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        used["share_of_all_cores"] = rounded(sum(used.values()) / (wall * cores))
        return used


class Replica(WebhookReplica):
    """One `membot run` process: a Telegram webhook replica on its own port."""

    def __init__(self, folder: Path, name: str, storage: str, telegram: Any, jobs_interval: str,
                 unthrottled: bool = False) -> None:
        self.name = name
        port = free_port()
        config = folder / f"{name}.toml"
        config.write_text(
            f"""
{storage}
[model]
backend = "fake"
[sessions]
inactivity_timeout = "1h"
[jobs]
interval = "{jobs_interval}"
[telegram]
base_url = "{telegram.base_url}"
base_file_url = "{telegram.base_file_url}"
mode = "webhook"
webhook_url = "https://bot.example.invalid/hook"
webhook_listen = "127.0.0.1"
webhook_port = {port}
webhook_secret_env = "MEMBOT_BENCH_WEBHOOK_SECRET"
""", encoding="utf-8")
        super().__init__(config, folder / f"{name}.log",
                         {"TELEGRAM_BOT_TOKEN": TOKEN, "MEMBOT_BENCH_WEBHOOK_SECRET": SECRET}, port,
                         program=("-c", UNTHROTTLED) if unthrottled else ("-m", "bot.cli"))

    def log_records(self) -> list[list[str]]:
        """This process's log, one list of lines per record (a traceback stays with its record)."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        records: list[list[str]] = []
        for line in lines:
            if RECORD.match(line) or not records:
                records.append([line])
            else:
                records[-1].append(line)
        return records

    def jobs_written(self) -> dict[str, int]:
        """What this process's scheduler said it did ("memory jobs: ..." lines, summed)."""
        text = "\n".join(r[0] for r in self.log_records() if "memory jobs: " in r[0])
        found = {key: sum(int(m) for m in re.findall(pattern, text)) for key, pattern in (
            ("session_memories", r"wrote (\d+) session memor"),
            ("compressive_versions", r"(\d+) compressive memory version"),
            ("malformed_outputs", r"(\d+) malformed output"),
            ("fallbacks", r"\((\d+) extractive fallback\)"))}
        return found


class Fleet:
    """N replicas on one database, started together; stopped (always) with their logs read."""

    def __init__(self, folder: Path, label: str, storage: str, telegram: Any, count: int, jobs_interval: str,
                 unthrottled: bool = False) -> None:
        self.replicas = [Replica(folder, f"{label}-{i}", storage, telegram, jobs_interval, unthrottled)
                         for i in range(count)]
        self.exit_codes: list[int | None] = []
        self.stopped_at = float("inf")

    async def start(self, http: Any) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(r.start() for r in self.replicas))
        await asyncio.gather(*(r.ready(http, tries=1200) for r in self.replicas))
        return time.perf_counter() - start

    @property
    def pids(self) -> list[int]:
        return [r.proc.pid for r in self.replicas if r.proc is not None]

    async def stop(self) -> None:
        self.stopped_at = time.time()
        self.exit_codes = list(await asyncio.gather(*(r.stop() for r in self.replicas)))

    def health(self) -> dict[str, Any]:
        """The processes' ERROR records (in full on stderr, counted in the JSON) and unexpected WARNINGs.
        A jobs run cut short by the stop (SIGTERM) is counted apart: `cancelled_at_stop`."""
        errors: list[list[str]] = []
        at_stop = 0
        warnings: list[str] = []
        for replica in self.replicas:
            for record in replica.log_records():
                level = _level(record[0])
                if level in ("ERROR", "CRITICAL") or record[0].startswith("Traceback"):
                    if "CancelledError" in record[-1] and _when(record[0]) >= self.stopped_at - 1:
                        at_stop += 1
                    else:
                        errors.append(record)
                elif level == "WARNING" and not any(b in record[0] for b in BENIGN):
                    warnings.append(record[0])
        for record in errors[:5]:
            log("process log error:\n" + "\n".join(record[:60]))
        for line in sorted(set(warnings))[:5]:
            log(f"process log warning: {line}")
        return {"process_log_errors": len(errors), "process_log_warnings": len(warnings),
                "process_log_errors_cancelled_at_stop": at_stop,
                "process_log_first_errors": [f"{r[0][:200]} ... {r[-1][:200]}" if len(r) > 1 else r[0][:300]
                                             for r in errors[:3]],
                "exit_codes": self.exit_codes}


def _storage(kind: str, target: str) -> str:
    return f'[storage]\nurl = "{target}"' if kind == "postgresql" else f'[storage]\npath = "{target}"'


async def replies(kind: str, target: str, count: int, folder: Path, label: str, args: argparse.Namespace,
                  meter: CpuMeter, *, unthrottled: bool = False) -> dict[str, Any]:
    import aiohttp

    from memory.store import Store
    from tests.fakes.telegram_api import FakeTelegramServer
    from tests.membot_process import post_update

    async with Store.at(target):  # the schema, before the processes start
        pass
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[float]] = {}
    unexpected: list[str] = []
    async with FakeTelegramServer(bot_token=TOKEN, bot_username="membot_bench_bot") as server, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        def on_send(call: Any) -> Any:
            result = server._m_sendmessage(call)  # the fake's own sendMessage, then: whose reply is it
            text = str(call.params.get("text"))
            future = waiting.pop(text, None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())
            else:
                unexpected.append(text)
            return result

        server.set_handler("sendMessage", on_send)
        fleet = Fleet(folder, f"replies{'-unthrottled' if unthrottled else ''}-{label}", _storage(kind, target),
                      server, count, "1h", unthrottled)
        turn = itertools.count()
        update_ids = itertools.count(1)
        latencies: list[float] = []
        unanswered = 0

        async def deliver(update: dict[str, Any], replica: int | None = None) -> None:
            """Telegram's side: to the next replica in turn (or to `replica`), until one answers 200."""
            ports = [r.port for r in fleet.replicas]
            if replica is not None:
                await post_update(http, [ports[replica]], update, SECRET)
            else:
                await post_update(http, ports, update, SECRET, next(turn))

        async def say(user: int, text: str, replica: int | None = None) -> float | None:
            message = server.send_private_text(user, text, first_name=NAMES[user % len(NAMES)])
            future: asyncio.Future[float] = loop.create_future()
            waiting[f"echo: {text}"] = future
            sent = time.perf_counter()
            await deliver({"update_id": next(update_ids), "message": message}, replica)
            try:
                return await asyncio.wait_for(future, args.reply_timeout) - sent
            except TimeoutError:
                waiting.pop(f"echo: {text}", None)
                return None

        async def person(index: int) -> None:
            nonlocal unanswered
            rng = random.Random(index)
            for m in range(args.messages):
                took = await say(FIRST_PERSON + index, f"{user_message(rng)} (ref {index}-{m})")
                if took is None:
                    unanswered += 1
                else:
                    latencies.append(took)

        try:
            startup = await fleet.start(http)
            for r in range(count):  # warm-up, one message through each process (not timed)
                await say(FIRST_PERSON - 1 - r, f"Hello, warming up process {r}.", replica=r)
            meter.start(fleet.pids)
            start = time.perf_counter()
            await asyncio.gather(*(person(i) for i in range(args.people)))
            wall = time.perf_counter() - start
            cpu = meter.stop(fleet.pids)
            typing = len(server.calls_of("sendChatAction"))
        finally:
            await fleet.stop()
    async with Store.at(target) as store:
        stored = int(await store.scalar(
            "SELECT COUNT(*) FROM messages WHERE author = 'user' AND text LIKE '%(ref %'") or 0)
    result = {
        "processes": count,
        "startup_s": rounded(startup),
        "people": args.people,
        "messages_per_person": args.messages,
        "replies": len(latencies),
        "unanswered": unanswered,
        "unexpected_or_duplicate_replies": len(unexpected),
        "user_messages_stored": stored,
        "wall_s": rounded(wall),
        "replies_per_s": rounded(len(latencies) / wall),
        "latency_p50_s": rounded(percentile(latencies, 50)),
        "latency_p95_s": rounded(percentile(latencies, 95)),
        "typing_actions_sent": typing,
        "cpu_s": cpu,
        **fleet.health(),
    }
    return result


async def seed_backlog(target: str, sessions: int, turns: int) -> None:
    """`sessions` people with one closed session each (jobs queued by the SessionManager), held back."""
    from memory.sessions import SessionManager
    from memory.store import Store

    async with Store.at(target) as store:
        manager = SessionManager(store)
        rng = random.Random(11)
        for i in range(sessions):
            await seed_history(manager, platform="telegram", user_id=str(FIRST_PERSON + i),
                               name=NAMES[i % len(NAMES)], past_sessions=1, turns=turns, rng=rng,
                               start=time.time() - 86_400)
        async with store.write() as db:
            await db.execute("UPDATE jobs SET not_before = ? WHERE state = 'pending'", (HELD,))
        queued = await store.scalar("SELECT COUNT(*) FROM jobs WHERE kind = 'session_memory' AND state = 'pending'")
        if queued != sessions:
            raise RuntimeError(f"expected {sessions} queued session-memory jobs, found {queued}")


async def jobs(kind: str, target: str, count: int, folder: Path, label: str, args: argparse.Namespace,
               meter: CpuMeter) -> dict[str, Any]:
    import aiohttp

    from memory.store import Store
    from tests.fakes.telegram_api import FakeTelegramServer

    async with FakeTelegramServer(bot_token=TOKEN, bot_username="membot_bench_bot") as server, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        fleet = Fleet(folder, f"jobs-{label}", _storage(kind, target), server, count, args.jobs_interval)
        try:
            startup = await fleet.start(http)
            async with Store.at(target) as store:
                meter.start(fleet.pids)
                released = time.time()
                async with store.write() as db:
                    await db.execute("UPDATE jobs SET not_before = 0 WHERE state = 'pending'")
                deadline = time.monotonic() + args.jobs_timeout
                first_claim = None
                while first_claim is None and time.monotonic() < deadline:
                    if await store.scalar("SELECT COUNT(*) FROM jobs WHERE state != 'pending'"):
                        first_claim = time.time() - released
                    else:
                        await asyncio.sleep(0.01)
                left = queued = -1
                while time.monotonic() < deadline:
                    row = await store.fetchone(
                        "SELECT (SELECT COUNT(*) FROM sessions s WHERE s.state = 'closed' AND NOT EXISTS "
                        "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id)), "
                        "(SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running'))")
                    assert row is not None
                    left, queued = int(row[0]), int(row[1])
                    if left == 0 and queued == 0:
                        break
                    await asyncio.sleep(0.1)
                cpu = meter.stop(fleet.pids)
                finished = float(await store.scalar("SELECT MAX(updated) FROM jobs WHERE state = 'done'") or released)
                done = {str(r[0]): int(r[1]) for r in await store.fetchall(
                    "SELECT kind, COUNT(*) FROM jobs WHERE state = 'done' GROUP BY kind")}
                failed = int(await store.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") or 0)
                memories = int(await store.scalar("SELECT COUNT(*) FROM session_memories") or 0)
                remembered = int(await store.scalar("SELECT COUNT(DISTINCT session_id) FROM session_memories") or 0)
                duplicates = len(await store.fetchall(
                    "SELECT session_id FROM session_memories GROUP BY session_id HAVING COUNT(*) > 1"))
                versions = int(await store.scalar("SELECT COUNT(*) FROM compressive_memories") or 0)
        finally:
            await fleet.stop()
    wall = max(finished - released, 1e-9)
    jobs_done = done.get("session_memory", 0) + done.get("compress", 0)
    split = [r.jobs_written() for r in fleet.replicas]
    return {
        "processes": count,
        "startup_s": rounded(startup),
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "finished": left == 0 and queued == 0,
        "first_claim_after_s": None if first_claim is None else rounded(first_claim),
        "session_memory_jobs_done": done.get("session_memory", 0),
        "compress_jobs_done": done.get("compress", 0),
        "jobs_failed": failed,
        "session_memories": memories,
        "sessions_remembered": remembered,
        "duplicate_session_memories": duplicates,
        "compressive_versions": versions,
        "wall_s": rounded(wall),
        "jobs_per_min": rounded(60 * jobs_done / wall),
        "session_memories_per_min": rounded(60 * done.get("session_memory", 0) / wall),
        "per_process_session_memories": [p["session_memories"] for p in split],
        "per_process_compressive_versions": [p["compressive_versions"] for p in split],
        "malformed_outputs_retried": sum(p["malformed_outputs"] for p in split),
        "extractive_fallbacks": sum(p["fallbacks"] for p in split),
        "cpu_s": cpu,
        **fleet.health(),
    }


async def create_database(cluster: Any, name: str, template: str | None = None) -> str:
    import asyncpg

    conn = await asyncpg.connect(cluster.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    finally:
        await conn.close()
    return str(cluster.url(name))


async def run(args: argparse.Namespace, cluster: Any, folder: Path) -> dict[str, Any]:
    counts = [int(n) for n in args.processes.split(",")]
    try:
        postmaster: int | None = int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        postmaster = None
    meter = CpuMeter(postmaster)
    results: dict[str, Any] = {}

    log(f"seeding the backlog: {args.sessions} closed sessions of {args.turns} messages (SQLite and PostgreSQL)")
    sqlite_backlog = str(folder / "jobs-sqlite.sqlite3")
    await seed_backlog(sqlite_backlog, args.sessions, args.turns)
    await create_database(cluster, "backlog")
    await seed_backlog(cluster.url("backlog"), args.sessions, args.turns)

    setups: list[tuple[str, str, int]] = [("sqlite_1", "sqlite", 1)]
    setups += [(f"postgresql_{n}", "postgresql", n) for n in counts]
    for label, kind, count in setups:
        if kind == "sqlite":
            reply_targets = [str(folder / f"replies-{n}-sqlite.sqlite3") for n in range(2)]
            jobs_target = sqlite_backlog
        else:
            reply_targets = [await create_database(cluster, f"replies_{n}_{count}") for n in range(2)]
            jobs_target = await create_database(cluster, f"jobs_{count}", template="backlog")
        entry: dict[str, Any] = {"storage": kind, "processes": count}
        for key, target, unthrottled in (("replies", reply_targets[0], False),
                                         ("replies_unthrottled", reply_targets[1], True)):
            log(f"{label}: {key}, {args.people} people x {args.messages} messages")
            entry[key] = await replies(kind, target, count, folder, label, args, meter, unthrottled=unthrottled)
            log(f"{label}: {key} {entry[key]}")
        log(f"{label}: memory jobs, backlog of {args.sessions} sessions")
        entry["jobs"] = await jobs(kind, jobs_target, count, folder, label, args, meter)
        log(f"{label}: jobs {entry['jobs']}")
        results[label] = entry

    def ratio(a: str, b: str, phase: str, key: str) -> float | None:
        if a not in results or b not in results:
            return None
        return rounded(results[a][phase][key] / results[b][phase][key])

    ratios: dict[str, Any] = {}
    for phase, key in (("replies", "replies_per_s"), ("replies_unthrottled", "replies_per_s"),
                       ("jobs", "jobs_per_min")):
        for n in counts:
            if n != 1:
                ratios[f"postgresql_{n}_over_1_{phase}"] = ratio(f"postgresql_{n}", "postgresql_1", phase, key)
        ratios[f"postgresql_1_over_sqlite_1_{phase}"] = ratio("postgresql_1", "sqlite_1", phase, key)
    from bot.config import JobSettings

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "benchmark": "processes",
        "quick": args.quick,
        "model": "fake",
        "settings": {"people": args.people, "messages_per_person": args.messages, "sessions": args.sessions,
                     "turns_per_session": args.turns, "processes": counts, "jobs_interval": args.jobs_interval,
                     "jobs_batch_size": JobSettings().batch_size,
                     "jobs_counted": "session_memory and compress jobs done (each session memory written queues "
                                     "its person's compression); malformed outputs retried are counted apart",
                     "postgresql": "throwaway local cluster, fsync and "
                     "synchronous_commit off (tests/postgres_server.py)"},
        "results": results,
        "ratios": ratios,
        "correctness": {
            "duplicate_session_memories": sum(r["jobs"]["duplicate_session_memories"] for r in results.values()),
            "unexpected_or_duplicate_replies": sum(r[p]["unexpected_or_duplicate_replies"] for r in results.values()
                                                   for p in ("replies", "replies_unthrottled")),
            "unanswered": sum(r[p]["unanswered"] for r in results.values() for p in ("replies", "replies_unthrottled")),
            "all_jobs_finished": all(r["jobs"]["finished"] for r in results.values()),
        },
        "limits": (
            f"This machine has {cores} cores, shared by every bot process, the PostgreSQL server (one backend "
            "process per connection) and this driver (the fake Telegram server and all the simulated people, in "
            "one Python process): with the fake model each request is CPU work, so more processes than cores "
            "cannot add CPU, only spread the same cores thinner and add switching; the 2- and 4-process figures "
            "show the cost and correctness of sharing one database, not the scaling a machine with a core per "
            "process (and PostgreSQL on its own host) would give. The `replies` figures are also capped by "
            "python-telegram-bot's rate limiter at Telegram's 30 requests/s, per process (`replies_unthrottled` "
            "turns it off)."
        ),
    }


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer people, messages and sessions: a smoke test")
    parser.add_argument("--people", type=int, default=64, help="simulated people, all at once")
    parser.add_argument("--messages", type=int, default=10, help="messages each person sends, one after another")
    parser.add_argument("--sessions", type=int, default=1000, help="closed sessions in the memory-job backlog")
    parser.add_argument("--turns", type=int, default=6, help="messages per backlog session (user and bot)")
    parser.add_argument("--processes", default="1,2,4", help="PostgreSQL process counts, comma-separated")
    parser.add_argument("--jobs-interval", default="0.1s", help="[jobs] interval of the processes in the jobs phase")
    parser.add_argument("--reply-timeout", type=float, default=120.0, help="seconds before a reply counts as lost")
    parser.add_argument("--logs", metavar="DIR", help="keep the processes' configs and logs in DIR")
    parser.add_argument("--jobs-timeout", type=float, default=900.0, help="seconds before the jobs phase gives up")
    args = parser.parse_args(argv)
    if args.quick:
        args.people, args.messages, args.sessions, args.turns = 8, 3, 40, 4

    from tests.postgres_server import Cluster, binaries

    bindir = binaries()
    if bindir is None:
        sys.exit("bench/processes.py needs PostgreSQL's programs (initdb, pg_ctl); none found")
    # SIGTERM as Ctrl-C: the processes and the cluster are stopped on the way out (the finally blocks).
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="membot-bench-processes-"))
    logs = Path(args.logs) if args.logs else None
    cluster = Cluster(bindir)
    try:
        cluster.start()
        result = asyncio.run(run(args, cluster, folder))
    finally:
        cluster.stop()
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            for kept in [*folder.glob("*.log"), *folder.glob("*.toml")]:
                shutil.copy(kept, logs / kept.name)
        shutil.rmtree(folder, ignore_errors=True)
    result["wall_s_total"] = rounded(time.perf_counter() - started)
    result["machine"] = machine()
    emit(result)


if __name__ == "__main__":
    main()
