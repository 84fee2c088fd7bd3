"""int4 on CPU: membot's own path (models/quantize.py + models/fast_llama.py, what `model.quantize = "int4"`
runs) against torchao's int4 weight-only CPU path, on the embedded model, with a ~1,000-token prompt.

    .venv/bin/pip install torchao               # optional benchmark dependency, never a runtime one
    .venv/bin/python bench/int4.py              # full run (~5-7 minutes on 2 cores)
    .venv/bin/python bench/int4.py --quick      # ~25 seconds; a smoke test

Variants, each loaded from the cached de-quantized weights (.cache/test-models/, as the tests and the other
benchmarks do; nothing is downloaded):
- `baseline_generate`: transformers' `generate()` on the model as `model.dtype = "auto"` loads it
  (`TransformersBackend.load`; bfloat16 on a CPU with AVX512-BF16 or AMX, float32 elsewhere: see
  `default_dtype` in the output).
- `fp32_generate`: `generate()` in float32, the greedy reference for the agreement figures (run once per
  batch size; only when the default dtype is not float32, otherwise the baseline is the reference).
- `own_int4`: `TransformersBackend.load(..., quantize="int4")`, decoded by the app's lean loop
  (models/decode.py) with the backend's own decode steps (models/fast_llama.py), exactly as the app runs it.
- `own_int4_hf_steps`: the same int4 weights, decode steps through transformers' forward (the lean loop
  without the stepper): shows what fast_llama.py adds, and compares kernels with torchao on equal terms.
- `torchao_int4`: `AutoModelForCausalLM.from_pretrained(folder, dtype=bfloat16, quantization_config=
  TorchAoConfig(PrototypeInt4WeightOnlyConfig(group_size=32)))`, decoded by the same lean loop (what the app
  would run with torchao weights: a plain transformers model). In torchao 0.18 this prototype config
  (`Int4OpaqueTensor`, `aten._weight_int4pack_mm_for_cpu`) is the int4 weight-only CPU path; the
  `Int4WeightOnlyConfig` packing formats are GPU-only there (`configs_tried` records why, on this machine).
  bfloat16, because the same aten kernel with float32 activations and scales takes a slow path (see
  `kernel_probe`). If the TorchAoConfig load fails, `quantize_` is applied directly and the error recorded.

Measured per batch size (1, and 8 by default): the prompt's prefill (time to the first token) and the decode
rate after the first token, same prompt tokens and same number of new tokens on every side (greedy, no
stop token: every row makes exactly `--new-tokens`); variants interleaved `--repeats` times, the fastest run
counts. Prompts: chat-template conversations from bench/_common.py, left-truncated (as the app truncates)
to exactly `--prompt-tokens` tokens, a different conversation per row, so no row is padded. Also: the
greedy agreement with the float32 reference and with the baseline (leading tokens identical, as a fraction
of the new tokens, and whole rows identical), the bytes of every variant's weights (parameters, buffers
and, for the own path, the decode steps' fused copies; tensor subclasses counted by their inner tensors,
shared storage once), and `own_vs_torchao` ratios (> 1: the own path is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import random
import time
from pathlib import Path
from typing import Any

from _common import (
    conversation,
    embedded_folder,
    emit,
    log,
    machine,
    quiet_libraries,
    rounded,
    set_threads,
)

SYSTEM = "You are Membot, a warm and curious friend who chats with people and remembers them. Answer briefly."
TORCHAO_GROUP_SIZE = 32  # the GGUF's Q4_1 groups, as models/quantize.py uses
# "Clearly faster" (the bar for keeping the own path): at least this factor.
CLEARLY = 1.2


# ---- prompts -------------------------------------------------------------------------------------------


def build_prompts(tokenizer: Any, rows: int, tokens: int, seed: int = 7) -> tuple[Any, Any]:
    """`rows` different conversations, each rendered with the chat template and cut to its last `tokens`
    tokens (the app truncates from the left too), so every row has exactly `tokens` tokens."""
    import torch

    out = []
    for row in range(rows):
        turns = 8
        while True:
            history = [{"role": "user" if author == "user" else "assistant", "content": text}
                       for author, text in conversation(random.Random(seed * 1000 + row), turns)]
            if history[-1]["role"] != "user":
                history.append({"role": "user", "content": "What do you remember about my week?"})
            text = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, *history], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= tokens:
                out.append(ids[-tokens:])
                break
            turns += max(2, turns // 2)
    ids = torch.tensor(out, dtype=torch.long)
    return ids, torch.ones_like(ids)


# ---- runs ----------------------------------------------------------------------------------------------


def run_generate(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int) -> dict[str, Any]:
    """transformers' generate(), greedy, exactly `new_tokens` per row; the first stopping-criteria call marks
    the end of the prefill (the first token chosen)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    marks: list[float] = []

    class Mark(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            marks.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, pad_token_id=pad_id, eos_token_id=None,
            stopping_criteria=StoppingCriteriaList([Mark()]),
        )
    total = time.perf_counter() - start
    return {"total": total, "prefill": marks[0] - start, "rows": out[:, ids.shape[1]:].tolist()}


