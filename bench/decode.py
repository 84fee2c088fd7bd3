"""Decode speed: new tokens/s of the lean loop (models/decode.py) vs transformers' generate(), same model,
same device, same prompts, at batch 1, 16 and 64; plus the int4 variant (models/quantize.py) and, where the
default dtype is bfloat16, the default with and without its weights packed for oneDNN (models/onednn_linear.py)
and with and without the thread count of small decode steps measured (models/step_threads.py).

    .venv/bin/python bench/decode.py            # full run (~5-8 minutes on 2 cores)
    .venv/bin/python bench/decode.py --quick    # seconds; a smoke test

Greedy, no stop tokens (every row makes exactly the same number of new tokens), no repetition penalty.
Variants run interleaved, `--repeats` times; the fastest run of each counts (the machine is shared, and the
fastest run is the one least disturbed by other work). For each variant and batch: end-to-end new tokens/s
(prefill included), time to the first token, decode-only tokens/s (after the first token), and new tokens
per second of process CPU time (a figure other load disturbs less). The fp32 lean
loop is checked token for token against generate(); int4 reports how many leading tokens agree with fp32.
llama.cpp (the issue's reference, ~96 tokens/s on this GGUF) is compared only when llama-cpp-python is
installed (`--gguf-llama-cpp`).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import (
    embedded_folder,
    emit,
    log,
    machine,
    quiet_libraries,
    rounded,
    set_threads,
)

PROMPTS = (
    "Yesterday I went hiking with my sister Anna in the mountains near Innsbruck. We saw a lot of goats and the "
    "weather was great. Can you suggest what we could do next weekend if it rains?",
    "What is the capital of France? Answer in one sentence.",
    "My dog is called Rex and he is three years old. How old will Rex be in two years?",
    "I'm nervous about my job interview tomorrow. Any advice?",
    "Tell me a short story about a robot who learns to bake bread.",
    "I moved to Lyon last month and I don't know many people yet. How can I make friends?",
    "Can you remind me what I should pack for a weekend at the seaside?",
    "My favourite food is ramen but my brother hates it. What should we cook together?",
)
SYSTEM = "You are Membot, a warm and curious friend who chats with people and remembers them. Answer briefly."


def _filler(words: int) -> str:
    """`words` words of a diary-like earlier context (`--context-words`), to decode after a long prompt."""
    days = " ".join(f"On day {i} I walked to the market and bought {i % 7} apples and a loaf of bread."
                    for i in range(words // 16 + 1))
    return " ".join(days.split()[:words])


def _chat_text(tokenizer: Any, row: int, context_words: int = 0) -> str:
    """Row `row`'s prompt as the model sees it (after `context_words` words of earlier context, if any)."""
    before = _filler(context_words) + " " if context_words else ""
    return tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": before + PROMPTS[row % len(PROMPTS)]}],
        tokenize=False, add_generation_prompt=True,
    )


def _encode(tokenizer: Any, batch: int, context_words: int = 0) -> tuple[Any, Any]:
    texts = [_chat_text(tokenizer, i, context_words) for i in range(batch)]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def run_generate(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int) -> dict[str, Any]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    marks: list[float] = []

    class Mark(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            marks.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([Mark()]),
        )
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = out[:, ids.shape[1]:].tolist()
    return {"total": total, "cpu": cpu, "ttft": marks[0] - start, "rows": rows}


