"""Continuous batching for background work: at most ``max_rows`` sequences decode at once, and a row that
finishes hands its place to the next waiting prompt at the very next step.

Why: memory jobs produce outputs of very different lengths (a three-line session memory next to one that
runs to the token limit). A plain batch decodes until its longest row is done, so most of its steps run
one or two rows at batch-1 speed; and a left-padded batch prefills every row to the longest prompt,
computing the padding too. Here each group of admitted prompts is prefilled to its own longest prompt
only, its key/value cache is padded with masked zeros to the running batch's length (no compute), and
the batch stays full while prompts wait. This is what serving engines call continuous (in-flight)
batching; it is used for job batches, where identity with ``generate()`` is not promised (a row's
padding differs from the batch it would have had there; greedy output matches decoding the prompt alone
up to float rounding).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from models.base import GenParams
from models.decode import (
    TokenSelector,
    accepts_logits_to_keep,
    cache_arg,
    model_device,
    output_cache,
    prompt_position_ids,
    record_step,
)
from models.decode import _new_dynamic_cache as new_dynamic_cache

__all__ = ["decode_continuous"]

# Shorter common beginnings are prefilled with each prompt: copying their cache would save next to nothing.
MIN_SHARED_PREFIX = 32


class _Batch:
    """The running rows: their cache, mask, next positions, last tokens and selection state."""

    def __init__(self) -> None:
        self.rows: list[int] = []  # input row index of each batch position
        self.cache: Any = None
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
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, rows_t)[:, :, start:]
            layer.values = layer.values.index_select(0, rows_t)[:, :, start:]


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
                             **{cache_arg(self.model): new_dynamic_cache(self.model)}, **self.extra)
            self._caches[leader] = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        return self._caches[leader]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def decode_continuous(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: GenParams,
    *,
    stop_token_ids: Sequence[int] = (),
    max_rows: int,
    prefill_rows: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """New tokens for every row of a left-padded batch, decoding at most ``max_rows`` rows at a time.

    Prompts are admitted in input order, ``prefill_rows`` at a time (default: as many as there are free
    places); ``should_stop`` is polled between prefill groups and between steps (the model worker serves
    waiting replies there) and ends the work early when it returns True.
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
    waiting = deque(range(total))
    batch = _Batch()
    group_size = max(1, prefill_rows or max_rows)
    prefixes = _SharedPrefixes(model, prompts, extra) if new_dynamic_cache(model) is not None else None

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
        cache = new_dynamic_cache(model)
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
            if not batch.rows:
                return results
            if stopped():
                return results
            assert batch.mask is not None and batch.tokens is not None and batch.selector is not None
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], dim=-1)
            out = model(input_ids=batch.tokens[:, None], attention_mask=batch.mask, position_ids=batch.next_pos,
                        use_cache=True, return_dict=True, **{cache_name: batch.cache}, **extra)
            batch.cache = output_cache(out)
            logits = out.logits[:, -1].float()
            del out
            batch.next_pos = batch.next_pos + 1  # type: ignore[operator]
            batch.tokens, token_list = batch.selector.next_tokens(logits)
            batch.keep(record_step(token_list, batch.rows, results, stop_ids, params.max_new_tokens))