def run_lean(model: Any, ids: Any, mask: Any, new_tokens: int, pad_id: int, stepper: Any = None) -> dict[str, Any]:
    """The app's lean loop (models/decode.py), no stop tokens; `should_stop` is polled before the prefill
    and after every chosen token, so its second call marks the end of the prefill."""
    from models.base import GenParams
    from models.decode import decode

    marks: list[float] = []

    def should_stop() -> bool:
        marks.append(time.perf_counter())
        return False

    start = time.perf_counter()
    rows = decode(model, ids, mask, GenParams(max_new_tokens=new_tokens), should_stop=should_stop, stepper=stepper)
    total = time.perf_counter() - start
    return {"total": total, "prefill": marks[1] - start, "rows": rows}


def run_variant(variant: dict[str, Any], ids: Any, mask: Any, new_tokens: int, pad_id: int) -> dict[str, Any]:
    if variant["kind"] == "generate":
        run = run_generate(variant["model"], ids, mask, new_tokens, pad_id)
    else:
        run = run_lean(variant["model"], ids, mask, new_tokens, pad_id, variant.get("stepper"))
    produced = [len(r) for r in run["rows"]]
    if produced != [new_tokens] * ids.shape[0]:
        raise RuntimeError(f"{variant['name']} made {produced} tokens, not {new_tokens} a row: unfair comparison")
    return run


def prefix_fraction(rows: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    """Leading tokens identical to the reference, as a fraction of the row's length (mean over rows)."""
    fractions, identical = [], 0
    for a, b in zip(rows, reference, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        fractions.append(same / max(1, len(b)))
        identical += a == b
    return {"leading_tokens_identical_fraction_mean": rounded(sum(fractions) / len(fractions)),
            "leading_tokens_identical_fraction_per_row": [rounded(f, 3) for f in fractions],
            "identical_rows": f"{identical}/{len(rows)}"}


# ---- weights -------------------------------------------------------------------------------------------


def _inner_tensors(t: Any) -> list[Any]:
    """A tensor subclass (torchao's Int4OpaqueTensor) by the plain tensors it holds; a plain tensor itself."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return [x for n in names for x in _inner_tensors(getattr(t, n))]
    return [t]


def weight_bytes(tensors: list[Any], seen: set[int] | None = None) -> int:
    """Bytes of the storages behind `tensors`, each storage once (tied and shared weights count once)."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        for t in _inner_tensors(tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def weight_breakdown(named: list[tuple[str, Any]], seen: set[int] | None = None) -> dict[str, float]:
    """MiB by kind of tensor (the last part of its name: `weight`, `packed`, `nibbles`...), shared storage once."""
    seen = set() if seen is None else seen
    kinds: dict[str, int] = {}
    for name, tensor in named:
        kind = name.rsplit(".", 1)[-1]
        if name.endswith("embed_tokens.weight"):
            kind = "embed_tokens.weight (the tied head's too)"
        elif kind == "weight" and tensor is not None and tensor.dim() == 1:
            kind = "norm weights"
        elif kind == "weight" and type(tensor).__name__ not in ("Parameter", "Tensor"):
            kind = f"weight ({type(tensor).__name__})"
        kinds[kind] = kinds.get(kind, 0) + weight_bytes([tensor], seen)
    return {kind: mib(n) for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]) if n}


