"""Running the due memory jobs, and scheduling them with APScheduler 3.11.

The runner claims jobs under a lease it renews while it works (memory/jobqueue.py); a crashed process's
jobs are taken back once their lease expires, a live one's never. One lock keeps the scheduler and an
admin's "compress now" from running the same jobs twice in one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from memory.jobqueue import JobKind, JobQueue, queued_count, requeue_expired
from memory.retention import purge_expired
from memory.sessions import SessionManager
from memory.store import Store
from memory.tasks import Generator, TaskReport, compress_memories, write_session_memories
from models.profiles.base import Profile

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Told after each batch: (jobs just processed, jobs still due). `membot jobs run` draws it on a terminal."""


@dataclass
class JobsReport:
    session_memories: TaskReport
    compressions: TaskReport
    closed_sessions: int = 0
    purged_messages: int = 0

    def summary(self) -> str:
        s, c = self.session_memories, self.compressions
        parts = [
            f"closed {self.closed_sessions} idle session(s)",
            f"wrote {s.written} session memor{'y' if s.written == 1 else 'ies'}"
            + (f" ({s.fallbacks} extractive fallback)" if s.fallbacks else ""),
            f"{c.written} compressive memory version(s)",
        ]
        if s.malformed or c.malformed:
            parts.append(f"{s.malformed + c.malformed} malformed output(s) to retry")
        if s.waiting or c.waiting:
            parts.append(f"{s.waiting + c.waiting} job(s) waiting for the model")
        if self.purged_messages:
            parts.append(f"deleted {self.purged_messages} message(s) past the retention period")
        return ", ".join(parts)

    @property
    def eventful(self) -> bool:
        """Worth a log line: something was closed, written, flagged or deleted."""
        s, c = self.session_memories, self.compressions
        return bool(self.closed_sessions or s.written or c.written or s.malformed or c.malformed
                    or self.purged_messages)


