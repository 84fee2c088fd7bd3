"""Memory jobs: session memories (COMEDY task 1) written per minute, batched vs sequential, embedded model.

    .venv/bin/python bench/jobs.py            # full run (~9 minutes on 2 cores)
    .venv/bin/python bench/jobs.py --quick    # a smoke test

`--sessions` people each leave one closed session of `--turns` turns (stored through the SessionManager, so
their session-memory jobs are queued as in production). The same database (copied) is then processed twice
by the job runner's own code: claims of `jobs.batch_size` jobs, each claim one `write_session_memories` call
(one model batch), until no session-memory job is left (malformed outputs are retried as in production,
then replaced by the extractive fallback). Batched = the config's `jobs.batch_size` (32 claimed at once;
the local model decodes `model.max_batch` of them at a time with continuous batching); sequential =
batch size 1. Compression (task 2) is not part of the timing. Outputs are capped at `memory_max_new_tokens`
(the config's 200). A third run (batched) sends one reply a third of the way in and times it: the job
batch yields to it between decode steps.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    KeepOpen,
    bench_settings,
    log,
    rounded,
    run_and_emit,
    seed_history,
)


async def build_database(path: Path, sessions: int, turns: int) -> None:
    from memory.sessions import SessionManager
    from memory.store import Store

    store = await Store.open(path)
    try:
        manager = SessionManager(store)
        rng = random.Random(11)
        for i in range(sessions):
            await seed_history(manager, platform="bench", user_id=f"u{i}", name=rng.choice(("Anna", "Ben", "Chloe",
                               "David", "Emma", "Farid", "Grace", "Hugo")), past_sessions=1, turns=turns, rng=rng,
                               start=time.time() - 86_400)
    finally:
        await store.close()


PROBE = "Hi! What should I cook tonight?"


async def _probe_reply(worker: Any) -> float:
    """Seconds one reply takes through the worker (greedy, 16 new tokens)."""
    from models.base import GenParams, Prompt
    from models.worker import Priority

    start = time.perf_counter()
    await worker.generate([Prompt(messages=(("user", PROBE),))], GenParams(max_new_tokens=16), Priority.REPLY)
    return time.perf_counter() - start


async def one_run(backend: Any, db: Path, batch_size: int, args: argparse.Namespace,
                  probe_after: float | None = None) -> dict[str, Any]:
    """`probe_after`: send one reply that many seconds into the run and time it (jobs yield to replies)."""
    from bot.app import App
    from memory.tasks import TaskReport, write_session_memories

    settings = bench_settings(db, jobs__batch_size=batch_size, model__memory_max_new_tokens=args.max_new_tokens)
    app = await App.create(settings, backend=KeepOpen(backend))
    await app.start(schedule=False)
    runner = app.jobs
    report = TaskReport()
    probe: asyncio.Future[float] | None = None
    idle_reply = None
    try:
        if probe_after is not None:
            idle_reply = await _probe_reply(app.memory_worker)

            async def later() -> float:
                await asyncio.sleep(probe_after)
                return await _probe_reply(app.memory_worker)

            probe = asyncio.ensure_future(later())
        start = time.perf_counter()
        for _ in range(settings.jobs.max_attempts):  # retry rounds, as run_until_idle would do them
            seen: set[int] = set()
            while ids := await runner._claim("session_memory", seen):
                seen.update(ids)
                report.add(await write_session_memories(
                    app.store, app.memory_worker, runner.profile, ids, bot_name=settings.bot.name,
                    max_new_tokens=runner.max_new_tokens, max_attempts=runner.max_attempts, clock=runner.clock,
                    retry_backoff=runner.retry_backoff,
                ))
            await runner._release(seen)
            if not await app.store.scalar("SELECT COUNT(*) FROM jobs WHERE kind = 'session_memory' AND state = 'pending'"):
                break
        wall = time.perf_counter() - start
        during = await probe if probe is not None else None
        stored = await app.store.scalar("SELECT COUNT(*) FROM session_memories")
        batches, largest = app.memory_worker.stats.batches, app.memory_worker.stats.max_batch_seen
    finally:
        await app.close()
    return {
        "session_memories_written": report.written,
        "stored": int(stored or 0),
        "from_model": report.written - report.fallbacks,
        "fallbacks": report.fallbacks,
        "malformed_outputs_retried": report.malformed,
        "generated_tokens": report.generated_tokens,
        "wall_s": rounded(wall),
        "memories_per_minute": rounded(60 * report.written / wall),
        "model_batches": batches,
        "largest_batch": largest,
        **({} if probe_after is None else {
            "reply_sent_after_s": probe_after, "reply_idle_s": rounded(idle_reply or 0.0),
            "reply_during_job_batch_s": rounded(during or 0.0),
        }),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from models.base import GenParams, Prompt
    from models.factory import build_backend

    with tempfile.TemporaryDirectory(prefix="membot-bench-") as tmp:
        template = Path(tmp) / "template.sqlite3"
        await build_database(template, args.sessions, args.turns)
        model_settings = bench_settings(template, model__threads=args.threads, model__quantize=args.quantize,
                                        model__dtype=args.dtype).model
        backend = build_backend(model_settings)
        chosen = str(next(backend.model.parameters()).dtype).removeprefix("torch.")
        backend.generate([Prompt(messages=(("user", "Hello!"),))], GenParams(max_new_tokens=2))  # warm-up
        modes: dict[str, Any] = {}
        for label, batch_size in (("batched", args.batch_size), ("sequential", 1)):
            db = Path(tmp) / f"{label}.sqlite3"
            shutil.copy(template, db)
            modes[label] = await one_run(backend, db, batch_size, args)
            log(f"{label}: {modes[label]}")
        if args.reply_probe:
            # A third run, batched, with one reply arriving in the middle of the job batch: it is answered
            # between decode steps instead of waiting for the batch (without yielding it would wait the
            # batch's remaining time, ~wall_s - reply_sent_after_s).
            db = Path(tmp) / "probe.sqlite3"
            shutil.copy(template, db)
            modes["batched_with_reply"] = await one_run(backend, db, args.batch_size, args,
                                                        probe_after=modes["batched"]["wall_s"] / 3)
            log(f"batched_with_reply: {modes['batched_with_reply']}")
    speedup = modes["batched"]["memories_per_minute"] / modes["sequential"]["memories_per_minute"]
    return {
        "benchmark": "jobs",
        "model": backend.name,
        "quick": args.quick,
        "settings": {"sessions": args.sessions, "turns_per_session": args.turns, "batch_size": args.batch_size,
                     "memory_max_new_tokens": args.max_new_tokens, "quantize": args.quantize, "dtype": args.dtype,
                     "dtype_chosen": chosen},
        "batched": modes["batched"],
        "sequential": modes["sequential"],
        "speedup": rounded(speedup),
        "reply_during_jobs": modes.get("batched_with_reply"),
        "target": "batched >= 3x sequential",
        "target_met": speedup >= 3.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 sessions, tiny outputs: a smoke test")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--turns", type=int, default=10, help="messages per session (user and bot)")
    parser.add_argument("--batch-size", type=int, default=32, help="jobs.batch_size of the batched run (the default)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="model.memory_max_new_tokens")
    parser.add_argument("--threads", type=int, default=None, help="model.threads (default: the config's)")
    parser.add_argument("--quantize", default="none", choices=["none", "int4"], help="model.quantize")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="model.dtype")
    parser.add_argument("--no-reply-probe", dest="reply_probe", action="store_false",
                        help="skip the third run that times a reply sent in the middle of a job batch")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.turns, args.max_new_tokens, args.batch_size = 2, 4, 8, 2
    run_and_emit(run, args)


if __name__ == "__main__":
    main()
