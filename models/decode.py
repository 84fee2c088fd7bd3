"""Lean batched decode loop for decoder-only causal LMs.

Why this exists: ``transformers``' ``generate()`` rebuilds a generation config, a
logits-processor list, stopping criteria and a fresh set of model kwargs on every
call, and on every step it re-slices/clones inputs and runs its bookkeeping in
Python. For a 135M model on a 2-core CPU that fixed per-step overhead is a large
share of the step time. This module keeps only what a chatbot needs: one prefill,
then a forward on the last token per step, greedy or sampled selection, per-row
stopping, and finished rows leave the batch so later steps only compute live rows.

Greedy output is meant to be token-for-token identical to
``model.generate(input_ids, attention_mask=..., do_sample=False, ...)`` on a
left-padded batch: the model is called with exactly the inputs ``generate()``
would pass (same ``position_ids``, same 2-D mask, ``logits_to_keep=1``, a
``DynamicCache`` built from the config, mask dropped when it has no padding).

Deliberate difference from HF: the repetition penalty and the no-repeat-n-gram
ban only look at real tokens. HF also counts the left padding (so the pad token
gets penalised, and a row's output depends on which other prompts it was batched
with); for an unpadded row the two agree.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from models.base import GenParams

logger = logging.getLogger(__name__)

__all__ = ["decode"]


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def decode(
    model: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    params: GenParams,
    *,
    stop_token_ids: Sequence[int] = (),
    should_stop: Callable[[], bool] | None = None,
    stepper: Any = None,
    prefill_rows: int | None = None,
    on_step: Callable[[list[list[int]]], None] | None = None,
) -> list[list[int]]:
    """Generate continuations for a LEFT-padded batch.

    Returns, for every input row, the newly generated token ids without the stop
    token. ``should_stop`` is polled before every forward pass; when it returns
    True the tokens generated so far are returned (cancellation, e.g. the user
    sent a new message).

    ``stop_token_ids`` end a row (not included). ``params.temperature <= 0`` with sampling is greedy, as chat
    front-ends use temperature 0. ``on_step`` gets every row's tokens so far after each step (streaming).

    ``stepper`` (a :class:`models.fast_llama.FastLlamaStepper`) runs the decode steps after the prefill
    instead of the model's own forward (the int4 CPU path). ``prefill_rows`` prefills a big batch that many
    rows at a time, polling ``should_stop`` between the chunks, so that a caller can serve other work there
    (the model worker answers waiting replies in the middle of a job batch).
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("input_ids and attention_mask must both be (batch, seq_len)")
    batch_size = input_ids.shape[0]
    if batch_size == 0 or params.max_new_tokens <= 0:
        return [[] for _ in range(batch_size)]

    return _decode_dynamic(model, input_ids, attention_mask, params, tuple(stop_token_ids), should_stop=should_stop,
                           stepper=stepper, prefill_rows=prefill_rows, on_step=on_step)


# --------------------------------------------------------------------------------------
# Token selection
# --------------------------------------------------------------------------------------