def named_model_tensors(model: Any) -> list[tuple[str, Any]]:
    return list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))


def model_tensors(model: Any) -> list[Any]:
    return [p for _, p in model.named_parameters(remove_duplicate=False)] + [
        b for _, b in model.named_buffers(remove_duplicate=False)]


def stepper_tensors(stepper: Any) -> list[Any]:
    """What models/fast_llama.py's stepper holds besides the model: fused int4 projections, the int8 head."""
    tensors: list[Any] = [stepper.final_norm, stepper.inv_freq, stepper.head.weight, stepper.head.scale]
    for layer in stepper.layers:
        tensors += [layer.norm1, layer.norm2]
        for module in (layer.qkv, layer.o, layer.gate_up, layer.down):
            tensors += list(module.buffers())
    return tensors


def mib(n: int) -> float:
    return rounded(n / 2**20)


# ---- torchao -------------------------------------------------------------------------------------------


def torchao_facts() -> dict[str, Any]:
    """Which torchao int4 configs work on a CPU Linear here, and why the others do not (exact errors)."""
    import torch

    facts: dict[str, Any] = {}
    import torchao
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    facts["version"] = torchao.__version__
    folder = Path(torchao.__file__).parent
    facts["compiled_extensions_in_wheel"] = sorted(p.name for p in folder.glob("*.so"))
    try:
        dump = torch._C._dispatch_dump("torchao::da8w4_linear_cpu")
        facts["da8w4_linear_cpu_kernels"] = [
            line.split(":")[0] for line in dump.splitlines() if line.split(":")[0] in ("CPU", "Meta", "CUDA")]
    except RuntimeError as exc:
        facts["da8w4_linear_cpu_kernels"] = f"not registered: {exc}"
    candidates: dict[str, Any] = {}
    for fmt in ("plain", "plain_int32", "tile_packed_to_4d", "opaque", "preshuffled"):
        candidates[f"Int4WeightOnlyConfig(group_size=32, int4_packing_format={fmt!r})"] = (
            lambda fmt=fmt: Int4WeightOnlyConfig(group_size=TORCHAO_GROUP_SIZE, int4_packing_format=fmt))
    with contextlib.suppress(ImportError):
        from torchao.prototype.quantization.int4 import (
            Int8DynamicActivationInt4WeightConfig,
            PrototypeInt4WeightOnlyConfig,
        )

        candidates["prototype PrototypeInt4WeightOnlyConfig(group_size=32)"] = (
            lambda: PrototypeInt4WeightOnlyConfig(group_size=TORCHAO_GROUP_SIZE))
        candidates["prototype Int8DynamicActivationInt4WeightConfig(group_size=32) (not weight-only)"] = (
            lambda: Int8DynamicActivationInt4WeightConfig(group_size=TORCHAO_GROUP_SIZE))
    tried: dict[str, Any] = {}
    for name, make in candidates.items():
        per_dtype = {}
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            linear = torch.nn.Sequential(torch.nn.Linear(576, 1536, bias=False)).to(dtype)
            x = torch.randn(3, 576, dtype=dtype)
            reference = linear(x).float()
            try:
                quantize_(linear, make())
                y = linear(x).float()
                kind = type(linear[0].weight).__name__
                if kind in ("Parameter", "Tensor"):
                    per_dtype[str(dtype).removeprefix("torch.")] = "left unquantized"
                    continue
                err = float((y - reference).norm() / reference.norm())
                per_dtype[str(dtype).removeprefix("torch.")] = f"ok ({kind}, relative output error {err:.3f})"
            except Exception as exc:  # the exact reason is the point here
                first = (str(exc).strip().splitlines() or [""])[0]
                per_dtype[str(dtype).removeprefix("torch.")] = f"{type(exc).__name__}: {first[:240]}"
        tried[name] = per_dtype
    facts["configs_tried_on_a_576x1536_linear"] = tried
    return facts


