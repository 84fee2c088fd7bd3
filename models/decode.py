"""The decode loop for decoder-only causal LMs: replies (batch 1), streamed replies, batches of replies and
job batches, with continuous batching.

Why this exists: ``transformers``' ``generate()`` cannot admit a prompt into a running batch or hand control
back between steps. This loop keeps what a chatbot needs: prefill, then a forward on the last token per step,
greedy or sampled selection, per-row stopping; finished rows leave the batch, and with ``max_rows`` the next
waiting prompt takes a finished row's place at the very next step (continuous batching: memory jobs' outputs
differ widely in length). Between prefill groups and steps ``should_stop`` is polled: the model worker
answers waiting replies there, in the middle of a job batch. That, not speed, is its value on a CPU
(docs/benchmarks.md: 0.96x ``generate()`` at batch 1 in float32).

Each group of admitted prompts is prefilled to its own longest prompt only; its key/value cache is padded
with masked zeros to the running batch's length (no compute). Prompts that begin alike (a task's
instructions) have that beginning's cache computed once and copied to each row.

Greedy output is token-for-token identical to ``model.generate(input_ids, attention_mask=..., do_sample=False)``
when all rows are admitted together without a shared prefix (every reply batch; tests/models/test_decode.py):
the model gets the inputs ``generate()`` would pass (same ``position_ids``, 2-D mask, ``logits_to_keep=1``, a
``DynamicCache`` built from the config, mask dropped when it has no padding). Rows admitted later, or with a
shared prefix, match decoding the prompt alone up to float rounding.

Deliberate difference from HF: the repetition penalty and the no-repeat-n-gram ban only look at real
tokens. HF also counts the left padding (so the pad token gets penalised, and a row's output depends on
which other prompts it was batched with); for an unpadded row the two agree.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from models.base import GenParams

if TYPE_CHECKING:
    from models.step_threads import StepThreads

logger = logging.getLogger(__name__)

__all__ = ["decode"]


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
# The cache, the running batch, shared prefixes
# --------------------------------------------------------------------------------------


def plain_cache(model: Any) -> bool:
    """Whether the model's key/value cache has plain layers only (no sliding window), which continuous
    batching pads and cuts by hand; other caches decode all rows together."""
    config = getattr(model, "config", None)
    return config is not None and not getattr(config, "sliding_window", None) and not getattr(
        config, "is_encoder_decoder", False)


def _new_dynamic_cache(model: Any) -> Any:
    """The cache ``generate()`` would build (config-aware, so sliding-window layers match), its plain layers
    growing in place (models/kv_cache.py) instead of being copied at every step."""
    from transformers import DynamicCache

    from models.kv_cache import use_growing_layers

    config = getattr(model, "config", None)
    try:
        if config is not None and hasattr(config, "get_text_config"):
            return use_growing_layers(DynamicCache(config=config.get_text_config(decoder=True)))
        return use_growing_layers(DynamicCache())
    except Exception:  # odd configs: let the model build its own cache
        logger.debug("DynamicCache(config=...) failed; letting the model create its cache", exc_info=True)
        return None


# Shorter common beginnings are prefilled with each prompt: copying their cache would save next to nothing.
MIN_SHARED_PREFIX = 32


class _Batch:
    """The running rows: their cache, mask, next positions, last tokens and selection state."""

    def __init__(self, plain: bool = True) -> None:
        self.plain = plain  # a cache of plain layers, whose columns can be padded and cut by hand
        self.rows: list[int] = []  # input row index of each batch position
        self.cache: Any = None
        self.state: Any = None  # the int4 decode steps' own cache (models/fast_llama.py), once they start
        self.mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None
        self.selector: TokenSelector | None = None

    def add(self, rows: list[int], cache: Any, mask: torch.Tensor, next_pos: torch.Tensor, tokens: torch.Tensor,
            selector: TokenSelector) -> None:
        if self.cache is None:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.next_pos, self.tokens, self.selector = next_pos, tokens, selector
            return
        assert self.mask is not None and self.next_pos is not None and self.tokens is not None
        assert self.selector is not None
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.rows.extend(rows)
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.tokens = torch.cat([self.tokens, tokens])
        self.selector.extend(selector)

    def keep(self, keep: list[int]) -> None:
        """Only the rows at positions ``keep`` stay; leading columns no row uses any more are dropped."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache = [], None
            return
        assert self.mask is not None and self.next_pos is not None and self.tokens is not None
        assert self.selector is not None
        rows_t = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, rows_t)
        self.next_pos = self.next_pos.index_select(0, rows_t)
        self.tokens = self.tokens.index_select(0, rows_t)
        self.selector.keep(keep, rows_t)
        if self.state is not None:  # the decode steps keep their own cache: no columns to drop
            self.state.keep(rows_t)
            return
        if not self.plain:  # e.g. sliding-window layers: their length is not the mask's; rows only
            self.cache.batch_select_indices(rows_t)
            return
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, rows_t)[:, :, start:]
            layer.values = layer.values.index_select(0, rows_t)[:, :, start:]

    def step_mask(self) -> torch.Tensor | None:
        """The mask for the next step, or None without padding (as generate() drops it, for the same numerics)."""
        assert self.mask is not None
        return None if bool(self.mask.all()) else self.mask


