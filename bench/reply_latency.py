"""Reply latency: the full dispatcher path vs raw generation of the identical prompt, embedded model.

    .venv/bin/python bench/reply_latency.py            # full run (~2-4 minutes on 2 cores)
    .venv/bin/python bench/reply_latency.py --quick    # a smoke test

The person has history (past sessions found by FTS5, a compressive memory), so every reply does the real
work: store the message, build the memory-grounded context, queue on the model worker, generate, store the
reply. Each dispatcher reply is followed, on the same model, by
  - `backend.generate` of the prompt the dispatcher built (same tokens, same lean decode loop): the
    dispatcher's own overhead, and the issue's target (≤ 5 %);
  - transformers' `model.generate` of the same token ids with the same settings (what the bot would pay
    without the lean loop).
Greedy decoding makes all three produce the same tokens; the JSON says whether they did.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from _common import (
    add_compressive_memory,
    bench_settings,
    log,
    rounded,
    run_and_emit,
    seed_history,
    user_message,
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import App
    from bot.incoming import IncomingMessage
    from models.factory import build_backend

    with tempfile.TemporaryDirectory(prefix="membot-bench-") as tmp:
        settings = bench_settings(
            Path(tmp) / "bench.sqlite3", model__max_new_tokens=args.max_new_tokens, model__threads=args.threads,
            model__quantize=args.quantize, model__dtype=args.dtype,
        )
        start = time.perf_counter()
        backend = build_backend(settings.model)
        load_s = time.perf_counter() - start
        chosen = str(next(backend.model.parameters()).dtype).removeprefix("torch.")
        app = await App.create(settings, backend=backend)
        await app.start(schedule=False)
        captured: list[Any] = []
        app.dispatcher.prompt_hooks.append(lambda msg, prompt: captured.append(prompt))
        rng = random.Random(7)
        try:
            user_pk = await seed_history(
                app.sessions, platform="bench", user_id="alice", name="Alice", past_sessions=args.past_sessions,
                turns=12, rng=rng, start=time.time() - 90 * 86_400,
            )
            await add_compressive_memory(app.store, user_pk, "Alice", rng, time.time() - 86_400)
            params = app.dispatcher.profile.reply_params(
                settings.model.max_new_tokens, settings.model.temperature, settings.model.top_p,
                settings.model.repetition_penalty,
            )
            pairs = []
            warmup = 0 if args.quick else 1  # the first pair warms caches up and is not counted
            for i in range(1 - warmup, args.messages + 1):
                text = user_message(rng)
                msg = IncomingMessage(platform="bench", user_id="alice", display_name="Alice",
                                      chat_id="dm-alice", chat_kind="dm", text=text, message_id=f"m{i}")
                busy_before = app.worker.stats.busy_seconds
                t0 = time.perf_counter()
                reply = await app.dispatcher.handle(msg)
                dispatcher_s = time.perf_counter() - t0
                model_s = app.worker.stats.busy_seconds - busy_before
                prompt = captured[-1]
                t0 = time.perf_counter()
                raw = backend.generate([prompt], params)[0]
                raw_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                rows = backend._generate(backend.encode([prompt]), params)  # transformers' model.generate()
                hf_s = time.perf_counter() - t0
                hf_text = backend._finish(rows[0], params).text
                entry = {
                    "dispatcher_s": dispatcher_s, "worker_busy_s": model_s, "raw_backend_s": raw_s,
                    "raw_hf_generate_s": hf_s, "new_tokens": raw.new_tokens,
                    "prompt_tokens": int(backend.encode([prompt])["input_ids"].shape[1]),
                    "same_text_as_dispatcher": app.dispatcher.profile.clean_reply(raw.text).strip()
                    in reply.text,
                    "hf_generate_same_tokens": hf_text == raw.text,
                }
                log(f"message {i}: dispatcher {dispatcher_s:.2f}s raw {raw_s:.2f}s hf {hf_s:.2f}s "
                    f"({raw.new_tokens} tokens)")
                if i > 0:
                    pairs.append(entry)
        finally:
            await app.close()

    total = {k: sum(p[k] for p in pairs) for k in ("dispatcher_s", "raw_backend_s", "raw_hf_generate_s",
                                                   "worker_busy_s")}
    ratios = [p["dispatcher_s"] / p["raw_backend_s"] for p in pairs]
    overhead = total["dispatcher_s"] / total["raw_backend_s"] - 1.0
    return {
        "benchmark": "reply_latency",
        "model": backend.name,
        "quick": args.quick,
        "settings": {"max_new_tokens": args.max_new_tokens, "quantize": args.quantize, "dtype": args.dtype,
                     "dtype_chosen": chosen,
                     "past_sessions": args.past_sessions, "messages": args.messages,
                     "reply_context_tokens": settings.memory.reply_context_tokens},
        "model_load_s": rounded(load_s),
        "dispatcher_s_total": rounded(total["dispatcher_s"]),
        "raw_backend_generate_s_total": rounded(total["raw_backend_s"]),
        "raw_hf_model_generate_s_total": rounded(total["raw_hf_generate_s"]),
        "overhead_ratio": rounded(total["dispatcher_s"] / total["raw_backend_s"]),
        "overhead_pct": rounded(100 * overhead),
        "overhead_ratio_median_per_message": rounded(median(ratios)),
        "non_model_time_per_reply_ms": rounded(
            1000 * (total["dispatcher_s"] - total["worker_busy_s"]) / len(pairs)),
        # The same overhead without the noise of two separate generations: the dispatcher's time outside the
        # model worker's forward passes, relative to those forward passes.
        "non_model_overhead_pct": rounded(
            100 * (total["dispatcher_s"] - total["worker_busy_s"]) / total["worker_busy_s"]),
        "ratio_to_hf_model_generate": rounded(total["dispatcher_s"] / total["raw_hf_generate_s"]),
        "target_overhead_pct_max": 5.0,
        "target_met": overhead <= 0.05,
        "all_same_text": all(p["same_text_as_dispatcher"] for p in pairs),
        "hf_generate_same_tokens": all(p["hf_generate_same_tokens"] for p in pairs),
        "per_message": [{k: rounded(v) if isinstance(v, float) else v for k, v in p.items()} for p in pairs],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short message: a smoke test")
    parser.add_argument("--messages", type=int, default=8, help="measured messages (after one warm-up)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="reply length limit (config default)")
    parser.add_argument("--past-sessions", type=int, default=30, help="past sessions of history for the person")
    parser.add_argument("--threads", type=int, default=None, help="model.threads (default: the config's)")
    parser.add_argument("--quantize", default="none", choices=["none", "int4"], help="model.quantize")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="model.dtype")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.max_new_tokens, args.past_sessions = 1, 8, 3
    run_and_emit(run, args)


if __name__ == "__main__":
    main()
