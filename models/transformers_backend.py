"""Local generation with transformers: any Hugging Face id or local folder, GGUF included.

Runs only inside the model worker's thread. Prompts of one batch are left-padded so every row ends at
the same position, which is what a decoder-only batch needs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.base import (
    BackendError,
    Capabilities,
    Generation,
    GenParams,
    Prompt,
    TokenizerInfo,
    stop_if_cancelled,
)

log = logging.getLogger(__name__)

# Read by OpenMP when torch first loads (torch is imported lazily, after this module): threads that finish
# their share of an operation sleep instead of spinning. Spinning made every parallel operation wait for a
# descheduled thread beside one other busy process (2 threads decoded 3-6x slower than 1 on a 2-core
# machine; docs/benchmarks.md); passive waiting's wake-ups are what models/step_threads.py measures. A
# value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's instructions that make bfloat16 matrix products fast (Linux /proc/cpuinfo flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    flags = next((line.partition(":")[2].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [f for f in BF16_CPU_FLAGS if f in flags]


def pick_dtype(requested: str, device: str, quantize: str = "none", cpuinfo: str | None = None) -> tuple[Any, str]:
    """The dtype and why. "auto": bfloat16 on a GPU, and on a CPU with bfloat16 instructions (AVX512-BF16 or
    AMX), where it prefilled 1,000 tokens of SmolLM2-135M in 0.74 s against 1.82 s in float32 (prefill is
    most of a reply's time on a CPU); float32 elsewhere, where bfloat16 is emulated and slower, and with
    `quantize = "int4"`, whose kernels compute in float32."""
    import torch

    if requested != "auto":
        return getattr(torch, requested), "model.dtype"
    if device.startswith("cuda"):
        return torch.bfloat16, "auto: GPU"
    if quantize != "none":
        return torch.float32, f"auto: quantize = {quantize!r} computes in float32"
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return torch.bfloat16, f"auto: this CPU has {', '.join(flags)}"
    return torch.float32, "auto: this CPU has no bfloat16 instructions"


def pick_decode(device: str, is_seq2seq: bool) -> str:
    """How a model makes its tokens, and why.

    "own": decoder-only models on a CPU run models/decode.py: replies, streamed replies and job batches alike
    (so options such as quantize = "int4" apply to all three), with continuous batching and replies served
    between a job batch's steps.
    "static": decoder-only models on a GPU run transformers' generate() with its static cache, whose decode
    steps transformers compiles (torch.compile, CUDA graphs) on CUDA. Measured on an H200 (docs/benchmarks.md,
    "GPU"): 6.7x / 5.1x generate() at batch 1 / 64, where the own loop was 0.9-1.1x; a GPU step is launch
    overhead that only compiled graphs remove. Left to transformers rather than own graph code.
    "generate": seq2seq models (GODEL; the own loop has no encoder), and GPU models whose compilation failed.
    """
    if is_seq2seq:
        return "generate"
    if device.startswith("cuda"):
        return "static"
    return "own"


DECODE_PATHS = ("own", "static", "generate")


class TransformersBackend:
    """Wraps a loaded model and tokenizer; `load()` builds one from a name or folder."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, device: str, decode: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.quantization: Any = None  # a models.quantize.QuantizeReport when load() quantized the model
        self.stepper: Any = None  # a models.fast_llama.FastLlamaStepper for int4 Llama models
        self.packed_linears = 0  # linear layers load() packed for oneDNN (models/onednn_linear.py)
        self.step_threads: Any = None  # a models.step_threads.StepThreads when load() found it safe
        # A fast tokenizer keeps its padding and truncation settings on one shared Rust object, which each call
        # sets: counting tokens on the event loop while the model thread encodes a padded batch would unset
        # the batch's padding halfway ("Unable to create tensor..."). Every tokenizer call takes this lock.
        self._tokenizer_lock = threading.Lock()
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.tokenizer.padding_side = "left" if not self.is_seq2seq else "right"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_positions = int(
            getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 0) or 2048
        )
        self.decode = decode or pick_decode(device, self.is_seq2seq)
        if self.decode not in DECODE_PATHS or (self.is_seq2seq and self.decode == "own"):
            raise ValueError(f"decode {self.decode!r} is not one of {DECODE_PATHS} for this model")

    @property
    def capabilities(self) -> Capabilities:
        """Only the own loop yields between steps and refills finished rows; generate() runs a batch whole (on
        a GPU a job batch is short: a reply waits for it, as with a model server)."""
        from models.decode import plain_cache

        own = self.decode == "own"
        return Capabilities(streaming=True, between_steps=own, continuous_batching=own and plain_cache(self.model))

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        gguf_file: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        quantize: str = "none",
    ) -> TransformersBackend:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        device = pick_device(device)
        torch_dtype, why = pick_dtype(dtype, device, quantize)
        local = Path(str(name_or_path)).expanduser()
        source = str(local) if local.exists() else str(name_or_path)
        offline = {"local_files_only": local.exists()}
        kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        log.info("loading model %s%s on %s, %s (%s)", source, f" [{gguf_file}]" if gguf_file else "", device,
                 str(torch_dtype).removeprefix("torch."), why)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs, **offline)
            config = AutoConfig.from_pretrained(source, **kwargs, **offline)
            auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
            model = auto.from_pretrained(source, dtype=torch_dtype, **kwargs, **offline)
        except OSError as exc:
            raise BackendError(f"cannot load model {source}: {exc}") from exc
        model.to(device)
        model.eval()
        report = None
        if quantize != "none":
            if not device.startswith("cpu"):
                raise BackendError(f'model.quantize = "{quantize}" runs on CPU only (device is {device})')
            from models.quantize import quantize_model

            try:
                report = quantize_model(model, quantize)
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"cannot quantize {source}: {exc}") from exc
            if not report.quantized:
                log.warning("model.quantize = %r: no layer of this model could be quantized", quantize)
        backend = cls(model, tokenizer, name=os.path.basename(str(name_or_path).rstrip("/")), device=device)
        backend.quantization = report
        if report is None and backend.decode == "own" and torch_dtype == torch.bfloat16:
            from models.onednn_linear import pack_linears

            backend.packed_linears = pack_linears(model)
            if backend.packed_linears:
                log.info("bfloat16 weights packed for oneDNN: %d linear layers", backend.packed_linears)
        if report is not None and report.quantized:
            backend.stepper = fast_stepper(model)
        if backend.decode == "own" and backend.stepper is None:
            from models import step_threads

            backend.step_threads = step_threads.for_model(model)
            if backend.step_threads is not None:
                log.info("decode steps of up to %d rows run on the thread count they measure fastest (of %s)",
                         step_threads.BUCKETS[-1], ", ".join(map(str, backend.step_threads.counts)))
        return backend

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenizer_info(self) -> TokenizerInfo:
        return TokenizerInfo(count_tokens=self.count_tokens, eos_token=self.tokenizer.eos_token,
                             max_positions=self.max_positions, exact=True)

    def render(self, prompt: Prompt) -> str:
        """The exact text the model sees; chat messages go through the model's own chat template."""
        if prompt.text is not None:
            return prompt.text
        messages = [{"role": role, "content": content} for role, content in prompt.messages or ()]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def encode(self, prompts: Sequence[Prompt]) -> Any:
        texts = [self.render(p) for p in prompts]
        # A chat template already carries BOS; adding it again would double it.
        add_special = all(p.add_special_tokens and p.messages is None for p in prompts)
        limit = min(p.max_input_tokens or self.max_positions for p in prompts)
        with self._tokenizer_lock:
            self.tokenizer.truncation_side = "left"
            encoded = self.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=add_special,
                truncation=True, max_length=limit,
            )
        return encoded.to(self.device)

    def stop_token_ids(self) -> tuple[int, ...]:
        ids: set[int] = set()
        eos = self.model.generation_config.eos_token_id
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams, *, on_text: Callable[[str], None] | None = None,
        between_steps: Callable[[], None] | None = None, max_rows: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Generation]:
        """`on_text` (one prompt) gets the text as it grows. `between_steps`, when given, is called between the
        prefill's row chunks and between decode steps: the worker serves waiting replies there while a job
        batch is in progress. `max_rows` caps the rows decoding at once; the other prompts take the places of
        finished rows. `cancelled` is polled between steps on every path; True stops the batch (Cancelled)."""
        import torch

        if not prompts:
            return []
        if on_text is not None and len(prompts) != 1:
            raise ValueError("streaming takes exactly one prompt")
        try:
            batch = self.encode(prompts)
            if self.decode == "own":
                rows = self._lean(batch, params, between_steps, max_rows, on_text, cancelled)
            else:
                rows = self._generate(batch, params, on_text, cancelled)
        except torch.OutOfMemoryError as exc:
            raise BackendError("the model ran out of memory") from exc
        results = [self._finish(row, params) for row in rows]
        results = self._retry_empty(prompts, params, results, cancelled)
        if on_text is not None and results[0].text.strip():
            on_text(results[0].text)  # the final text, cut at the stop strings (or a retried sample)
        return results

    def _finish(self, row: list[int], params: GenParams) -> Generation:
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        for stop in params.stop:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return Generation(text=text, new_tokens=len(row))

    def _retry_empty(self, prompts: Sequence[Prompt], params: GenParams, results: list[Generation],
                     cancelled: Callable[[], bool] | None = None) -> list[Generation]:
        """Sample again the rows that came back empty, when the profile asks for it (DialoGPT)."""
        retries = params.retry_empty
        if not retries or not params.do_sample:
            return results
        results = list(results)
        for attempt in range(1, retries + 1):
            empty = [i for i, r in enumerate(results) if not r.text.strip()]
            if not empty:
                break
            again = replace(params, retry_empty=0, seed=None if params.seed is None else params.seed + attempt)
            log.debug("retrying %d empty output(s), attempt %d", len(empty), attempt)
            retried = self.generate([prompts[i] for i in empty], again, cancelled=cancelled)
            for i, generation in zip(empty, retried, strict=True):
                results[i] = generation
        return results

    def _lean(self, batch: Any, params: GenParams, between_steps: Callable[[], None] | None = None,
              max_rows: int | None = None, on_text: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> list[list[int]]:
        from models.decode import decode

        def poll() -> bool:
            if between_steps is not None:
                between_steps()
            stop_if_cancelled(cancelled)
            return False

        def stream(rows: list[list[int]]) -> None:
            assert on_text is not None
            text = self.tokenizer.decode(rows[0], skip_special_tokens=True)
            if text.strip() and not text.endswith("\ufffd"):  # not half of a character made of several tokens
                on_text(text)

        stops = self.stop_token_ids()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        should_stop = poll if between_steps is not None or cancelled is not None else None
        prefill_rows = PREFILL_ROWS if between_steps is not None else None
        if self.stepper is None:
            return decode(self.model, ids, mask, params, stop_token_ids=stops,
                          max_rows=max_rows if self.capabilities.continuous_batching else None,
                          prefill_rows=prefill_rows, should_stop=should_stop,
                          on_step=stream if on_text is not None else None, step_threads=self.step_threads)
        step = max_rows or ids.shape[0]
        rows: list[list[int]] = []
        for start in range(0, ids.shape[0], step):  # the int4 steps keep a fixed set of rows: chunks in turn
            rows.extend(decode(
                self.model, ids[start:start + step], mask[start:start + step], params, stop_token_ids=stops,
                stepper=self.stepper, should_stop=should_stop, prefill_rows=prefill_rows,
                on_step=stream if on_text is not None else None,
            ))
        return rows

    def _generate(self, batch: Any, params: GenParams, on_text: Callable[[str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> list[list[int]]:
        """transformers' generate(): seq2seq models, and decoder-only models on a GPU (static cache, compiled)."""
        import torch
        from torch._dynamo.exc import TorchDynamoException
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        streamer = None
        if on_text is not None:
            pieces: list[str] = []

            class _Streamer(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    if text:
                        pieces.append(text)
                        on_text("".join(pieces))

            streamer = _Streamer(self.tokenizer, skip_prompt=not self.is_seq2seq, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "streamer": streamer,
            "max_new_tokens": params.max_new_tokens,
            "do_sample": params.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": list(self.stop_token_ids()) or None,
        }
        if self.decode == "static":
            kwargs["cache_implementation"] = "static"
        if cancelled is not None:

            class _Withdrawn(StoppingCriteria):
                """Polled by generate() after every step: raising leaves generate() at once."""

                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    stop_if_cancelled(cancelled)
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

            kwargs["stopping_criteria"] = StoppingCriteriaList([_Withdrawn()])
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        if params.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = params.no_repeat_ngram_size
        if params.min_new_tokens:
            kwargs["min_new_tokens"] = params.min_new_tokens
        with torch.inference_mode():
            try:
                out = self.model.generate(**batch, **kwargs)
            except TorchDynamoException as exc:
                if self.decode != "static":
                    raise
                # Compiling needs a working toolchain (Triton on CUDA); without one, replies must still come.
                cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
                log.warning("compiling the decode steps failed (%s: %s): decoding without the static cache from now on",
                            type(cause).__name__, (str(cause).splitlines() or [""])[0][:200])
                self.decode = "generate"
                del kwargs["cache_implementation"]
                out = self.model.generate(**batch, **kwargs)
        # seq2seq output starts with the decoder start token; causal output repeats the prompt.
        out = out[:, 1:] if self.is_seq2seq else out[:, batch["input_ids"].shape[1] :]
        stops = set(self.stop_token_ids()) | {self.tokenizer.pad_token_id}
        rows = []
        for seq in out.tolist():
            row: list[int] = []
            for tok in seq:
                if tok in stops:
                    break
                row.append(tok)
            rows.append(row)
        return rows

    def close(self) -> None:
        self.model = None


# A job batch's prompts are prefilled this many at a time, so a reply waits at most about one chunk's prefill.
PREFILL_ROWS = 2


def fast_stepper(model: Any) -> Any:
    """The int4 path's own decode steps (models/fast_llama.py) when the model's shape allows them."""
    from models.fast_llama import FastLlamaStepper, supported

    why = supported(model)
    if why is not None:
        log.info("int4 decode steps through transformers (%s)", why)
        return None
    return FastLlamaStepper(model)