class _SharedPrefixes:
    """Prompts that begin alike (a task's instructions and worked example) have that beginning's key/value
    cache computed once and copied to each row, instead of prefilled once per row.

    Prompts are grouped by their first tokens; a group's shared part is its members' longest common prefix
    (at least `MIN_SHARED_PREFIX` tokens, always leaving each member one token of its own to prefill).
    """

    def __init__(self, model: Any, prompts: list[list[int]], extra: dict[str, Any]) -> None:
        self.model, self.prompts, self.extra = model, prompts, extra
        self.length: dict[int, int] = {}  # prompt index -> shared tokens
        self._leader: dict[int, int] = {}  # prompt index -> the group member whose cache is computed
        self._caches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tokens in enumerate(prompts):
            groups.setdefault(tuple(tokens[:8]), []).append(i)
        for members in groups.values():
            if len(members) < 2:
                continue
            first = prompts[members[0]]
            shared = min(len(prompts[m]) for m in members) - 1
            for m in members[1:]:
                other = prompts[m]
                n = 0
                while n < shared and other[n] == first[n]:
                    n += 1
                shared = n
            if shared >= MIN_SHARED_PREFIX:
                for m in members:
                    self.length[m], self._leader[m] = shared, members[0]

    def split(self, group: list[int]) -> list[tuple[int, list[int]]]:
        """`group` as (shared tokens, rows) parts, rows without a shared prefix together (0), in order of first
        appearance: each part is prefilled on its own."""
        parts: dict[int, list[int]] = {}
        for row in group:
            parts.setdefault(self._leader.get(row, -1), []).append(row)
        return [(self.length[rows[0]] if leader >= 0 else 0, rows) for leader, rows in parts.items()]

    def cache(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        leader = self._leader[row]
        if leader not in self._caches:
            tokens = self.prompts[leader][: self.length[row]]
            ids = torch.tensor([tokens], dtype=torch.long, device=model_device(self.model, torch.device("cpu")))
            out = self.model(input_ids=ids, use_cache=True, return_dict=True,
                             **{cache_arg(self.model): _new_dynamic_cache(self.model)}, **self.extra)
            self._caches[leader] = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        return self._caches[leader]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenParams,
    *,
    stop_token_ids: Sequence[int] = (),
    max_rows: int | None = None,
    prefill_rows: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    stepper: Any = None,
    on_step: Callable[[list[list[int]]], None] | None = None,
    step_threads: StepThreads | None = None,
) -> list[list[int]]:
    """New tokens for every row of a LEFT-padded batch (without the stop token), decoding at most ``max_rows``
    rows at a time (default: all).

    Prompts are admitted in input order, ``prefill_rows`` at a time (default: as many as there are free
    places). ``should_stop`` is polled between prefill groups and between steps (the model worker serves
    waiting replies there); when it returns True the tokens so far are returned. ``on_step`` gets every row's
    tokens so far after each step (streaming). ``params.temperature <= 0`` with sampling is greedy, as chat
    front-ends use temperature 0.

    ``stepper`` (a :class:`models.fast_llama.FastLlamaStepper`, the int4 CPU path) runs the decode steps
    instead of the model's forward. Its cache holds a fixed set of rows, so every prompt is admitted before
    the first step (``max_rows`` is ignored: a caller wanting fewer rows at once passes fewer prompts).

    ``step_threads`` (a :class:`models.step_threads.StepThreads`) sets the thread count of each decode step
    through the model's forward (the int4 stepper's steps keep every thread).
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("input_ids and attention_mask must both be (batch, seq_len)")
    total = input_ids.shape[0]
    results: list[list[int]] = [[] for _ in range(total)]
    if total == 0 or params.max_new_tokens <= 0:
        return results
    device = model_device(model, input_ids.device)
    width_all = input_ids.shape[1]
    prompts = [row[width_all - int(n):] for row, n in zip(input_ids.tolist(), attention_mask.sum(-1).tolist(),
                                                           strict=True)]
    extra: dict[str, Any] = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache_name = cache_arg(model)
    stop_ids = frozenset(int(t) for t in stop_token_ids)
    plain = plain_cache(model)
    if stepper is not None or not max_rows or not plain:
        max_rows = total
    waiting = deque(range(total))
    batch = _Batch(plain)
    # Groups after the first are padded into the running cache by hand: plain layers only.
    group_size = max(1, prefill_rows or max_rows) if plain else total
    prefixes = _SharedPrefixes(model, prompts, extra) if plain and _new_dynamic_cache(model) is not None else None

    def stopped() -> bool:
        return should_stop is not None and should_stop()

    def admit(group: list[int]) -> None:
        for shared, members in prefixes.split(group) if prefixes is not None else [(0, group)]:
            prefill(members, shared)

    def prefill(group: list[int], shared: int) -> None:
        """Prefill `group`'s prompts after their first `shared` tokens, whose cache is computed once."""
        suffixes = [prompts[r][shared:] for r in group]
        width = max(len(t) for t in suffixes)
        g_ids = torch.tensor([[0] * (width - len(t)) + t for t in suffixes], dtype=torch.long, device=device)
        g_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in suffixes], dtype=torch.long,
                              device=device)
        cache = _new_dynamic_cache(model)
        if shared:
            assert prefixes is not None
            head = torch.tensor([prompts[group[0]][:shared]] * len(group), dtype=torch.long, device=device)
            g_ids = torch.cat([head, g_ids], dim=1)
            g_mask = torch.cat([torch.ones_like(head), g_mask], dim=1)
            for layer, (keys, values) in enumerate(prefixes.cache(group[0])):
                cache.update(keys.expand(len(group), -1, -1, -1).contiguous(),
                             values.expand(len(group), -1, -1, -1).contiguous(), layer)
        positions = prompt_position_ids(g_mask)
        out = model(input_ids=g_ids[:, shared:], attention_mask=None if bool(g_mask.all()) else g_mask,
                    position_ids=positions[:, shared:], use_cache=True, return_dict=True, **{cache_name: cache},
                    **extra)
        logits = out.logits[:, -1].float()
        cache = output_cache(out)
        del out
        selector = TokenSelector(params, g_ids, g_mask, logits.shape[-1], stop_token_ids)
        tokens, token_list = selector.next_tokens(logits)
        keep = record_step(token_list, group, results, stop_ids, params.max_new_tokens)
        if not keep:
            return
        next_pos = positions[:, -1:] + 1
        if len(keep) < len(group):
            keep_t = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(keep_t)
            g_mask, next_pos, tokens = (t.index_select(0, keep_t) for t in (g_mask, next_pos, tokens))
            selector.keep(keep, keep_t)
        batch.add([group[i] for i in keep], cache, g_mask, next_pos, tokens, selector)

    with torch.inference_mode():
        while True:
            while waiting and len(batch.rows) < max_rows:
                if stopped():
                    return results
                room = min(group_size, max_rows - len(batch.rows), len(waiting))
                admit([waiting.popleft() for _ in range(room)])
            if on_step is not None:
                on_step(results)
            if not batch.rows:
                return results
            if stopped():
                return results
            assert batch.mask is not None and batch.tokens is not None and batch.selector is not None
            if stepper is not None:
                if batch.state is None:  # every row is in: the decode steps take over the cache
                    batch.state, batch.cache = stepper.start(batch.cache, batch.mask, params.max_new_tokens), None
                logits = batch.state.step(batch.tokens, batch.next_pos)
            else:
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], dim=-1)
                rows_now, length = batch.mask.shape
                with step_threads.step(rows_now, length) if step_threads is not None else nullcontext():
                    out = model(input_ids=batch.tokens[:, None], attention_mask=batch.step_mask(),
                                position_ids=batch.next_pos, use_cache=True, return_dict=True,
                                **{cache_name: batch.cache}, **extra)
                batch.cache = output_cache(out)
                logits = out.logits[:, -1].float()
                del out
            batch.next_pos = batch.next_pos + 1  # type: ignore[operator]
            batch.tokens, token_list = batch.selector.next_tokens(logits)
            batch.keep(record_step(token_list, batch.rows, results, stop_ids, params.max_new_tokens))
