"""Memory-job batches: transformers' own continuous batching (`generate_batch`, paged attention) against the
project's own continuous loop (models/decode.py), same model, same prompts, same CPU.

    .venv/bin/python bench/transformers_cb.py            # 16 job-like prompts, 64 new tokens, 2 repeats
    .venv/bin/python bench/transformers_cb.py --quick    # a smoke test

Why (issue #17 item 2): transformers now ships continuous batching, the feature the own loop exists for. If
it is within 15 % of the own loop's throughput (and can serve replies during a batch), the own loop goes;
otherwise the own loop stays and these figures say why. Each prompt is a job-like chat prompt (a conversation
of `--turns` turns and the instruction to list what the person said); greedy, end of text ignored, so both
sides make exactly `--new-tokens` tokens per prompt. Both run on one model instance loaded with
`attn_implementation="paged|sdpa"` (the own loop passes ordinary masks and works with it), interleaved,
fastest of `--repeats`. Reported: new tokens/s of each, the ratio, and how many rows are token-for-token the
same. Not measured here: a reply arriving during transformers' batch (its manager can take new requests;
the own loop's figure is `bench/jobs.py`'s batched_with_reply).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from _common import conversation, embedded_folder, emit, log, machine, quiet_libraries, rounded, set_threads

INSTRUCTION = "List, one per line, every fact the user said about themselves in this conversation."


def prompts(tokenizer: Any, count: int, turns: int) -> list[list[int]]:
    rng = random.Random(7)
    out = []
    for _ in range(count):
        lines = [f"{speaker}: {text}" for speaker, text in conversation(rng, turns)]
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "\n".join(lines) + "\n\n" + INSTRUCTION}], tokenize=False,
            add_generation_prompt=True)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 short prompts, 8 tokens: a smoke test")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.turns, args.new_tokens, args.repeats = 4, 2, 8, 1
    quiet_libraries()
    set_threads(args.threads)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from models.base import GenParams
    from models.decode import decode

    folder = embedded_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="paged|sdpa").eval()
    ids = prompts(tokenizer, args.prompts, args.turns)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    def theirs(new_tokens: int = args.new_tokens, count: int = len(ids)) -> list[list[int]]:
        config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=pad,
                                  num_blocks=512, block_size=32, max_batch_tokens=1024)
        out = model.generate_batch(inputs=ids[:count], generation_config=config, progress_bar=False)
        return [list(out[f"req_{i}"].generated_tokens) for i in range(count)]

    def ours(new_tokens: int = args.new_tokens, count: int = len(ids)) -> list[list[int]]:
        return decode(model, batch["input_ids"][:count], batch["attention_mask"][:count],
                                 GenParams(max_new_tokens=new_tokens), max_rows=count)

    times: dict[str, list[float]] = {"transformers_generate_batch": [], "own_continuous": []}
    rows: dict[str, list[list[int]]] = {}
    with torch.inference_mode():
        theirs(2, 2), ours(2, 2)  # warm-up: the first call of each sets things up (threads, buffers)
        for repeat in range(args.repeats):
            for name, run in (("transformers_generate_batch", theirs), ("own_continuous", ours)):
                start = time.perf_counter()
                rows[name] = run()
                times[name].append(time.perf_counter() - start)
                log(f"run {repeat} {name}: {times[name][-1]:.2f}s")
    produced = {name: sum(len(r) for r in rs) for name, rs in rows.items()}
    rate = {name: produced[name] / min(ts) for name, ts in times.items()}
    emit({
        "benchmark": "transformers_cb",
        "quick": args.quick,
        "settings": {"prompts": len(ids), "prompt_tokens_mean": rounded(sum(map(len, ids)) / len(ids)),
                     "new_tokens": args.new_tokens, "repeats": args.repeats, "dtype": "float32",
                     "attn_implementation": "paged|sdpa"},
        "new_tokens": produced,
        "runs_s": {name: [rounded(t) for t in ts] for name, ts in times.items()},
        "new_tokens_per_s": {name: rounded(r) for name, r in rate.items()},
        "ratio_transformers_to_own": rounded(rate["transformers_generate_batch"] / rate["own_continuous"]),
        "identical_rows": sum(a == b for a, b in zip(rows["transformers_generate_batch"], rows["own_continuous"],
                                                     strict=True)),
        "adopt_rule": "adopt transformers' continuous batching if its throughput is within 15 % of the own loop",
        "machine": machine(args.threads),
    })


if __name__ == "__main__":
    main()