class JobRunner:
    def __init__(
        self,
        store: Store,
        sessions: SessionManager,
        generator: Generator,
        profile: Profile,
        *,
        bot_name: str,
        batch_size: int = 8,
        max_attempts: int = 3,
        max_new_tokens: int = 200,
        retry_backoff: float = 60.0,
        retention_days: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.generator = generator
        self.profile = profile
        self.bot_name = bot_name
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.max_new_tokens = max_new_tokens
        self.retry_backoff = retry_backoff
        self.retention_days = retention_days
        self.clock = clock
        self.queue = JobQueue(store, clock=clock)
        self._lock = asyncio.Lock()

    async def _claim(self, kind: JobKind, skip: set[int] | None = None) -> list[int]:
        """Up to `batch_size` due jobs; `skip`: jobs already tried in this run (a malformed output's retry is
        pending again at once and would otherwise be claimed before the jobs behind it)."""
        return await self.queue.claim(kind, self.batch_size, skip or ())

    async def pending_count(self) -> int:
        return await queued_count(self.store)

    async def _due_count(self) -> int:
        return await self.queue.due_count()

    async def run_due(self, *, sweep: bool = True, progress: Progress | None = None) -> JobsReport:
        """Close idle sessions, write their session memories, then compress; all in batches.

        The summary is logged at DEBUG only: the scheduler logs it at INFO, and `membot jobs run` prints it,
        so it is said once."""
        async with self._lock, self.queue.renewing():
            await self.store.settle()
            await requeue_expired(self.store, self.clock())  # jobs of processes that died meanwhile
            closed = len(await self.sessions.sweep()) if sweep else 0
            memories = TaskReport()
            compressions = TaskReport()
            seen: set[int] = set()
            if progress is not None:
                progress(0, await self._due_count())
            try:
                while ids := await self._claim(JobKind.SESSION_MEMORY, seen):
                    seen.update(ids)
                    memories.add(await write_session_memories(
                        self.store, self.generator, self.profile, ids, bot_name=self.bot_name,
                        max_new_tokens=self.max_new_tokens, max_attempts=self.max_attempts, clock=self.clock,
                        retry_backoff=self.retry_backoff,
                    ))
                    if progress is not None:
                        progress(len(ids), await self._due_count())
                await self._release(seen)
                seen = set()
                while ids := await self._claim(JobKind.COMPRESS, seen):
                    seen.update(ids)
                    compressions.add(await compress_memories(
                        self.store, self.generator, self.profile, ids, bot_name=self.bot_name,
                        max_new_tokens=self.max_new_tokens, max_attempts=self.max_attempts, clock=self.clock,
                        retry_backoff=self.retry_backoff,
                    ))
                    if progress is not None:
                        progress(len(ids), await self._due_count())
                await self._release(seen)
            except asyncio.CancelledError:  # the bot is stopping: the jobs go back for the next run, at once
                await self._release(seen)
                raise
            except Exception:
                # E.g. the disk filled up mid-run: what this run claimed must not stay 'running' (only a restart
                # would hand it back); it goes back to pending and waits `retry_backoff` before the next try.
                await self._release(seen, not_before=self.clock() + self.retry_backoff)
                raise
            purged = await purge_expired(self.store, self.retention_days, self.clock())
            report = JobsReport(memories, compressions, closed, purged)
            if report.eventful:
                log.debug("memory jobs: %s", report.summary())
            return report

    async def run_until_idle(self, max_rounds: int = 10, *, progress: Progress | None = None) -> JobsReport:
        """Run rounds until nothing is due (retries of malformed output included); for CLI and tests."""
        total = JobsReport(TaskReport(), TaskReport())
        for _ in range(max_rounds):
            report = await self.run_due(progress=progress)
            total.closed_sessions += report.closed_sessions
            total.session_memories.add(report.session_memories)
            total.compressions.add(report.compressions)
            total.purged_messages += report.purged_messages
            if not await self._due_count():
                break
        return total

    async def _release(self, ids: set[int], *, not_before: float | None = None) -> None:
        """Jobs claimed in this run but left 'running' go back to pending (after `not_before`, if given)."""
        try:
            await self.queue.release(ids, not_before=not_before)
        except Exception as exc:  # the store is failing too: the lease runs out and any process takes them
            log.error("could not hand %d memory job(s) back: %s", len(ids), exc)


def build_scheduler(
    runner: JobRunner, *, sweep_interval: float, interval: float, cron: str | None = None
) -> AsyncIOScheduler:
    """The idle-session sweep and the memory jobs; `max_instances=1` so a slow run is never doubled.

    With several processes on PostgreSQL, each has this scheduler: the sweep runs in one process at a time
    (the others skip their turn), while the memory jobs are shared out through the queue (each claims
    different jobs with SKIP LOCKED), so more processes write more memories at once."""
    scheduler = AsyncIOScheduler(timezone="UTC")

    # A run still going when the bot stops is cancelled with the event loop. That is no failure (the jobs it
    # claimed go back to the queue, or their lease runs out), so it is not left to apscheduler, which would
    # log it as an error with a traceback.
    async def sweep() -> None:
        try:
            async with runner.store.exclusive("sweep") as mine:
                if mine:
                    await runner.sessions.sweep()
        except asyncio.CancelledError:
            log.debug("idle-session sweep stopped with the bot")
        except Exception:
            log.exception("idle-session sweep failed")

    async def jobs() -> None:
        try:
            report = await runner.run_due()
            if report.eventful:
                log.info("memory jobs: %s", report.summary())
        except asyncio.CancelledError:
            log.info("memory jobs stopped with the bot; the unfinished ones stay queued")
        except Exception:
            log.exception("memory jobs failed; they will be retried")

    scheduler.add_job(sweep, IntervalTrigger(seconds=sweep_interval), id="sweep", max_instances=1, coalesce=True)
    trigger = CronTrigger.from_crontab(cron, timezone="UTC") if cron else IntervalTrigger(seconds=interval)
    scheduler.add_job(jobs, trigger, id="memory-jobs", max_instances=1, coalesce=True)
    return scheduler
