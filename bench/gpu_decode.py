"""GPU decode speed (issue #17 item 6): transformers' generate() against the project's own decode loops and
transformers' static cache (+ torch.compile), on one CUDA GPU.

Why: the own loops (models/decode.py) were built and measured on a 2-core CPU.
(The own CUDA-graph path that this script also measured on 2026-12-04, 2.1-4.9x generate() against 5.1-6.7x
for transformers' static cache + torch.compile, was deleted after that run: docs/benchmarks.md "GPU".) On a GPU a small model's decode step is
dominated by kernel launches and Python overhead, so the ranking can differ from the CPU's. This script
answers, for a SmolLM2-135M-shaped model (the bot's model) and a larger ~1.1B Llama (TinyLlama shape),
both with random weights (nothing is downloaded), bfloat16, batches 1 and 64, 128-token random prompts and
128 new tokens per row:

* end-to-end new tokens/s (prefill included), ms per decode step (after the first token), time to the
  first token, and the ratios of each variant to generate();
* whether each variant's greedy tokens equal generate()'s (identical rows, first differing position; with
  bfloat16 small divergences are possible and are reported, not treated as failures);
* the latency of one batch-1 reply that arrives while a batch-64 job is decoding, through the real
  ModelWorker (models/worker.py) with a small backend that feeds token ids (no tokenizer needed);
* ``bot_gpu_path``: the same job batch and reply through the bot's own engine on its GPU path
  (TransformersBackend with decode="static", fed token ids): the first calls' times (compiling, on CUDA), a
  job batch's new tokens/s, a reply alone and a reply sent a quarter of the way into a job batch.

Variants, in the order they are measured (most important first; `--max-seconds` stops starting new
measurements, so what runs out of time is the least important):

1. ``generate``: ``model.generate(do_sample=False, min_new_tokens=max_new_tokens)`` with EOS disabled, so
   every row makes the same number of tokens (the reference);
2. ``own_decode``: ``models.decode.decode`` (DynamicCache with in-place growing layers);
3. ``own_continuous``: ``models.decode.decode`` with ``max_rows`` = the batch;
   (1-3 for the small model, then the large one)
4. the reply-during-a-job figure, then the bot's GPU path (`bot_gpu_path`), both on the small model;
5. ``hf_static``: ``generate(cache_implementation="static", disable_compile=True)``;
6. ``hf_static_compiled``: ``generate(cache_implementation="static")``, the bot's own GPU path since
   2026-12-05 (models/transformers_backend.py: pick_decode); on CUDA transformers then compiles
   the decode step itself with ``torch.compile(mode="reduce-overhead")`` (its default CompileConfig), which
   is what ``model.forward = torch.compile(model.forward, mode="reduce-overhead")`` would do for the decode
   steps; the warm-up time is the compilation. Each compilation runs under its own time limit.

Each variant runs once to warm up (its tokens are the ones compared), then ``--repeats`` timed runs with
``torch.cuda.synchronize()`` on both sides; the fastest counts.

Run (from the repository root; needs only torch, transformers and the standard library)::

    python3 bench/gpu_decode.py                   # the GPU run (about 7 minutes at most)
    python3 bench/gpu_decode.py --json-out "$OUT/gpu_decode.json"  # also keep the JSON in a file
    python3 bench/gpu_decode.py --max-seconds 300 # stop starting measurements after 300 s
    .venv/bin/python bench/gpu_decode.py --quick  # CPU smoke test: tiny models, seconds

Output: one JSON object on stdout; progress on stderr. The script imports only torch, transformers, the
standard library and models.decode / kv_cache / worker / base / transformers_backend (none of which import
anything else), so it runs where the bot's other dependencies are not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

STARTED = time.perf_counter()

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The values of .cache/test-models/SmolLM2-135M-Instruct/config.json (the bot's embedded model).
SMOLLM2_135M = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
    "rms_norm_eps": 9.999999747378752e-06, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
# TinyLlama-1.1B's shape: a larger model whose steps are less launch-bound.
LLAMA_1B = {
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}
TINY = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
TINY_WIDER = {**TINY, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 8,
              "tie_word_embeddings": False}

VARIANTS = ("generate", "own_decode", "own_continuous", "hf_static",
            "hf_static_compiled")
CUDA_ONLY = {"hf_static_compiled"}
# A job batch's prompts are prefilled this many at a time (models/transformers_backend.PREFILL_ROWS).
JOB_PREFILL_ROWS = 2
WORKER_BATCH_WAIT_MS = 5.0  # the bot's default model.batch_wait_ms (bot/config.py)


def log(message: str) -> None:
    elapsed = time.perf_counter() - STARTED
    print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def short_error(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
    text = f"{type(exc).__name__}: {exc}"
    return (text[:600] + "...") if len(text) > 600 else text + (f" (at {where})" if where else "")


class TimeLimit(BaseException):
    """Raised by SIGALRM: the measurement in progress ran past its limit (BaseException so that the
    libraries' and the measurement's `except Exception` do not swallow it)."""


class Terminated(BaseException):
    """SIGTERM: emit what was measured and exit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise TimeLimit()