class TokenSelector:
    """Per-row logits processing and token choice, in HF's processor order.

    Order (as in ``GenerationMixin._get_logits_processor``): repetition penalty,
    no-repeat-n-gram, then (sampling only) temperature, top-k, top-p. Keeping the
    order matters: top-p after temperature gives a different nucleus than before.

    Rows are addressed by their position in the *current* (shrinking) batch;
    :meth:`keep` drops the state of rows that left.
    """

    def __init__(
        self,
        params: GenParams,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        vocab_size: int,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        self.params = params
        self.vocab_size = vocab_size
        device = prompt_ids.device
        # min_new_tokens: the stop tokens are banned while a row has fewer new tokens (HF's
        # MinNewTokensLengthLogitsProcessor); `produced` counts each row's tokens so far.
        self.unstoppable: torch.Tensor | None = None
        if params.min_new_tokens > 0 and stop_token_ids:
            self.unstoppable = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
        self.produced = torch.zeros(prompt_ids.shape[0], dtype=torch.long, device=device)
        self.sampling = params.do_sample and params.temperature > 0
        self.generator: torch.Generator | None = None
        if self.sampling and params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)

        real = prompt_mask.bool()
        self.seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            # One extra column swallows padding positions so scatter_ needs no mask.
            ids = prompt_ids.masked_fill(~real, vocab_size).clamp(max=vocab_size)
            seen = torch.zeros((prompt_ids.shape[0], vocab_size + 1), dtype=torch.bool, device=device)
            seen.scatter_(1, ids, True)
            self.seen = seen[:, :vocab_size].contiguous()

        self.ngram_size = params.no_repeat_ngram_size
        self.history: list[list[int]] = []
        self.ngrams: list[dict[tuple[int, ...], set[int]]] = []
        if self.ngram_size > 0:
            n = self.ngram_size
            for row_ids, row_mask in zip(prompt_ids.tolist(), real.tolist(), strict=True):
                tokens = [t for t, m in zip(row_ids, row_mask, strict=True) if m]
                table: dict[tuple[int, ...], set[int]] = {}
                for i in range(len(tokens) - n + 1):
                    table.setdefault(tuple(tokens[i : i + n - 1]), set()).add(tokens[i + n - 1])
                self.history.append(tokens)
                self.ngrams.append(table)

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick one token per row from float32 ``(rows, vocab)`` logits."""
        p = self.params
        scores = logits
        if self.seen is not None:
            penalised = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
            scores = torch.where(self.seen, penalised, scores)
        if self.ngram_size > 0:
            scores = self._ban_ngrams(scores)
        if self.unstoppable is not None:
            young = (self.produced < p.min_new_tokens).nonzero().squeeze(1)
            if young.numel():
                scores = scores.clone()
                scores[young[:, None], self.unstoppable[None, :]] = -float("inf")
        if not self.sampling:
            return torch.argmax(scores, dim=-1)

        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k > 0:
            k = min(p.top_k, scores.shape[-1])
            kth = torch.topk(scores, k)[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if p.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(scores, descending=False)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cum <= (1 - p.top_p)
            remove_sorted[..., -1:] = False  # always keep the best token
            remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
            scores = scores.masked_fill(remove, -float("inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)

    def next_tokens(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """One step's choice for every row, recorded for the penalties: the tokens as a tensor (fed back to
        the model) and as a list (for per-row bookkeeping)."""
        tokens = self.select(logits)
        token_list = tokens.tolist()
        self.observe(tokens, token_list)
        return tokens, token_list

    def _ban_ngrams(self, scores: torch.Tensor) -> torch.Tensor:
        n = self.ngram_size
        banned_rows: list[int] = []
        banned_cols: list[int] = []
        for row, (tokens, table) in enumerate(zip(self.history, self.ngrams, strict=True)):
            banned = table.get(tuple(tokens[len(tokens) - (n - 1) :]))
            if banned:
                banned_rows.extend([row] * len(banned))
                banned_cols.extend(banned)
        if not banned_rows:
            return scores
        scores = scores.clone()
        scores[banned_rows, banned_cols] = -float("inf")
        return scores

    def observe(self, tokens: torch.Tensor, token_list: list[int]) -> None:
        """Record the tokens just chosen (for penalties / n-gram bans / the minimum length)."""
        self.produced += 1
        if self.seen is not None:
            self.seen[torch.arange(tokens.shape[0], device=tokens.device), tokens] = True
        if self.ngram_size > 0:
            n = self.ngram_size
            for tokens_row, table, tok in zip(self.history, self.ngrams, token_list, strict=True):
                tokens_row.append(tok)
                if len(tokens_row) >= n:
                    table.setdefault(tuple(tokens_row[len(tokens_row) - n : -1]), set()).add(tok)

    def keep(self, rows: list[int], rows_t: torch.Tensor) -> None:
        """Drop state for rows that left the batch; ``rows`` are current positions."""
        self.produced = self.produced.index_select(0, rows_t)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, rows_t)
        if self.ngram_size > 0:
            self.history = [self.history[i] for i in rows]
            self.ngrams = [self.ngrams[i] for i in rows]

    def extend(self, other: TokenSelector) -> None:
        """Rows joining the batch (continuous batching) bring their state; `other` has the same params."""
        self.produced = torch.cat([self.produced, other.produced])
        if self.seen is not None and other.seen is not None:
            self.seen = torch.cat([self.seen, other.seen])
        if self.ngram_size > 0:
            self.history.extend(other.history)
            self.ngrams.extend(other.ngrams)


def record_step(
    token_list: list[int],
    live_rows: list[int],
    results: list[list[int]],
    stop_ids: frozenset[int],
    max_new_tokens: int,
) -> list[int]:
    """Append one step's tokens to ``results``; return positions of rows still live."""
    still_live: list[int] = []
    for pos, (row, tok) in enumerate(zip(live_rows, token_list, strict=True)):
        if tok in stop_ids:
            continue
        out = results[row]
        out.append(tok)
        if len(out) < max_new_tokens:
            still_live.append(pos)
    return still_live


def prompt_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions for a left-padded prompt, exactly as ``generate()`` computes them.

    Real tokens count from 0 at the first non-pad token; pad slots get 0 (they are
    masked out anyway). For left padding this equals ``(cumsum - 1).clamp(min=0)``.
    """
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def accepts_logits_to_keep(model: Any) -> bool:
    """True if ``model.forward`` has ``logits_to_keep`` (``generate()`` then passes 1)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_arg(model: Any) -> str:
    """The forward's name for the key/value cache: transformers 5.24 renamed ``past_key_values`` to ``cache``
    (the old name is accepted with a warning until 5.40), and membot allows any 5.x."""
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def output_cache(out: Any) -> Any:
    """The cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def model_device(model: Any, fallback: torch.device) -> torch.device:
    """The device of the model's parameters (inputs are moved there)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return fallback


