"""Load: 1, 8 and 32 simulated people chatting at once through the dispatcher, embedded model; the batching
model worker (the config's max_batch) vs one prompt at a time (max_batch = 1).

    .venv/bin/python bench/load.py            # full run (~8-10 minutes on 2 cores)
    .venv/bin/python bench/load.py --quick    # a smoke test

Every simulated person sends their messages one after another (the next once the reply is back), all
people at once; each reply goes through the whole path (store, context with FTS5 retrieval, worker, store).
Replies/s = replies / wall time of the run; latency is per reply, from sending to the reply. Replies are
capped at `--max-new-tokens` (48 by default, not the config's 160, to keep the one-at-a-time runs within
minutes); both modes use the same model object, prompts and settings.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    KeepOpen,
    bench_settings,
    log,
    percentile,
    rounded,
    run_and_emit,
    user_message,
)


async def one_run(backend: Any, users: int, messages: int, max_batch: int, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import App
    from bot.incoming import IncomingMessage

    with tempfile.TemporaryDirectory(prefix="membot-bench-") as tmp:
        settings = bench_settings(Path(tmp) / "bench.sqlite3", model__max_new_tokens=args.max_new_tokens,
                                  model__max_batch=max_batch)
        app = await App.create(settings, backend=KeepOpen(backend))
        await app.start(schedule=False)
        latencies: list[float] = []
        tokens = 0
        apologies = 0

        async def person(index: int) -> None:
            nonlocal tokens, apologies
            rng = random.Random(1000 + index)
            for m in range(messages):
                msg = IncomingMessage(platform="bench", user_id=f"u{index}", display_name=f"User{index}",
                                      chat_id=f"dm-{index}", chat_kind="dm", text=user_message(rng),
                                      message_id=f"{index}-{m}")
                t0 = time.perf_counter()
                reply = await app.dispatcher.handle(msg)
                latencies.append(time.perf_counter() - t0)
                apologies += reply.kind == "apology"

        try:
            start = time.perf_counter()
            await asyncio.gather(*(person(i) for i in range(users)))
            wall = time.perf_counter() - start
            stats = app.worker.stats
            tokens = stats.generated_tokens
            batches, max_seen = stats.batches, stats.max_batch_seen
        finally:
            await app.close()
    replies = len(latencies)
    return {
        "replies": replies,
        "wall_s": rounded(wall),
        "replies_per_s": rounded(replies / wall),
        "latency_p50_s": rounded(percentile(latencies, 50)),
        "latency_p95_s": rounded(percentile(latencies, 95)),
        "new_tokens_per_s": rounded(tokens / wall),
        "model_batches": batches,
        "largest_batch": max_seen,
        "apologies": apologies,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bot.config import ModelSettings
    from models.factory import build_backend

    model_settings = bench_settings(Path(tempfile.gettempdir()) / "unused.sqlite3", model__threads=args.threads,
                                    model__quantize=args.quantize).model
    assert isinstance(model_settings, ModelSettings)
    backend = build_backend(model_settings)
    from models.base import GenParams, Prompt

    backend.generate([Prompt(messages=(("user", "Hello!"),))], GenParams(max_new_tokens=2))  # warm-up
    batching = args.max_batch or model_settings.max_batch
    results: dict[str, Any] = {}
    plan = list(zip([int(u) for u in args.users.split(",")], [int(m) for m in args.messages.split(",")],
                    strict=True))
    for users, messages in plan:
        entry: dict[str, Any] = {"users": users, "messages_per_user": messages}
        for label, max_batch in (("batching", batching), ("one_at_a_time", 1)):
            entry[label] = await one_run(backend, users, messages, max_batch, args)
            log(f"{users} users, {label}: {entry[label]}")
        entry["speedup_replies_per_s"] = rounded(
            entry["batching"]["replies_per_s"] / entry["one_at_a_time"]["replies_per_s"])
        results[f"users_{users}"] = entry
    top = results[f"users_{plan[-1][0]}"]
    return {
        "benchmark": "load",
        "model": backend.name,
        "quick": args.quick,
        "settings": {"max_new_tokens": args.max_new_tokens, "max_batch_batching": batching,
                     "batch_wait_ms": model_settings.batch_wait_ms, "quantize": args.quantize},
        "results": results,
        "target": f"replies/s at {plan[-1][0]} users >= 3x one-at-a-time",
        "target_met": top["speedup_replies_per_s"] >= 3.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 users, tiny replies: a smoke test")
    parser.add_argument("--users", default="1,8,32", help="simultaneous people, comma-separated")
    parser.add_argument("--messages", default="3,1,1", help="messages each person sends, one per --users value")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-batch", type=int, default=None, help="the batching run's max_batch (config's)")
    parser.add_argument("--threads", type=int, default=None, help="model.threads (default: the config's)")
    parser.add_argument("--quantize", default="none", choices=["none", "int4"], help="model.quantize")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.messages, args.max_new_tokens = "1,2", "1,1", 4
    run_and_emit(run, args)


if __name__ == "__main__":
    main()