def _on_term(signum: int, frame: Any) -> None:
    raise Terminated()


class Budget:
    """`max_seconds` after the start no new measurement starts; a measurement still running at
    `max_seconds + grace` is interrupted (SIGALRM) so the JSON is always printed."""

    def __init__(self, max_seconds: float, grace: float) -> None:
        self.max_seconds = max_seconds
        self.hard = max_seconds + grace

    def elapsed(self) -> float:
        return time.perf_counter() - STARTED

    def open(self) -> bool:
        return self.elapsed() < self.max_seconds

    def limit(self, own_limit: float | None = None) -> float:
        left = self.hard - self.elapsed()
        return max(0.0, left if own_limit is None else min(own_limit, left))


class alarm:
    """`with alarm(seconds):` raises TimeLimit in the main thread after `seconds` (0: no alarm)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        if self.seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


# --------------------------------------------------------------------------------------
# Runners: each returns (rows of new tokens, perf_counter time when the first token was known or None)
# --------------------------------------------------------------------------------------


def sync(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_generate(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int, device: str,
                 **extra: Any) -> tuple[list[list[int]], float | None]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    first: list[float] = []

    class FirstToken(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if not first:
                sync(torch, device)
                first.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([FirstToken()]), **extra,
        )
    return out[:, ids.shape[1]:].tolist(), (first[0] if first else None)


def _marker() -> tuple[list[float], Callable[[], bool]]:
    """A `should_stop` that records when it is polled: before the prefill, then after every chosen token
    (the token list has been copied to the host by then, so the time is synchronised)."""
    marks: list[float] = []

    def poll() -> bool:
        marks.append(time.perf_counter())
        return False

    return marks, poll


def run_own(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int,
            device: str) -> tuple[list[list[int]], float | None]:
    from models.base import GenParams
    from models.decode import decode

    marks, poll = _marker()
    rows = decode(model, ids, mask, GenParams(max_new_tokens=new_tokens), should_stop=poll)
    return rows, (marks[1] if len(marks) > 1 else None)


def run_continuous(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int,
                   device: str) -> tuple[list[list[int]], float | None]:
    from models.base import GenParams
    from models.decode import decode

    marks, poll = _marker()
    rows = decode(model, ids, mask, GenParams(max_new_tokens=new_tokens), max_rows=ids.shape[0],
                             should_stop=poll)
    return rows, (marks[1] if len(marks) > 1 else None)


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def compare_rows(rows: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    prefixes = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                for a, b in zip(rows, reference, strict=True)]
    identical = sum(a == b for a, b in zip(rows, reference, strict=True))
    differing = [p for p, a, b in zip(prefixes, rows, reference, strict=True) if a != b]
    return {
        "identical_rows": identical,
        "rows": len(rows),
        "first_diff_pos": min(differing) if differing else None,
        "mean_common_prefix": rounded(sum(prefixes) / len(prefixes)) if prefixes else None,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, device: str, dtype: Any) -> None:
        self.args = args
        self.device = device
        self.dtype = dtype
        self.budget = Budget(args.max_seconds, args.grace_seconds)
        self.results: dict[str, Any] = {}
        self.reference: dict[tuple[str, int], list[list[int]]] = {}
        self.not_run: list[str] = []
        self.inputs: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.interrupted = False  # a measurement was cut by its time limit

    def slot(self, model_key: str, batch: int) -> dict[str, Any]:
        return self.results.setdefault(model_key, {}).setdefault(f"batch_{batch}", {})

    def prompts(self, model_key: str, model: Any, batch: int) -> tuple[Any, Any]:
        import torch

        key = (model_key, batch)
        if key not in self.inputs:
            generator = torch.Generator().manual_seed(1000 + batch)
            vocab = model.config.vocab_size
            ids = torch.randint(3, vocab, (batch, self.args.prompt_len), generator=generator)
            self.inputs[key] = (ids.to(self.device), torch.ones_like(ids).to(self.device))
        return self.inputs[key]

    def measure(self, model_key: str, model: Any, batch: int, variant: str,
                run: Callable[..., tuple[list[list[int]], float | None]], *, own_limit: float | None = None,
                after_warmup: Callable[[], dict[str, Any]] | None = None) -> None:
        import torch

        slot = self.slot(model_key, batch)
        label = f"{model_key} batch {batch} {variant}"
        if variant in self.args.skip:
            slot[variant] = {"status": "skipped: --skip"}
            return
        if variant in CUDA_ONLY and not self.device.startswith("cuda"):
            slot[variant] = {"status": "skipped: no CUDA"}
            return
        if not self.budget.open():
            slot[variant] = {"status": f"skipped: time budget ({self.args.max_seconds:g}s) spent"}
            self.not_run.append(label)
            return
        ids, mask = self.prompts(model_key, model, batch)
        n = self.args.new_tokens
        record: dict[str, Any] = {"status": "ok"}
        runs: list[tuple[float, float | None]] = []
        limit = self.budget.limit(own_limit)
        try:
            with alarm(limit):
                sync(torch, self.device)
                start = time.perf_counter()
                rows, _ = run(model, ids, mask, n, self.pad_id(model), self.device)
                sync(torch, self.device)
                record["warmup_s"] = rounded(time.perf_counter() - start)
                if after_warmup is not None:
                    record.update(after_warmup())
                for _ in range(self.args.repeats):
                    if not self.budget.open():
                        record["repeats_cut_by_budget"] = True
                        break
                    sync(torch, self.device)
                    start = time.perf_counter()
                    _, first = run(model, ids, mask, n, self.pad_id(model), self.device)
                    sync(torch, self.device)
                    end = time.perf_counter()
                    runs.append((end - start, None if first is None else first - start))
        except Terminated:
            slot[variant] = {"status": "interrupted: SIGTERM"}
            raise
        except TimeLimit:
            self.interrupted = True
            record["status"] = f"error: time limit ({limit:.0f}s)"
            log(f"{label}: time limit")
        except Exception as exc:
            record["status"] = "error"
            record["error"] = short_error(exc)
            log(f"{label}: {record['error']}")
            try:
                sync(torch, self.device)
            except Exception as again:
                record["error_after_sync"] = short_error(again)
        if record["status"] != "ok":
            slot[variant] = record
            return

        if not runs:  # the budget ran out after the warm-up: report the warm-up, flagged
            record["warmup_only"] = True
            runs = [(record["warmup_s"], None)]
        total, ttft = min(runs, key=lambda r: r[0])
        record["new_tokens_per_s"] = rounded(batch * n / total)
        record["total_s"] = rounded(total)
        record["runs_s"] = [rounded(r[0]) for r in runs]
        if ttft is not None and n > 1:
            record["ttft_ms"] = rounded(ttft * 1000)
            record["decode_ms_per_step"] = rounded((total - ttft) / (n - 1) * 1000)
            record["decode_tokens_per_s"] = rounded(batch * (n - 1) / (total - ttft))
        reference = self.reference.get((model_key, batch))
        if variant == "generate":
            self.reference[(model_key, batch)] = rows
        elif reference is not None:
            record["vs_generate_tokens"] = compare_rows(rows, reference)
        elif variant == "own_decode":  # generate failed: keep the own loop as the reference of the rest
            self.reference[(model_key, batch)] = rows
            record["reference_for_token_checks"] = True
        base = slot.get("generate", {})
        if variant != "generate" and base.get("status") == "ok":
            record["speedup_vs_generate"] = rounded(record["new_tokens_per_s"] / base["new_tokens_per_s"])
            if "decode_ms_per_step" in record and "decode_ms_per_step" in base:
                record["step_speedup_vs_generate"] = rounded(base["decode_ms_per_step"] / record["decode_ms_per_step"])
        slot[variant] = record
        log(f"{label}: {record['new_tokens_per_s']} tok/s, {record.get('decode_ms_per_step')} ms/step, "
            f"x{record.get('speedup_vs_generate', 1.0)} vs generate, tokens {record.get('vs_generate_tokens')}")

    @staticmethod
    def pad_id(model: Any) -> int:
        pad = model.config.pad_token_id
        return int(pad) if pad is not None else 0


# --------------------------------------------------------------------------------------
# A reply during a job batch, through the real model worker
# --------------------------------------------------------------------------------------


class IdsBackend:
    """The smallest backend the ModelWorker can drive, like TransformersBackend._lean but fed token ids
    (a prompt's text is a key into a table of random ids): jobs go through decode(max_rows=...) with the
    worker's between-steps callback, replies through decode()."""

    def __init__(self, model: Any, table: dict[str, Any], pad_id: int, device: str) -> None:
        from models.base import Capabilities

        self.capabilities = Capabilities(between_steps=True, continuous_batching=True)
        self.name = "bench-ids"
        self.device = device
        self.model = model
        self.table = table
        self.pad_id = pad_id
        self.polls = 0
        self.poll_target: int | None = None
        self.reached = threading.Event()

    def generate(self, prompts: Any, params: Any, *, on_text: Any = None,
                 between_steps: Callable[[], None] | None = None, max_rows: int | None = None,
                 cancelled: Callable[[], bool] | None = None) -> list[Any]:
        import torch

        from models.base import Generation, GenParams
        from models.decode import decode

        ids = torch.stack([self.table[p.text] for p in prompts])
        mask = torch.ones_like(ids)
        decode_params = GenParams(max_new_tokens=params.max_new_tokens)
        if between_steps is None:
            rows = decode(self.model, ids, mask, decode_params)
        else:
            def poll() -> bool:
                self.polls += 1
                if self.poll_target is not None and self.polls >= self.poll_target:
                    self.reached.set()
                between_steps()
                return False

            rows = decode(self.model, ids, mask, decode_params, max_rows=max_rows or ids.shape[0],
                                     prefill_rows=JOB_PREFILL_ROWS, should_stop=poll)
        return [Generation(text="", new_tokens=len(r)) for r in rows]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        pass


def static_ids_backend(model: Any, table: dict[str, Any], pad_id: int, device: str) -> Any:
    """The bot's own engine on its GPU path: models.transformers_backend.TransformersBackend with
    decode="static" (generate() with a static cache, compiled by transformers on CUDA), fed token ids, since
    random weights have no tokenizer. Only the text ends are replaced: prompts come from the table, outputs
    are token counts."""
    import torch

    from models.base import Generation
    from models.transformers_backend import TransformersBackend

    class StaticIdsBackend(TransformersBackend):
        def encode(self, prompts: Any) -> Any:
            ids = torch.stack([self.table[p.text] for p in prompts])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def _finish(self, row: list[int], params: Any) -> Any:
            return Generation(text="", new_tokens=len(row))

        def stop_token_ids(self) -> tuple[int, ...]:
            return ()

    stub = SimpleNamespace(padding_side="left", pad_token_id=pad_id, eos_token=None, eos_token_id=None)
    backend = StaticIdsBackend(model, stub, name="bench-ids-static", device=device, decode="static")
    backend.table = table  # type: ignore[attr-defined]
    return backend


def reply_during_job(bench: Bench, model: Any, job_batch: int, path: str = "own") -> dict[str, Any]:
    """`path` "own": the own loop, which serves the reply between the job's decode steps. "static": the bot's
    GPU path (the real TransformersBackend), where the job batch runs whole and the reply waits for it; the
    reply is sent a quarter of the way into the job (by the job's time alone), and the warm-up times, which
    include compiling on CUDA, are reported."""
    import torch

    from models.base import GenParams, Prompt
    from models.worker import ModelWorker, Priority

    args = bench.args
    name = "reply_during_job" if path == "own" else "bot_gpu_path"
    if name in args.skip:
        return {"status": "skipped: --skip"}
    if not bench.budget.open():
        bench.not_run.append(name)
        return {"status": f"skipped: time budget ({args.max_seconds:g}s) spent"}
    generator = torch.Generator().manual_seed(7)
    vocab = model.config.vocab_size
    table = {f"job-{i}": torch.randint(3, vocab, (args.prompt_len,), generator=generator).to(bench.device)
             for i in range(job_batch)}
    table["reply"] = torch.randint(3, vocab, (args.prompt_len,), generator=generator).to(bench.device)
    if path == "own":
        backend = IdsBackend(model, table, bench.pad_id(model), bench.device)
    else:
        backend = static_ids_backend(model, table, bench.pad_id(model), bench.device)
    worker = ModelWorker(backend, max_batch=job_batch, batch_wait_ms=WORKER_BATCH_WAIT_MS)
    # Every row makes new_tokens tokens (random weights' EOS must not end rows at random places).
    params = GenParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    # The reply arrives after the job's prefill groups and about a quarter of its decode steps.
    target = -(-job_batch // JOB_PREFILL_ROWS) + max(1, args.new_tokens // 4)
    out: dict[str, Any] = {
        "status": "ok", "job_rows": job_batch, "reply_rows": 1, "new_tokens_each": args.new_tokens,
        "job_prefill_rows": JOB_PREFILL_ROWS, "reply_arrives_after_job_polls": target,
        "worker_batch_wait_ms": WORKER_BATCH_WAIT_MS,
        "how": "models.worker.ModelWorker with a token-id backend (decode(max_rows=...) for the job, decode() for "
               "the reply), as TransformersBackend._lean does; tokenizer and bot app not involved. Latency is "
               "submit to result; a reply to an idle worker also waits the worker's batch_wait_ms, one served "
               "inside a job batch does not",
    }
    if path != "own":
        out["how"] = ("models.worker.ModelWorker with the bot's TransformersBackend on decode='static' (its GPU "
                      "path: generate() with a static cache, compiled by transformers on CUDA), fed token ids; "
                      "the job batch runs whole, the reply is sent a quarter of the job's time alone into it")
        out["decode"] = backend.decode
        for own_only in ("job_prefill_rows", "reply_arrives_after_job_polls"):
            del out[own_only]

    def timed_reply() -> float:
        done: list[float] = []
        start = time.perf_counter()
        future = worker.submit(Prompt(text="reply"), params, Priority.REPLY)
        future.add_done_callback(lambda _f: done.append(time.perf_counter()))
        future.result(timeout=300)
        return (done[0] if done else time.perf_counter()) - start

    def job(with_reply: bool) -> tuple[float, float | None]:
        if path == "own":
            backend.polls, backend.poll_target = 0, (target if with_reply else None)
            backend.reached.clear()
        start = time.perf_counter()
        futures = [worker.submit(Prompt(text=f"job-{i}"), params, Priority.JOB) for i in range(job_batch)]
        latency = None
        if with_reply:
            if path != "own":
                time.sleep(min(job_alone) / 4)
            elif not backend.reached.wait(timeout=300):
                raise RuntimeError("the job batch never reached the reply's arrival point")
            latency = timed_reply()
        for f in futures:
            f.result(timeout=600)
        return time.perf_counter() - start, latency

    try:
        with alarm(bench.budget.limit()):
            worker.start()
            out["warmup_reply_s"] = rounded(timed_reply())  # on the static path: compiling, on CUDA
            out["warmup_job_s"] = rounded(job(with_reply=False)[0])
            alone, during, job_alone, job_with = [], [], [], []
            for _ in range(max(1, args.repeats)):
                if not bench.budget.open():
                    out["repeats_cut_by_budget"] = True
                    break
                alone.append(timed_reply())
                job_alone.append(job(with_reply=False)[0])
                total, latency = job(with_reply=True)
                job_with.append(total)
                assert latency is not None
                during.append(latency)
            if not during:
                raise RuntimeError("no repeat fitted in the time budget")
            out["job_batch_seen_by_worker"] = worker.stats.max_batch_seen
            out["reply_alone_ms"] = [rounded(x * 1000) for x in alone]
            out["reply_during_job_ms"] = [rounded(x * 1000) for x in during]
            out["job_alone_s"] = [rounded(x) for x in job_alone]
            out["job_with_reply_s"] = [rounded(x) for x in job_with]
            out["reply_slowdown_during_job_best"] = rounded(min(during) / min(alone)) if alone else None
            out["job_new_tokens_per_s_best"] = rounded(job_batch * args.new_tokens / min(job_alone))
            if path == "own":
                out["job_polls_per_run"] = backend.polls
    except TimeLimit:
        bench.interrupted = True
        out["status"] = "error: time limit"
    except Exception as exc:
        out["status"] = "error"
        out["error"] = short_error(exc)
    finally:
        try:
            asyncio.run(asyncio.wait_for(worker.close(), timeout=60))
        except BaseException as exc:  # a stuck thread must not cost the JSON
            out["close_error"] = short_error(exc)
    log(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'how'})}")
    return out


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def build_model(values: dict[str, Any], device: str, dtype: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**values)
    torch.manual_seed(0)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    except Exception as exc:  # some versions initialise on CPU only: build there, then move
        log(f"building on {device} failed ({exc}); building on CPU")
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").to(device)
    if next(model.parameters()).device.type != torch.device(device).type:
        model = model.to(device)
    model.eval()
    model.generation_config.eos_token_id = None  # every row makes exactly max_new_tokens tokens
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_capability"] = list(torch.cuda.get_device_capability())
        info["gpu_memory_gib"] = rounded(torch.cuda.get_device_properties(0).total_memory / 2**30)
    else:
        info["torch_threads"] = torch.get_num_threads()
    return info


