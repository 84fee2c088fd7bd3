"""The model worker: one queue, one inference thread, dynamic batches, replies before background jobs.

The event loop never waits on a forward pass: callers await a future while the thread runs the model.
Requests with the same generation settings are batched together (collected for a few milliseconds or
until the batch is full); a waiting reply always goes before queued job prompts. A job batch in progress
yields to replies too: the local backend calls back between its prefill chunks and decode steps, and the
waiting replies are generated right there (the job's cache stays in memory meanwhile), so on a CPU a reply
waits a decode step or a two-prompt prefill, not a whole batch of memory jobs. Other backends yield
between batches. Job prompts are decoded with continuous batching where the backend has it: up to
`max_batch` rows at once, a finished row's place taken at once by the next prompt. A running batch stops
within a step when the worker closes or every caller waiting for it has given up (a person forgotten while
their reply was generated), so the model is not kept busy for nobody.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from models.base import BackendError, Cancelled, Engine, Generation, GenParams, Prompt

log = logging.getLogger(__name__)


# A backend with continuous batching takes this many times `max_batch` job prompts in one call and keeps
# `max_batch` of them decoding, a finished row's place going to the next prompt (models/decode.py).
JOB_PROMPTS_PER_BATCH = 4


class Priority(IntEnum):
    REPLY = 0
    JOB = 10


@dataclass(order=True)
class _Request:
    priority: int
    seq: int
    prompt: Prompt = field(compare=False)
    params: GenParams = field(compare=False)
    future: concurrent.futures.Future[Generation] = field(compare=False)
    on_text: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass
class WorkerStats:
    batches: int = 0
    prompts: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0
    max_batch_seen: int = 0


class ModelWorker:
    """Owns the backend; `await worker.generate(prompts, params, priority)` from anywhere on the loop."""

    def __init__(self, backend: Engine, *, max_batch: int = 16, batch_wait_ms: float = 5.0) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000.0
        self.stats = WorkerStats()
        self._heap: list[_Request] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._nested_seconds = 0.0  # replies served inside job batches (not counted twice in busy_seconds)
        # Futures already running whose callers gave up: a batch made only of these stops at its next step.
        self._withdrawn: set[concurrent.futures.Future[Generation]] = set()

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="membot-model", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        with self._cond:
            self._stopping = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for request in pending:
            request.future.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
        self.backend.close()

    def submit(
        self, prompt: Prompt, params: GenParams, priority: Priority, on_text: Callable[[str], None] | None = None
    ) -> concurrent.futures.Future[Generation]:
        future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise BackendError("the model worker is shutting down")
            heapq.heappush(self._heap, _Request(int(priority), next(self._seq), prompt, params, future, on_text))
            self._cond.notify()
        return future

    async def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenParams,
        priority: Priority = Priority.REPLY,
        on_text: Callable[[str], None] | None = None,
    ) -> list[Generation]:
        """Queue the prompts and wait; cancelling the awaiting task withdraws them: those not yet started are
        dropped, a batch that has started stops at its next decode step once none of its prompts is wanted.

        `on_text` (one prompt only) receives the growing text from the inference thread as it is made.
        """
        if on_text is not None and len(prompts) != 1:
            raise ValueError("streaming takes exactly one prompt")
        self.start()
        futures = [self.submit(p, params, priority, on_text) for p in prompts]
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except BaseException:
            self.withdraw(futures)
            raise

    def withdraw(self, futures: Sequence[concurrent.futures.Future[Generation]]) -> None:
        """Nobody waits for these any more: drop the queued ones, mark the running ones for the engine."""
        with self._cond:
            for f in futures:
                if not f.cancel() and not f.done():
                    self._withdrawn.add(f)

    def _take_batch(self, *, replies_only: bool = False) -> list[_Request] | None:
        """The next batch: blocks for work; with `replies_only`, returns at once ([] when no reply waits)."""
        with self._cond:
            if replies_only:
                if self._stopping or not self._heap or self._heap[0].priority >= Priority.JOB:
                    return []
            while not self._heap and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = heapq.heappop(self._heap)
            if not first.future.set_running_or_notify_cancel():
                return []
            batch = [first]
            if first.on_text is not None:  # a streamed reply runs on its own
                return batch
            deadline = time.monotonic() + (0.0 if replies_only else self.batch_wait)
            limit = self.max_batch
            if first.priority >= Priority.JOB and self.backend.capabilities.continuous_batching:
                limit *= JOB_PROMPTS_PER_BATCH
            while len(batch) < limit:
                match = next(
                    (
                        r for r in sorted(self._heap)
                        if r.params == first.params and r.priority == first.priority and r.on_text is None
                    ),
                    None,
                )
                if match is not None:
                    self._heap.remove(match)
                    heapq.heapify(self._heap)
                    if match.future.set_running_or_notify_cancel():
                        batch.append(match)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _serve_waiting_replies(self) -> None:
        """Called by the backend between a job batch's decode steps: replies waiting now go first."""
        while True:
            batch = self._take_batch(replies_only=True)
            if not batch:
                return
            started = time.perf_counter()
            self._execute(batch)
            self._nested_seconds += time.perf_counter() - started

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch)

    def _generate(self, batch: list[_Request]) -> list[Generation]:
        """One engine call for the batch, with what the engine can do: a streamed reply streams (or gets its
        text at the end), a job batch serves waiting replies between its steps and keeps `max_batch` rows
        decoding. Every batch stops early when the worker closes or all its callers have given up."""
        caps, first = self.backend.capabilities, batch[0]
        prompts = [r.prompt for r in batch]

        def cancelled() -> bool:
            return self._stopping or all(r.future in self._withdrawn for r in batch)

        if first.on_text is not None:
            if caps.streaming:
                return self.backend.generate(prompts, first.params, on_text=first.on_text, cancelled=cancelled)
            results = self.backend.generate(prompts, first.params, cancelled=cancelled)
            first.on_text(results[0].text)
            return results
        if first.priority >= Priority.JOB:
            return self.backend.generate(
                prompts, first.params,
                between_steps=self._serve_waiting_replies if caps.between_steps else None,
                max_rows=self.max_batch if caps.continuous_batching else None, cancelled=cancelled,
            )
        return self.backend.generate(prompts, first.params, cancelled=cancelled)

    def _execute(self, batch: list[_Request]) -> None:
        started, nested = time.perf_counter(), self._nested_seconds
        try:
            results = self._generate(batch)
        except BaseException as exc:  # the thread must survive anything a backend raises
            if isinstance(exc, Cancelled):
                why = "the model worker is closing" if self._stopping else "its callers gave up"
                log.info("stopped a batch of %d: %s", len(batch), why)
                error: BackendError = Cancelled(why)
            else:
                log.warning("generation failed for a batch of %d: %s", len(batch), exc)
                error = exc if isinstance(exc, BackendError) else BackendError(f"generation failed: {exc}")
            for request in batch:
                request.future.set_exception(error)
            self._settle(batch)
            return
        self.stats.batches += 1
        self.stats.prompts += len(batch)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        self.stats.busy_seconds += time.perf_counter() - started - (self._nested_seconds - nested)
        for request, result in zip(batch, results, strict=True):
            self.stats.generated_tokens += result.new_tokens
            request.future.set_result(result)
        self._settle(batch)

    def _settle(self, batch: list[_Request]) -> None:
        """Forget the batch's withdrawn futures (after they are resolved: `withdraw` skips resolved ones)."""
        with self._cond:
            self._withdrawn.difference_update(r.future for r in batch)
