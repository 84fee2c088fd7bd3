"""Static-cache decode with the single-token step replayed from a CUDA graph.

Why: on a GPU a 135M-parameter decode step is dominated by kernel-launch and
Python overhead (hundreds of tiny kernels per token). Capturing one decode step
in a ``torch.cuda.CUDAGraph`` turns it into a single replay. Graphs need fixed
shapes and fixed memory addresses, hence:

* a transformers ``StaticCache`` (pre-allocated K/V, written in place at a
  device-side ``cumulative_length``),
* batch padded up to a bucket (1, 2, 4, ..., 64) and cache length rounded up to a
  bucket, one graph per (batch bucket, cache bucket) kept in a small LRU,
* an explicit 4-D attention mask buffer updated in place (a 4-D mask makes HF skip
  its Python-side mask construction, which would not be capturable).

Finished rows cannot leave a captured batch; they keep running on their last
token and their logits are ignored (cheap on GPU, and the batch only ever shrinks).
Calls are serialised by one module lock: runners (cache + graph) are shared
state, and one GPU gains nothing from interleaving two decode loops anyway.

The same code runs without capture (``capture=False``), eagerly, on any device:
that is how the static-cache bookkeeping is tested on CPU. :func:`try_decode_with_cuda_graphs`
returns ``None`` (caller falls back to the plain loop) when the model is not on
CUDA, the architecture is unsupported, or anything fails; the reason is logged once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from models.decode import (
    DecodeParams,
    TokenSelector,
    accepts_logits_to_keep,
    cache_arg,
    model_device,
    prompt_position_ids,
    record_step,
)

logger = logging.getLogger(__name__)

__all__ = ["BATCH_BUCKETS", "decode_with_static_cache", "try_decode_with_cuda_graphs"]

BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
MIN_CACHE_BUCKET = 256
MAX_RUNNERS_PER_MODEL = 4
SUPPORTED_ATTENTION = ("sdpa", "eager")

_logged: set[str] = set()
_lock = threading.Lock()
_runners: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], _StepRunner]] = (
    weakref.WeakKeyDictionary()
)


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.warning("CUDA-graph decode unavailable, using plain loop: %s", message)


def batch_bucket(batch_size: int) -> int | None:
    """Smallest bucket holding ``batch_size`` rows, or None if too large."""
    return next((b for b in BATCH_BUCKETS if b >= batch_size), None)


def cache_bucket(total_len: int) -> int:
    """Cache length rounded up to a power of two (>= MIN_CACHE_BUCKET) to bound graph count."""
    size = MIN_CACHE_BUCKET
    while size < total_len:
        size *= 2
    return size


def _unsupported_reason(model: Any, input_ids: torch.Tensor) -> str | None:
    config = getattr(model, "config", None)
    if config is None:
        return "model has no config"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    attn = getattr(config, "_attn_implementation", None)
    if attn not in SUPPORTED_ATTENTION:
        return f"attention implementation {attn!r} is not supported"
    text_config = config.get_text_config(decoder=True)
    layer_types = getattr(text_config, "layer_types", None) or []
    if getattr(text_config, "sliding_window", None) or any(t != "full_attention" for t in layer_types):
        return "sliding-window / hybrid attention layers are not supported"
    if batch_bucket(input_ids.shape[0]) is None:
        return f"batch {input_ids.shape[0]} exceeds the largest bucket {BATCH_BUCKETS[-1]}"
    return None


def try_decode_with_cuda_graphs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: DecodeParams,
    *,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None,
) -> list[list[int]] | None:
    """CUDA-graph decode, or None when the caller should use the plain loop."""
    if not torch.cuda.is_available():
        _log_once("CUDA is not available")
        return None
    if model_device(model, input_ids.device).type != "cuda":
        _log_once("model is not on a CUDA device")
        return None
    reason = _unsupported_reason(model, input_ids)
    if reason is not None:
        _log_once(reason)
        return None
    try:
        return decode_with_static_cache(
            model,
            input_ids,
            attention_mask,
            params,
            pad_token_id=pad_token_id,
            should_stop=should_stop,
            capture=True,
        )
    except Exception as exc:  # any failure means "use the plain loop"
        _log_once(f"{type(exc).__name__}: {exc}")
        logger.debug("CUDA-graph decode failed", exc_info=True)
        _runners.pop(model, None)  # do not reuse a possibly half-captured runner
        return None


class _StepRunner:
    """Static buffers + StaticCache + (optionally) the captured decode step for one bucket."""

    def __init__(self, model: Any, batch: int, cache_len: int, capture: bool) -> None:
        from transformers import StaticCache

        # Weak: the runner lives in a WeakKeyDictionary keyed by the model, and a
        # strong reference here would keep the model (and its graphs) alive forever.
        self._model_ref = weakref.ref(model)
        self.batch = batch
        self.cache_len = cache_len
        self.capture = capture
        self.device = model_device(model, torch.device("cpu"))
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)
        self.extra: dict[str, Any] = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.cache_name = cache_arg(model)  # read once: the signature lookup is too slow for every step
        self.bool_mask = model.config._attn_implementation == "sdpa"
        dtype = next(model.parameters()).dtype
        self.input_ids = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        self.position_ids = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        self.mask2d = torch.zeros((batch, cache_len), dtype=torch.bool, device=self.device)
        # sdpa takes a boolean "may attend" mask; eager adds a float mask to the scores.
        self.mask4d = (
            self.mask2d[:, None, None, :]
            if self.bool_mask
            else torch.full((batch, 1, 1, cache_len), torch.finfo(dtype).min, dtype=dtype, device=self.device)
        )
        self.graph: Any = None
        self.logits: torch.Tensor | None = None

    def reset(self, prompt_mask: torch.Tensor) -> None:
        """Zero the cache in place (addresses must not change) and load the prompt mask."""
        self.cache.reset()
        self.mask2d.zero_()
        self.mask2d[:, : prompt_mask.shape[1]] = prompt_mask.bool()
        if not self.bool_mask:
            self.mask4d.fill_(torch.finfo(self.mask4d.dtype).min)
            self.mask4d[:, 0, 0, : prompt_mask.shape[1]].masked_fill_(prompt_mask.bool(), 0.0)

    def allow_slot(self, slot: int) -> None:
        """Let every row attend to cache slot ``slot`` (the token being fed now)."""
        self.mask2d[:, slot] = True
        if not self.bool_mask:
            self.mask4d[:, 0, 0, slot] = 0.0

    @property
    def model(self) -> Any:
        model = self._model_ref()
        if model is None:  # pragma: no cover - runners are dropped with their model
            raise RuntimeError("model was garbage-collected")
        return model

    def prefill(self, ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask2d,  # full cache width: StaticCache masks are max_cache_len wide
            position_ids=prompt_position_ids(prompt_mask),
            **{self.cache_name: self.cache},
            use_cache=True,
            return_dict=True,
            **self.extra,
        )
        return out.logits[:, -1]

    def _forward_step(self) -> torch.Tensor:
        out = self.model(
            input_ids=self.input_ids,
            attention_mask=self.mask4d,
            position_ids=self.position_ids,
            **{self.cache_name: self.cache},
            use_cache=True,
            return_dict=True,
            **self.extra,
        )
        return out.logits

    def step(self) -> torch.Tensor:
        """One decode step over the whole bucket; returns (batch, 1, vocab) logits."""
        if not self.capture:
            return self._forward_step()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        assert self.logits is not None
        return self.logits

    def _capture(self) -> None:
        # Warm-up runs advance cumulative_length and write K/V into not-yet-used
        # slots; save and restore the counters so the real first replay starts
        # at the right slot (the garbage slots are overwritten before they are
        # unmasked).
        counters = [layer.cumulative_length for layer in self.cache.layers]
        saved = [c.clone() for c in counters]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward_step()
        torch.cuda.current_stream().wait_stream(stream)
        for counter, value in zip(counters, saved, strict=True):
            counter.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._forward_step()
        for counter, value in zip(counters, saved, strict=True):
            counter.copy_(value)
        self.graph = graph


def _get_runner(model: Any, batch: int, cache_len: int, capture: bool) -> _StepRunner:
    dtype = next(model.parameters()).dtype
    key = (batch, cache_len, dtype, capture)
    per_model = _runners.setdefault(model, OrderedDict())
    runner = per_model.get(key)
    if runner is None:
        runner = _StepRunner(model, batch, cache_len, capture)
        per_model[key] = runner
        while len(per_model) > MAX_RUNNERS_PER_MODEL:
            per_model.popitem(last=False)  # frees that bucket's cache + graph
    per_model.move_to_end(key)
    return runner


def decode_with_static_cache(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: DecodeParams,
    *,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
    capture: bool = True,
) -> list[list[int]]:
    """Bucketed static-cache decode; ``capture=False`` runs the same steps eagerly."""
    batch_size, prompt_len = input_ids.shape
    results: list[list[int]] = [[] for _ in range(batch_size)]
    if batch_size == 0 or params.max_new_tokens <= 0:
        return results
    if should_stop is not None and should_stop():
        return results
    bucket = batch_bucket(batch_size)
    if bucket is None:
        raise ValueError(f"batch {batch_size} exceeds the largest bucket {BATCH_BUCKETS[-1]}")
    device = model_device(model, input_ids.device)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)

    # Bucket padding rows: all pad tokens, attending only to their last slot so
    # softmax never sees a fully masked row (which would give NaNs).
    ids = torch.full((bucket, prompt_len), pad_token_id, dtype=torch.long, device=device)
    ids[:batch_size] = input_ids
    prompt_mask = torch.zeros((bucket, prompt_len), dtype=torch.long, device=device)
    prompt_mask[:batch_size] = attention_mask
    prompt_mask[batch_size:, -1] = 1
    next_pos = prompt_position_ids(prompt_mask)[:, -1:] + 1

    stop_ids = frozenset(int(t) for t in params.stop_token_ids)
    live_rows = list(range(batch_size))  # original row index of each live row
    live_slots = list(range(batch_size))  # its row inside the bucket

    with _lock, torch.inference_mode():
        runner = _get_runner(model, bucket, cache_bucket(prompt_len + params.max_new_tokens), capture)
        runner.reset(prompt_mask)
        logits = runner.prefill(ids, prompt_mask)[:batch_size].float()
        selector = TokenSelector(params, input_ids, attention_mask, logits.shape[-1])
        slots_t = torch.tensor(live_slots, dtype=torch.long, device=device)
        step = 0
        while True:
            tokens, token_list = selector.next_tokens(logits)
            keep = record_step(token_list, live_rows, results, stop_ids, params.max_new_tokens)
            if not keep:
                break
            if should_stop is not None and should_stop():
                break
            if len(keep) < len(live_rows):
                keep_t = torch.tensor(keep, dtype=torch.long, device=device)
                live_rows = [live_rows[i] for i in keep]
                live_slots = [live_slots[i] for i in keep]
                tokens = tokens.index_select(0, keep_t)
                selector.keep(keep, keep_t)
                slots_t = torch.tensor(live_slots, dtype=torch.long, device=device)
            runner.input_ids[slots_t, 0] = tokens
            runner.position_ids.copy_(next_pos + step)
            runner.allow_slot(prompt_len + step)
            logits = runner.step()[:, -1].index_select(0, slots_t).float()
            step += 1
    return results