def shape(values: dict[str, Any]) -> str:
    return (f"layers {values['num_hidden_layers']}, hidden {values['hidden_size']}, intermediate "
            f"{values['intermediate_size']}, heads {values['num_attention_heads']}/{values['num_key_value_heads']} kv, "
            f"head_dim {values['head_dim']}, vocab {values['vocab_size']}, tied {values['tie_word_embeddings']}, "
            f"rope_theta {values['rope_parameters']['rope_theta']:g}")


def to_json(obj: Any, depth: int = 0, pretty_depth: int = 4) -> str:
    """JSON with objects indented down to `pretty_depth` and everything deeper on one line: one variant's
    record per line, about half the size of indented JSON (the full GPU run prints ~20 kB; keep the file
    with --json-out where only an output tail comes back)."""
    if depth >= pretty_depth or not isinstance(obj, dict) or not obj:
        return json.dumps(obj, separators=(", ", ": "))
    pad = " " * (depth + 1)
    items = [f"{pad}{json.dumps(str(k))}: {to_json(v, depth + 1, pretty_depth)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per model and batch: variant -> [new tokens/s, ms per decode step, x generate (end to end)]."""
    table: dict[str, Any] = {}
    for model_key, batches in results.items():
        for batch_key, variants in batches.items():
            row = {}
            for name, rec in variants.items():
                if rec.get("status") == "ok":
                    row[name] = [rec.get("new_tokens_per_s"), rec.get("decode_ms_per_step"),
                                 rec.get("speedup_vs_generate", 1.0 if name == "generate" else None)]
                else:
                    row[name] = rec.get("status")
            table[f"{model_key}/{batch_key}"] = row
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke test: tiny random models, batches 1 and 2, 8 new tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant after one warm-up; best counts")
    parser.add_argument("--max-seconds", type=float, default=420.0,
                        help="no new measurement starts after this many seconds from the start")
    parser.add_argument("--grace-seconds", type=float, default=60.0,
                        help="a measurement still running at max-seconds + this is interrupted")
    parser.add_argument("--compile-seconds", type=float, default=180.0,
                        help="time limit of one hf_static_compiled measurement (compilation included)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,64)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per row (default 128)")
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per row (default 128)")
    parser.add_argument("--models", default=None, help="comma-separated: smollm2_135m_shape,llama_1b_shape")
    parser.add_argument("--skip", default="", help=f"comma-separated variants to skip: {', '.join(VARIANTS)}, "
                                                   "reply_during_job, bot_gpu_path")
    parser.add_argument("--json-out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)

    import torch

    cuda = torch.cuda.is_available() and not args.quick
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.quick:
        specs = {"tiny_2layer": TINY, "tiny_2layer_wider": TINY_WIDER}
        batches = [1, 2]
        args.new_tokens = args.new_tokens or 8
        args.prompt_len = args.prompt_len or 16
        args.repeats = min(args.repeats, 2)
    else:
        specs = {"smollm2_135m_shape": SMOLLM2_135M, "llama_1b_shape": LLAMA_1B}
        batches = [1, 64]
        args.new_tokens = args.new_tokens or 128
        args.prompt_len = args.prompt_len or 128
    if args.models:
        wanted = [m.strip() for m in args.models.split(",")]
        specs = {k: specs[k] for k in wanted if k in specs}
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    if not cuda and not args.quick:
        log("no CUDA: running on CPU (the CUDA-only variants are skipped); use --quick for a smoke test")

    bench = Bench(args, device, dtype)
    result: dict[str, Any] = {
        "benchmark": "gpu_decode",
        "issue": "#17 item 6",
        "quick": args.quick,
        "environment": environment(device),
        "settings": {
            "dtype": str(dtype).removeprefix("torch."), "batches": batches, "prompt_tokens": args.prompt_len,
            "new_tokens_per_row": args.new_tokens, "repeats": args.repeats, "greedy": True,
            "eos": "disabled (generate: eos_token_id=None, min_new_tokens=max_new_tokens)",
            "attention": "sdpa", "weights": "random (seed 0)", "max_seconds": args.max_seconds,
            "timing": "best of the repeats after one warm-up, torch.cuda.synchronize() before and after",
        },
        "models": {},
    }
    if device == "cpu":
        result["environment"]["note"] = "CPU run: the CUDA-only variants report 'skipped: no CUDA'"
    models: dict[str, Any] = {}
    interrupted = None

    def get_model(key: str) -> Any:
        if key not in models:
            start = time.perf_counter()
            models[key] = build_model(specs[key], device, dtype)
            params = sum(p.numel() for p in models[key].parameters())
            result["models"][key] = {"params_m": rounded(params / 1e6), "shape": shape(specs[key]),
                                     "build_s": rounded(time.perf_counter() - start)}
            log(f"built {key}: {params / 1e6:.1f}M parameters in {time.perf_counter() - start:.1f}s")
        return models[key]

    def each(variant: str, run: Callable[..., Any], after: Callable[[str, int], Any] | None = None,
             **kw: Any) -> None:
        for key in specs:
            for batch in batches:
                if variant in CUDA_ONLY and not cuda:
                    bench.slot(key, batch)[variant] = {"status": "skipped: no CUDA"}
                    continue
                if not bench.budget.open():
                    bench.slot(key, batch)[variant] = {
                        "status": f"skipped: time budget ({args.max_seconds:g}s) spent"}
                    bench.not_run.append(f"{key} batch {batch} {variant}")
                    continue
                bench.measure(key, get_model(key), batch, variant, run,
                              after_warmup=None if after is None else after(key, batch), **kw)

    try:
        for key in specs:
            for batch in batches:
                model = get_model(key) if bench.budget.open() else None
                for variant, run in (("generate", run_generate), ("own_decode", run_own),
                                     ("own_continuous", run_continuous)):
                    if model is None:
                        bench.slot(key, batch)[variant] = {"status": "skipped: time budget spent"}
                        bench.not_run.append(f"{key} batch {batch} {variant}")
                        continue
                    bench.measure(key, model, batch, variant, run)
        first_key = next(iter(specs))
        if first_key in models:
            result["reply_during_job"] = {"model": first_key,
                                          **reply_during_job(bench, models[first_key], max(batches))}
            result["bot_gpu_path"] = {"model": first_key,
                                      **reply_during_job(bench, models[first_key], max(batches), path="static")}
        else:
            result["reply_during_job"] = {"status": "skipped: the model was never built"}
        each("hf_static", lambda *a: run_generate(*a, cache_implementation="static", disable_compile=True))

        def compiled(*a: Any) -> tuple[list[list[int]], float | None]:
            return run_generate(*a, cache_implementation="static")

        each("hf_static_compiled", compiled, own_limit=args.compile_seconds)
        for key, model in models.items():
            if key in result["models"]:
                result["models"][key]["hf_decode_step_compiled"] = hasattr(model, "_compiled_call")
    except Terminated:
        interrupted = "SIGTERM: printed what was measured"
    except TimeLimit:
        interrupted = "time limit outside a measurement"
    except Exception as exc:
        interrupted = f"unexpected error: {short_error(exc)}"
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    result["summary_legend"] = "variant: [new tokens/s end to end, ms per decode step, x generate end to end]"
    result["summary"] = summary(bench.results)
    result["results"] = bench.results
    if "reply_during_job" not in result:
        result["reply_during_job"] = {"status": "not reached"}
    result["not_run_for_time"] = bench.not_run
    result["interrupted"] = interrupted
    result["notes"] = [
        "hf_static_compiled is transformers' own path: generate() with a static cache compiles the decode "
        "step with torch.compile(mode='reduce-overhead'); a separate model.forward = torch.compile(...) "
        "variant would compile the same steps again and was left out to keep within the time limit.",
    ]
    if cuda:
        result["environment"]["peak_gpu_memory_gib"] = rounded(torch.cuda.max_memory_allocated() / 2**30)
    result["wall_s"] = rounded(time.perf_counter() - STARTED)
    text = to_json(result)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text, flush=True)
    sys.stderr.flush()
    if interrupted or bench.interrupted:
        # A measurement cut short (a half-done compilation or graph capture, a worker thread still decoding)
        # must not hang the interpreter's shutdown: the JSON is out, leave now.
        os._exit(0)


if __name__ == "__main__":
    main()