def run_lean(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int, stepper: Any = None,
             step_threads: Any = None) -> dict[str, Any]:
    from models.base import GenParams
    from models.decode import decode

    marks: list[float] = []

    def should_stop() -> bool:  # polled before the prefill and after every chosen token
        marks.append(time.perf_counter())
        return False

    start, cpu = time.perf_counter(), time.process_time()
    rows = decode(model, ids, mask, GenParams(max_new_tokens=new_tokens),
                  should_stop=should_stop, stepper=stepper, step_threads=step_threads)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    ttft = (marks[1] if len(marks) > 1 else time.perf_counter()) - start
    return {"total": total, "cpu": cpu, "ttft": ttft, "rows": rows}


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def llama_cpp_rate(gguf: str, prompt: str, new_tokens: int, threads: int, repeats: int) -> dict[str, Any] | None:
    """llama.cpp on the same GGUF and the same rendered prompt, when llama-cpp-python is installed (an optional
    benchmark dependency, never a runtime one: it builds from source in ~6 minutes).

    Like the torch side, it must make exactly `new_tokens` tokens: the end-of-text token is banned with a
    logit bias (before, llama.cpp stopped at it after a few tokens while the rate divided `max_tokens` by the
    time: "530,000 tokens/s"), and the tokens are counted from its own usage report. Prefill (time to the first
    token) and decode (the tokens after it) are timed separately; the prompt cache is reset before each run, so
    every run prefills."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    if os.environ.get("MEMBOT_BENCH_LLAMA_CHILD") != "1":
        # In its own process, its OpenMP threads spinning while they wait: membot sets OMP_WAIT_POLICY=PASSIVE
        # for torch (docs/benchmarks.md), and llama.cpp's threads then sleep between its many small operations
        # (43 against 124 tokens/s decoding, measured 2026-12-04). Its best case, not membot's setting.
        env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE", "MEMBOT_BENCH_LLAMA_CHILD": "1"}
        spec = json.dumps([gguf, prompt, new_tokens, threads, repeats])
        done = subprocess.run([sys.executable, __file__, "--llama-cpp-child", spec], env=env, capture_output=True,
                              text=True, timeout=900, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    from llama_cpp import Llama  # type: ignore[import-not-found]

    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    ban_end = {llm.token_eos(): -1e9}

    def run(n: int) -> tuple[float, int, int]:
        llm.reset()
        start = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, logit_bias=ban_end)
        elapsed = time.perf_counter() - start
        return elapsed, int(out["usage"]["completion_tokens"]), int(out["usage"]["prompt_tokens"])

    run(new_tokens)  # warm-up
    ttft = min(run(1)[0] for _ in range(repeats))
    fulls = [run(new_tokens) for _ in range(repeats)]
    total, produced, prompt_tokens = min(fulls)
    if produced != new_tokens:
        raise RuntimeError(f"llama.cpp made {produced} tokens, not {new_tokens}: the comparison would be unfair")
    return {
        "prompt_tokens": prompt_tokens, "new_tokens": produced, "ttft_s": rounded(ttft),
        "prefill_tokens_per_s": rounded(prompt_tokens / ttft),
        "decode_tokens_per_s": rounded((produced - 1) / (total - ttft)) if total > ttft else None,
        "new_tokens_per_s": rounded(produced / total),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test that takes seconds")
    parser.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", default="64,32,16",
                        help="new tokens per row, one per batch size (or one for all)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-int4", action="store_true", help="skip the int4 variant")
    parser.add_argument("--no-int4-hf", action="store_true",
                        help="skip int4 through transformers' steps (shown to isolate the own decode steps)")
    parser.add_argument("--cache-dir", default=None, help="the de-quantized model folder (default: .cache/)")
    parser.add_argument("--context-words", type=int, default=0,
                        help="words of earlier context before each prompt (decode after a long prompt)")
    parser.add_argument("--llama-cpp-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.llama_cpp_child:  # llama_cpp_rate in its own process
        print(json.dumps(llama_cpp_rate(*json.loads(args.llama_cpp_child))))
        return
    if args.quick:
        args.batches, args.new_tokens, args.repeats = "1,2", "4", 1

    quiet_libraries()
    set_threads(args.threads)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.embedded import GGUF_FILE, MODEL_NAME, gguf_folder
    from models.onednn_linear import pack_linears
    from models.quantize import int4_available, quantize_model
    from models.step_threads import for_model as tune_step_threads
    from models.transformers_backend import fast_stepper, pick_dtype

    batches = [int(b) for b in args.batches.split(",")]
    counts = [int(n) for n in args.new_tokens.split(",")]
    counts = counts * len(batches) if len(counts) == 1 else counts
    if len(counts) != len(batches):
        parser.error("--new-tokens needs one value, or one per batch size")

    folder = embedded_folder(args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fp32.generation_config.eos_token_id = None  # every row makes exactly the requested number of tokens
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    variants: dict[str, tuple[str, Any, Any, Any]] = {
        "generate_fp32": ("generate", fp32, None, None),
        "lean_fp32": ("lean", fp32, None, None),
    }
    default_dtype, why = pick_dtype("auto", "cpu")
    packed_layers = 0
    step_threads = None
    if default_dtype != torch.float32:  # what `model.dtype = "auto"` runs on this CPU (bfloat16 with AVX512-BF16)
        # The default as loaded (its linear layers packed for oneDNN when bfloat16, the thread count of small
        # decode steps measured, as TransformersBackend.load sets them up), the same on every thread, and the
        # same weights unpacked: what each adds.
        default_model = copy.deepcopy(fp32).to(default_dtype)
        unpacked = copy.deepcopy(default_model)
        packed_layers = pack_linears(default_model) if default_dtype == torch.bfloat16 else 0
        step_threads = tune_step_threads(default_model)
        variants["lean_default"] = ("lean", default_model, None, step_threads)
        if step_threads is not None:
            variants["lean_default_all_threads"] = ("lean", default_model, None, None)
        if packed_layers:
            variants["lean_default_unpacked"] = ("lean", unpacked, None, None)
    quant_info: dict[str, Any] | None = None
    if not args.no_int4 and int4_available():
        int4 = copy.deepcopy(fp32)
        start = time.perf_counter()
        report = quantize_model(int4, "int4")
        quant_info = {"seconds": rounded(time.perf_counter() - start), "summary": report.summary()}
        # What `model.quantize = "int4"` runs: the int4 weights with the project's own decode steps
        # (models/fast_llama.py); and, to show what those steps add, the same weights through transformers.
        stepper = fast_stepper(int4)
        quant_info["fast_steps"] = stepper is not None
        variants["lean_int4"] = ("lean", int4, stepper, None)
        if stepper is not None and not args.no_int4_hf:
            variants["lean_int4_hf_steps"] = ("lean", int4, None, None)
    log(f"variants: {', '.join(variants)}; threads {torch.get_num_threads()}")

    results: dict[str, Any] = {}
    for batch, new_tokens in zip(batches, counts, strict=True):
        ids, mask = _encode(tokenizer, batch, args.context_words)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            for name, (kind, model, stepper, tuner) in variants.items():
                if kind == "generate":
                    run = run_generate(model, ids, mask, new_tokens, pad_id)
                else:
                    run = run_lean(model, ids, mask, new_tokens, pad_id, stepper, tuner)
                runs[name].append(run)
                log(f"batch {batch} {name} run {repeat}: {run['total']:.2f}s")
        entry: dict[str, Any] = {"batch": batch, "new_tokens_per_row": new_tokens,
                                 "prompt_tokens_padded": int(ids.shape[1])}
        for name, rs in runs.items():
            best = min(rs, key=lambda r: r["total"])
            produced = batch * new_tokens
            decode_time = best["total"] - best["ttft"]
            entry[name] = {
                "new_tokens_per_s": rounded(produced / best["total"]),
                "ttft_s": rounded(best["ttft"]),
                "decode_tokens_per_s": rounded(batch * (new_tokens - 1) / decode_time) if decode_time > 0 else None,
                "runs_s": [rounded(r["total"]) for r in rs],
                # Tokens per second of process CPU time (all threads): less sensitive to other load.
                "new_tokens_per_cpu_s": rounded(produced / min(r["cpu"] for r in rs)),
            }
        reference = runs["generate_fp32"][0]["rows"]
        lean_rows = runs["lean_fp32"][0]["rows"]
        entry["lean_fp32_identical_rows"] = sum(a == b for a, b in zip(lean_rows, reference, strict=True))
        base = entry["generate_fp32"]["new_tokens_per_s"]
        entry["speedup_lean_fp32_vs_generate"] = rounded(entry["lean_fp32"]["new_tokens_per_s"] / base)
        packed_all = "lean_default_all_threads" if "lean_default_all_threads" in runs else "lean_default"
        if "lean_default_all_threads" in runs:
            entry["speedup_default_step_threads_vs_all_threads"] = rounded(
                entry["lean_default"]["new_tokens_per_s"] / entry["lean_default_all_threads"]["new_tokens_per_s"])
            entry["default_step_threads_identical_rows_to_all_threads"] = sum(
                a == b for a, b in zip(runs["lean_default"][0]["rows"], runs["lean_default_all_threads"][0]["rows"],
                                       strict=True))
        if "lean_default_unpacked" in runs:
            entry["speedup_default_packed_vs_unpacked"] = rounded(
                entry[packed_all]["new_tokens_per_s"] / entry["lean_default_unpacked"]["new_tokens_per_s"])
            entry["default_packed_identical_rows_to_unpacked"] = sum(
                a == b for a, b in zip(runs["lean_default"][0]["rows"], runs["lean_default_unpacked"][0]["rows"],
                                       strict=True))
        if "lean_int4" in runs:
            int4_rows = runs["lean_int4"][0]["rows"]
            prefixes = [_common_prefix(a, b) for a, b in zip(int4_rows, reference, strict=True)]
            entry["lean_int4_agreeing_prefix_mean"] = rounded(sum(prefixes) / len(prefixes))
            entry["lean_int4_identical_rows"] = sum(a == b for a, b in zip(int4_rows, reference, strict=True))
            entry["speedup_lean_int4_vs_generate"] = rounded(entry["lean_int4"]["new_tokens_per_s"] / base)
            entry["speedup_lean_int4_vs_generate_cpu_time"] = rounded(
                entry["lean_int4"]["new_tokens_per_cpu_s"] / entry["generate_fp32"]["new_tokens_per_cpu_s"]
            )
            entry["speedup_lean_int4_vs_generate_decode_only"] = rounded(
                entry["lean_int4"]["decode_tokens_per_s"] / entry["generate_fp32"]["decode_tokens_per_s"]
            )
            if "lean_int4_hf_steps" in runs:
                entry["speedup_int4_own_steps_vs_int4_hf_steps"] = rounded(
                    entry["lean_int4"]["new_tokens_per_s"] / entry["lean_int4_hf_steps"]["new_tokens_per_s"])
                hf_rows = runs["lean_int4_hf_steps"][0]["rows"]
                entry["int4_own_steps_identical_rows_to_hf_steps"] = sum(
                    a == b for a, b in zip(int4_rows, hf_rows, strict=True))
        results[f"batch_{batch}"] = entry

    sample = tokenizer.decode(runs.get("lean_int4", runs["lean_fp32"])[0]["rows"][0], skip_special_tokens=True)
    rendered = _chat_text(tokenizer, 0, args.context_words)  # row 0 of every batch: the same text on both sides
    # As many threads as torch uses (llama-cpp-python's own default is half the cores).
    llama = llama_cpp_rate(str(gguf_folder() / GGUF_FILE), rendered, counts[0], torch.get_num_threads(),
                           args.repeats)
    first = results[f"batch_{batches[0]}"]
    versus_llama: dict[str, Any] | None = None
    if llama and first["batch"] == 1:
        prompt_tokens = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        versus_llama = {"prompt_tokens_torch_side": prompt_tokens}
        for name in [n for n in ("lean_default", "lean_fp32", "lean_int4") if n in first]:
            mine = first[name]
            versus_llama[name] = {
                "prefill_ratio": rounded(llama["ttft_s"] / mine["ttft_s"]),  # > 1: membot faster
                "decode_ratio": rounded((mine["decode_tokens_per_s"] or 0) / (llama["decode_tokens_per_s"] or 1)),
            }
    emit({
        "benchmark": "decode",
        "model": MODEL_NAME,
        "device": "cpu",
        "quick": args.quick,
        "settings": {"greedy": True, "stop_tokens": None, "repeats": args.repeats, "repetition_penalty": 1.0,
                     "context_words": args.context_words},
        "int4": quant_info,
        "default_dtype": f"{str(default_dtype).removeprefix('torch.')} ({why})",
        "default_linear_layers_packed": packed_layers,
        # Decode steps' thread count by "ROWSxTOKENS" bucket (rows per step, context length), as measured above.
        "default_step_threads_chosen": step_threads.chosen() if step_threads is not None else None,
        "results": results,
        "sample_int4_or_fp32_text": sample[:200],
        "llama_cpp": llama or "not measured: llama-cpp-python is not installed (an optional benchmark "
                              "dependency: `pip install llama-cpp-python`, which builds llama.cpp from source)",
        "versus_llama_cpp_batch1": versus_llama,
        "machine": machine(args.threads),
    })


if __name__ == "__main__":
    main()
