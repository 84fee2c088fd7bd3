"""How many threads a CPU decode step of a few rows uses: the count measured fastest on this machine.

Why: a one-row decode step is ~210 small matrix products, and with OpenMP's passive waiting (membot's
setting) each one first wakes the sleeping threads. On a 2-core VM that costs as much as the product: one
thread decoded batch 1 at 36 ms a step, two at 44-48 ms; after a 1,286-token prompt attention gives the
second thread work again (61 against 71 ms; docs/benchmarks.md, "Threads for a decode step"). Machines
differ, so nothing is assumed: each batch size (1, 2, 3-4, 5-8 rows) and context length (up to 256, 512,
1,024... tokens) times its first steps on each candidate count in turn, keeps the faster, and measures
again every few thousand steps. Larger batches and prefills use every configured thread.

A thread count must not change a reply: the backend tunes only when :func:`thread_count_keeps_results`
finds the logits bit-identical on every candidate count (the packed bfloat16 default here; not float32,
whose attention over a cache sums in another order on another thread count).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8)  # rows per step that are tuned (the smallest bucket holding the count); above, all
SHORTEST_CONTEXT = 256  # context lengths are bucketed by powers of two from this one
TRIALS = 3  # timed steps per candidate count, interleaved; the median counts (a first step may be slow)
RETUNE_STEPS = 4096  # steps in a bucket after which its choice is measured again


def candidates(threads: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `threads`, and `threads` itself."""
    return tuple(sorted({threads} | {1 << i for i in range(threads.bit_length()) if 1 << i < threads}))


class _Bucket:
    """One batch size and context length: its trial (the candidates in turn), then its choice."""

    def __init__(self, counts: tuple[int, ...]) -> None:
        self.counts = counts
        self.times: dict[int, list[float]] = {}
        self.trial = 0
        self.choice: int | None = None
        self.since = 0

    def next_count(self) -> int:
        return self.choice if self.choice is not None else self.counts[self.trial % len(self.counts)]

    def record(self, count: int, seconds: float, key: tuple[int, int]) -> None:
        if self.choice is not None:
            self.since += 1
            if self.since >= RETUNE_STEPS:  # measure again: the machine's other load may have changed
                self.choice, self.times, self.trial, self.since = None, {}, 0, 0
            return
        self.times.setdefault(count, []).append(seconds)
        self.trial += 1
        if self.trial < TRIALS * len(self.counts):
            return
        medians = {n: statistics.median(t) for n, t in self.times.items()}
        self.choice = min(medians, key=lambda n: (medians[n], n))
        log.debug("decode steps of up to %d row(s) and %d tokens: %d thread(s) (median ms a step: %s)", *key,
                  self.choice, ", ".join(f"{n}: {1000 * s:.1f}" for n, s in sorted(medians.items())))


class StepThreads:
    """Chooses and sets the thread count around each decode step (the model worker's thread calls it)."""

    def __init__(self, threads: int, *, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.threads = threads
        self.counts = candidates(threads)
        self._clock = clock
        self._set = set_threads
        self._buckets: dict[tuple[int, int], _Bucket] = {}

    def chosen(self) -> dict[str, int]:
        """Thread count of each bucket measured so far, by "ROWSxTOKENS" (its largest rows and context)."""
        return {f"{rows}x{length}": b.choice for (rows, length), b in sorted(self._buckets.items())
                if b.choice is not None}

    @contextmanager
    def step(self, rows: int, length: int) -> Iterator[None]:
        """Run one decode step of `rows` rows over a context of `length` tokens on the chosen thread count
        (or the next one on trial)."""
        size = next((b for b in BUCKETS if rows <= b), None)
        if size is None or len(self.counts) == 1:
            yield
            return
        context = SHORTEST_CONTEXT
        while context < length:
            context *= 2
        key = (size, context)
        bucket = self._buckets.get(key) or self._buckets.setdefault(key, _Bucket(self.counts))
        count = bucket.next_count()
        if count != self.threads:
            self._set(count)
        start = self._clock()
        try:
            yield
            bucket.record(count, self._clock() - start, key)
        finally:
            if count != self.threads:
                self._set(self.threads)


def for_model(model: Any) -> StepThreads | None:
    """The tuner for a CPU model's decode steps; None with one thread, or where fewer would change its numbers."""
    threads = torch.get_num_threads()
    if threads > 1 and thread_count_keeps_results(model, threads):
        return StepThreads(threads)
    return None


def thread_count_keeps_results(model: Any, threads: int) -> bool:
    """True when the model's logits are bit-identical on every candidate thread count, for a prompt of eight
    tokens (products of eight rows) and for one decode step after it (products of one row, attention over a
    cache): checked at load, so the thread count is then free to vary between steps."""
    counts = candidates(threads)
    if len(counts) == 1:
        return False
    from models.decode import cache_arg, output_cache
    from models.onednn_linear import PROBE_IDS

    probe = torch.tensor([PROBE_IDS])
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.inference_mode():
            for count in counts:
                torch.set_num_threads(count)
                prompt = model(input_ids=probe, use_cache=True)
                step = model(input_ids=probe[:, :1], use_cache=True, **{cache_arg(model): output_cache(prompt)})
                results.append((prompt.logits, step.logits))
    except Exception as exc:  # an optimisation: a model this check cannot run keeps every thread
        log.info("decode steps keep %d threads (the thread-count check failed: %s)", threads, exc)
        return False
    finally:
        torch.set_num_threads(threads)
    same = all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other, strict=True))
    if not same:
        log.info("decode steps keep %d threads (fewer threads change this model's numbers here)", threads)
    return same