# --------------------------------------------------------------------------------------
# Plain loop with a DynamicCache
# --------------------------------------------------------------------------------------


def _new_dynamic_cache(model: Any) -> Any:
    """The cache ``generate()`` would build (config-aware, so sliding-window layers match), its plain layers
    growing in place (models/kv_cache.py) instead of being copied at every step."""
    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover - transformers is a hard dependency in practice
        return None
    from models.kv_cache import use_growing_layers

    config = getattr(model, "config", None)
    try:
        if config is not None and hasattr(config, "get_text_config"):
            return use_growing_layers(DynamicCache(config=config.get_text_config(decoder=True)))
        return use_growing_layers(DynamicCache())
    except Exception:  # odd configs: let the model build its own cache
        logger.debug("DynamicCache(config=...) failed; letting the model create its cache", exc_info=True)
        return None


def _select_cache_rows(cache: Any, rows_t: torch.Tensor) -> Any:
    """Keep only ``rows_t`` in the batch dimension of the KV cache."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows_t)
        return cache
    # Legacy tuple-of-tuples cache.
    return tuple(tuple(t.index_select(0, rows_t) for t in layer) for layer in cache)


def _concat_cache_rows(cache: Any, more: Any) -> Any:
    """Append `more`'s rows to `cache` (both prefilled to the same padded length)."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # legacy tuples
        return tuple(tuple(torch.cat([a, b]) for a, b in zip(la, lb, strict=True))
                     for la, lb in zip(cache, more, strict=True))
    for mine, theirs in zip(layers, more.layers, strict=True):
        mine.keys = torch.cat([mine.keys, theirs.keys])
        mine.values = torch.cat([mine.values, theirs.values])
    return cache


def _decode_dynamic(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenParams,
    stop_token_ids: tuple[int, ...],
    *,
    should_stop: Callable[[], bool] | None,
    stepper: Any = None,
    prefill_rows: int | None = None,
    on_step: Callable[[list[list[int]]], None] | None = None,
) -> list[list[int]]:
    batch_size = input_ids.shape[0]
    results: list[list[int]] = [[] for _ in range(batch_size)]
    if should_stop is not None and should_stop():
        return results

    device = model_device(model, input_ids.device)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    position_ids = prompt_position_ids(attention_mask)
    next_pos = position_ids[:, -1:] + 1
    # generate() drops an all-ones mask (lets SDPA take its is_causal path); match it
    # so the numerics — and therefore greedy tokens — are the same.
    mask: torch.Tensor | None = None if bool(attention_mask.all()) else attention_mask

    extra: dict[str, Any] = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache_name = cache_arg(model)
    stop_ids = frozenset(int(t) for t in stop_token_ids)
    live_rows = list(range(batch_size))

    with torch.inference_mode():
        chunk = prefill_rows if prefill_rows and prefill_rows < batch_size else batch_size
        cache, parts = None, []
        for start in range(0, batch_size, chunk):
            if start and should_stop is not None and should_stop():
                return results
            rows = slice(start, start + chunk)
            out = model(
                input_ids=input_ids[rows],
                attention_mask=None if mask is None else mask[rows],
                position_ids=position_ids[rows],
                **{cache_name: _new_dynamic_cache(model)},
                use_cache=True,
                return_dict=True,
                **extra,
            )
            cache = output_cache(out) if cache is None else _concat_cache_rows(cache, output_cache(out))
            parts.append(out.logits[:, -1].float())
            del out
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        state = None
        if stepper is not None:
            state = stepper.start(cache, attention_mask, params.max_new_tokens)
            cache = None
        selector = TokenSelector(params, input_ids, attention_mask, logits.shape[-1], stop_token_ids)

        while True:
            tokens, token_list = selector.next_tokens(logits)
            keep = record_step(token_list, live_rows, results, stop_ids, params.max_new_tokens)
            if on_step is not None:
                on_step(results)
            if not keep:
                break
            if should_stop is not None and should_stop():
                break
            if len(keep) < len(live_rows):
                # Finished rows leave the batch: later steps compute live rows only.
                rows_t = torch.tensor(keep, dtype=torch.long, device=device)
                live_rows = [live_rows[i] for i in keep]
                if state is not None:
                    state.keep(rows_t)
                else:
                    cache = _select_cache_rows(cache, rows_t)
                tokens = tokens.index_select(0, rows_t)
                next_pos = next_pos.index_select(0, rows_t)
                if mask is not None:
                    mask = mask.index_select(0, rows_t)
                selector.keep(keep, rows_t)
            if state is not None:
                logits = state.step(tokens, next_pos)
                next_pos = next_pos + 1
                continue
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                **{cache_name: cache},
                use_cache=True,
                return_dict=True,
                **extra,
            )
            cache = output_cache(out)
            logits = out.logits[:, -1].float()
            del out
            next_pos = next_pos + 1
    return results