def load_torchao(folder: Path, dtype: Any) -> tuple[Any, dict[str, Any]]:
    """The embedded model with torchao int4 weight-only Linears, through TorchAoConfig (or quantize_)."""
    import torch
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    info: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        config = TorchAoConfig(PrototypeInt4WeightOnlyConfig(group_size=TORCHAO_GROUP_SIZE))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=config,
                                                     local_files_only=True).eval()
        info["via"] = ("transformers.TorchAoConfig(torchao.prototype.quantization.int4."
                       f"PrototypeInt4WeightOnlyConfig(group_size={TORCHAO_GROUP_SIZE})), "
                       f"from_pretrained(dtype={str(dtype).removeprefix('torch.')})")
    except Exception as exc:
        info["torchaoconfig_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        from torchao.quantization import quantize_

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
        head = model.get_output_embeddings()
        quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=TORCHAO_GROUP_SIZE),
                  filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and m is not head)
        info["via"] = (f"torchao.quantization.quantize_(model, PrototypeInt4WeightOnlyConfig(group_size="
                       f"{TORCHAO_GROUP_SIZE})) on every Linear but the head, dtype={dtype}")
    info["load_and_quantize_s"] = rounded(time.perf_counter() - start)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kinds: dict[str, int] = {}
    for m in linears:
        kinds[type(m.weight).__name__] = kinds.get(type(m.weight).__name__, 0) + 1
    info["linear_weight_types"] = kinds  # the head (tied to the embedding) stays a plain bfloat16 Parameter
    return model, info


def kernel_probe(prompt_tokens: int, quick: bool) -> dict[str, Any]:
    """One decoder-sized Linear (576 -> 1536, the MLP's gate/up): ms per call at 1, 8 and `prompt_tokens` rows
    for the own Int4Linear, torchao's int4 in bfloat16 and in float32, and dense float32/bfloat16."""
    import torch

    from models.quantize import Int4Linear

    torch.manual_seed(0)
    dense = torch.nn.Linear(576, 1536, bias=False)
    variants: dict[str, tuple[Any, Any]] = {
        "dense_float32": (dense, torch.float32),
        "dense_bfloat16": (torch.nn.Linear(576, 1536, bias=False).to(torch.bfloat16), torch.bfloat16),
        "own_int4 (kernel below 128 rows, de-quantized float32 GEMM from 128)": (
            Int4Linear.from_linear(dense)[0], torch.float32),
    }
    if importlib.util.find_spec("torchao") is not None:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import quantize_

        for dtype in (torch.bfloat16, torch.float32):
            wrapped = torch.nn.Sequential(torch.nn.Linear(576, 1536, bias=False).to(dtype))
            quantize_(wrapped, PrototypeInt4WeightOnlyConfig(group_size=32))
            variants[f"torchao_int4_{str(dtype).removeprefix('torch.')}"] = (wrapped, dtype)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for rows in (1, 8, prompt_tokens):
            entry = {}
            for name, (module, dtype) in variants.items():
                x = torch.randn(rows, 576, dtype=dtype)
                module(x)
                slow = rows >= 128 and "torchao_int4_float32" in name
                reps = 1 if slow else (3 if rows >= 128 else (20 if quick else 100))
                start = time.perf_counter()
                for _ in range(reps):
                    module(x)
                entry[name] = rounded((time.perf_counter() - start) / reps * 1e3)
            out[f"rows_{rows}_ms"] = entry
    return out


# ---- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test (under ~2 minutes)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (rows decoded at once)")
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="tokens of every row's prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per row (the same on every side)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-own-hf-steps", action="store_true", help="skip own int4 through transformers' steps")
    parser.add_argument("--cache-dir", default=None, help="the de-quantized model folder (default: .cache/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.prompt_tokens, args.new_tokens, args.repeats = "1,2", 96, 8, 1

    quiet_libraries()
    set_threads(args.threads)
    import torch
    from transformers import AutoTokenizer

    from models.embedded import MODEL_NAME
    from models.quantize import int4_available
    from models.transformers_backend import TransformersBackend, pick_dtype

    batches = [int(b) for b in args.batches.split(",")]
    folder = embedded_folder(args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    default_dtype, why = pick_dtype("auto", "cpu")
    default_name = str(default_dtype).removeprefix("torch.")

    variants: list[dict[str, Any]] = []
    weights: dict[str, Any] = {}
    loads: dict[str, float] = {}

    def add(name: str, kind: str, model: Any, stepper: Any = None, once: bool = False) -> None:
        if hasattr(model, "generation_config"):
            model.generation_config.eos_token_id = None  # every row makes exactly the requested tokens
        variants.append({"name": name, "kind": kind, "model": model, "stepper": stepper, "once": once})

    start = time.perf_counter()
    baseline = TransformersBackend.load(folder, dtype="auto").model
    loads["baseline_generate"] = rounded(time.perf_counter() - start)
    add("baseline_generate", "generate", baseline)
    weights["baseline_generate"] = weight_bytes(model_tensors(baseline))
    breakdown: dict[str, Any] = {"baseline_generate": weight_breakdown(named_model_tensors(baseline))}
    reference_name = "baseline_generate"
    if default_dtype != torch.float32:
        fp32 = TransformersBackend.load(folder, dtype="float32").model
        add("fp32_generate", "generate", fp32, once=True)
        weights["fp32_generate"] = weight_bytes(model_tensors(fp32))
        reference_name = "fp32_generate"

    own_info: dict[str, Any] | str
    if int4_available():
        start = time.perf_counter()
        backend = TransformersBackend.load(folder, dtype="auto", quantize="int4")
        own_info = {"load_and_quantize_s": rounded(time.perf_counter() - start),
                    "summary": backend.quantization.summary(), "fast_steps": backend.stepper is not None,
                    "dtype": str(backend.model.dtype).removeprefix("torch.")}
        add("own_int4", "lean", backend.model, backend.stepper)
        seen: set[int] = set()
        model_part = weight_bytes(model_tensors(backend.model), seen)
        steps_part = weight_bytes(stepper_tensors(backend.stepper), seen) if backend.stepper else 0
        weights["own_int4"] = model_part + steps_part
        own_info["weight_bytes_model"] = model_part
        own_info["weight_bytes_decode_steps_extra"] = steps_part
        seen = set()
        breakdown["own_int4"] = weight_breakdown(named_model_tensors(backend.model), seen)
        if backend.stepper is not None:
            breakdown["own_int4"]["decode steps' own copies (fused q/k/v and gate/up, int8 head)"] = mib(
                weight_bytes(stepper_tensors(backend.stepper), seen))
        if backend.stepper is not None and not args.no_own_hf_steps:
            add("own_int4_hf_steps", "lean", backend.model, None)
            weights["own_int4_hf_steps"] = model_part
    else:
        own_info = "not measured: this torch build has no CPU int4 kernels"

    torchao_info: dict[str, Any] = {}
    if importlib.util.find_spec("torchao") is None:
        torchao_info = {"error": "not installed: `.venv/bin/pip install torchao` (an optional benchmark "
                                 "dependency, never a runtime one)"}
    else:
        try:
            torchao_info.update(torchao_facts())
            model, info = load_torchao(folder, torch.bfloat16)
            torchao_info.update(info)
            add("torchao_int4", "lean", model)
            weights["torchao_int4"] = weight_bytes(model_tensors(model))
            breakdown["torchao_int4"] = weight_breakdown(named_model_tensors(model))
        except Exception as exc:
            torchao_info["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            log(f"torchao failed: {torchao_info['error']}")
    log(f"variants: {', '.join(v['name'] for v in variants)}; threads {torch.get_num_threads()}")

    # One tiny run each first: one-time initialisation (oneDNN, kernels) is not what is compared.
    warm_ids, warm_mask = build_prompts(tokenizer, 1, 16)
    for v in variants:
        run_variant(v, warm_ids, warm_mask, 2, pad_id)

    results: dict[str, Any] = {}
    for batch in batches:
        ids, mask = build_prompts(tokenizer, batch, args.prompt_tokens)
        runs: dict[str, list[dict[str, Any]]] = {v["name"]: [] for v in variants}
        for repeat in range(args.repeats):
            for v in variants:
                if v["once"] and repeat:
                    continue
                run = run_variant(v, ids, mask, args.new_tokens, pad_id)
                runs[v["name"]].append(run)
                log(f"batch {batch} {v['name']} run {repeat}: prefill {run['prefill']:.2f}s, "
                    f"total {run['total']:.2f}s")
        entry: dict[str, Any] = {"batch": batch, "prompt_tokens_per_row": int(ids.shape[1]),
                                 "new_tokens_per_row": args.new_tokens}
        for name, rs in runs.items():
            best_prefill = min(r["prefill"] for r in rs)
            best = min(rs, key=lambda r: r["total"] - r["prefill"])
            decode_s = best["total"] - best["prefill"]
            entry[name] = {
                "reply_s": rounded(best_prefill + decode_s),  # fastest prefill + fastest decode
                "prefill_s": rounded(best_prefill),
                "prefill_tokens_per_s": rounded(batch * args.prompt_tokens / best_prefill),
                "decode_tokens_per_s": rounded(batch * (args.new_tokens - 1) / decode_s) if decode_s > 0 else None,
                "total_s_runs": [rounded(r["total"]) for r in rs],
            }
        reference = runs[reference_name][0]["rows"]
        base_rows = runs["baseline_generate"][0]["rows"]
        entry["agreement"] = {}
        for name, rs in runs.items():
            if name in (reference_name,):
                continue
            agree = {f"vs_{reference_name}": prefix_fraction(rs[0]["rows"], reference)}
            if reference_name != "baseline_generate" and name != "baseline_generate":
                agree["vs_baseline_generate"] = prefix_fraction(rs[0]["rows"], base_rows)
            entry["agreement"][name] = agree
        if "own_int4" in runs and "torchao_int4" in runs:
            own, tao = entry["own_int4"], entry["torchao_int4"]
            entry["agreement"]["own_int4_vs_torchao_int4"] = prefix_fraction(
                runs["own_int4"][0]["rows"], runs["torchao_int4"][0]["rows"])
            entry["own_vs_torchao"] = {  # > 1: the own path is faster
                "prefill_speed_ratio": rounded(tao["prefill_s"] / own["prefill_s"]),
                "decode_speed_ratio": rounded(own["decode_tokens_per_s"] / tao["decode_tokens_per_s"]),
                "reply_speed_ratio": rounded(tao["reply_s"] / own["reply_s"]),  # prefill + all new tokens
            }
            if "own_int4_hf_steps" in entry:
                entry["own_vs_torchao"]["decode_speed_ratio_both_through_transformers_steps"] = rounded(
                    entry["own_int4_hf_steps"]["decode_tokens_per_s"] / tao["decode_tokens_per_s"])
        base = entry["baseline_generate"]
        entry["vs_baseline_decode_speed"] = {
            name: rounded(entry[name]["decode_tokens_per_s"] / base["decode_tokens_per_s"])
            for name in runs if name != "baseline_generate"}
        results[f"batch_{batch}"] = entry

    verdict: dict[str, Any] | str = "not measured: torchao or the own int4 path did not run"
    if all("own_vs_torchao" in entry for entry in results.values()):
        verdict = {
            "rule": f"'clearly faster' = at least {CLEARLY}x; ratios are own speed / torchao speed (> 1: own faster)",
            **{label: entry["own_vs_torchao"] for label, entry in results.items()},
        }
        first = results[f"batch_{batches[0]}"]["own_vs_torchao"]
        verdict["own_clearly_faster_decode_batch_1"] = first["decode_speed_ratio"] >= CLEARLY
        verdict["own_clearly_faster_reply_batch_1"] = first["reply_speed_ratio"] >= CLEARLY

    emit({
        "benchmark": "int4",
        "model": MODEL_NAME,
        "device": "cpu",
        "quick": args.quick,
        "settings": {"greedy": True, "stop_tokens": None, "repeats": args.repeats, "batches": batches,
                     "prompt_tokens_per_row": args.prompt_tokens, "new_tokens_per_row": args.new_tokens,
                     "decode_loop": "models/decode.py (lean) for own and torchao; generate() for the baselines"},
        "default_dtype": f"{default_name} ({why})",
        "agreement_reference": reference_name,
        "load_s": loads,
        "own_int4": own_info,
        "torchao": torchao_info,
        "weight_bytes": {name: {"bytes": n, "mib": mib(n)} for name, n in weights.items()},
        "weight_mib_by_kind": breakdown,
        "kernel_probe_576x1536": kernel_probe(args.prompt_tokens, args.quick),
        "results": results,
        "verdict": verdict,
        "machine": machine(args.threads),
    })


if __name__ == "__main__":
    main()
