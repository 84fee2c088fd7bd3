"""The memory-job queue: every change of a job's state, in one place, with leases.

Why leases: a job claimed by a process is `running` with that process's `owner` and a `lease_until` it
renews while it works. A process that dies stops renewing; once the lease has expired any process may
claim the job again. Before, every process put *all* running jobs back to pending at start, including
those a live process was working on: `membot jobs run` beside `membot run` wrote a second compressive
version from the same sessions. Exactly-once effects do not rest on the leases alone: one session memory
per session and one compressive version per person, scope and set of sessions are unique constraints, so
a job done twice (a stalled owner whose lease ran out) writes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from enum import StrEnum
from typing import Any

from memory.store import Store

LEASE_SECONDS = 120.0


class JobKind(StrEnum):
    SESSION_MEMORY = "session_memory"
    COMPRESS = "compress"


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


QUEUED = (JobState.PENDING, JobState.RUNNING)


def _marks(values: list[Any]) -> str:
    """Placeholders for an IN list; `NULL` for an empty one (`x IN (NULL)` is never true)."""
    return ", ".join("?" * len(values)) or "NULL"


def new_owner() -> str:
    """Who holds a lease: host, process and a random part (a pid can be reused after a restart)."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_here(owner: str) -> bool:
    """An owner on this machine whose process is gone: its leases need not run out (a restart after a
    crash redoes its jobs at once). Another machine's owners, and a pid now reused, wait for their lease."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


async def enqueue(db: Any, kind: JobKind, key: str, user_pk: int, now: float, *, again: bool = False) -> None:
    """Inside the caller's transaction. `again`: a job that exists already is made due again (a compression
    with new session memories), unless a process is running it now (it re-checks what is left when it ends)."""
    on_conflict = (
        "DO UPDATE SET state = 'pending', attempts = 0, updated = excluded.updated, not_before = 0 "
        "WHERE jobs.state != 'running'" if again else "DO NOTHING"
    )
    await db.execute(
        "INSERT INTO jobs(kind, key, user_id, state, created, updated, not_before) "
        f"VALUES (?, ?, ?, 'pending', ?, ?, 0) ON CONFLICT(kind, key) {on_conflict}",
        (str(kind), key, user_pk, now, now),
    )


async def queue_compression(db: Any, user_pk: int, private: bool, now: float) -> None:
    """Inside the caller's transaction: compress the person's memories again (the "all" scope, and the
    "public" one too unless only private memories changed)."""
    for scope in ["all"] if private else ["all", "public"]:
        await enqueue(db, JobKind.COMPRESS, f"{user_pk}:{scope}", user_pk, now, again=True)


async def finish(db: Any, job_id: int, now: float, *, state: JobState = JobState.DONE, error: str | None = None,
                 attempt: bool = False) -> None:
    """Inside the caller's transaction (with the job's result): done, or pending again when more arrived.
    `attempt` counts this run as one more attempt; otherwise the count starts over."""
    attempts = "attempts + 1" if attempt else "0"
    await db.execute(
        f"UPDATE jobs SET state = ?, attempts = {attempts}, last_error = ?, updated = ?, owner = NULL, "
        "lease_until = NULL WHERE id = ?",
        (str(state), error, now, job_id),
    )


async def drop(db: Any, job_id: int) -> None:
    """A job with nothing left to do (its session or its person is gone)."""
    await db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


async def retry(store: Store, job_id: int, error: str, now: float) -> None:
    """Pending again at once, one more attempt counted: the next run asks the model again."""
    async with store.write() as db:
        await db.execute(
            "UPDATE jobs SET state = 'pending', attempts = attempts + 1, last_error = ?, updated = ?, "
            "owner = NULL, lease_until = NULL WHERE id = ?",
            (error, now, job_id),
        )


async def postpone(store: Store, ids: Iterable[int], not_before: float, error: str) -> None:
    """The model is unavailable: pending again, not before `not_before`; no attempt counted."""
    async with store.write() as db:
        await db.executemany(
            "UPDATE jobs SET state = 'pending', not_before = ?, last_error = ?, owner = NULL, "
            "lease_until = NULL WHERE id = ?",
            [(not_before, error[:500], i) for i in ids],
        )


async def job_row(store: Store, job_id: int) -> tuple[str, int, int] | None:
    """(key, user, attempts) of one job, or None when it is gone."""
    row = await store.fetchone("SELECT key, user_id, attempts FROM jobs WHERE id = ?", (job_id,))
    return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


async def delete_session_jobs(db: Any, user_pk: int, session_ids: Iterable[int]) -> None:
    """Inside the caller's transaction: the session-memory jobs of sessions being deleted."""
    await db.executemany(
        "DELETE FROM jobs WHERE kind = 'session_memory' AND user_id = ? AND key = ?",
        [(user_pk, str(s)) for s in session_ids],
    )


async def requeue_expired(store: Store, now: float, *, repair: bool = False) -> int:
    """Running jobs whose process died (its lease expired, or it was on this machine and is gone) are pending
    again. A live process's jobs are left alone; jobs from before leases (no lease) count as expired.
    `repair` (at start): a closed session without its job (should not happen) gets one; it reads every
    closed session, so not on each run."""
    owners = await store.fetchall("SELECT DISTINCT owner FROM jobs WHERE state = 'running' AND owner IS NOT NULL")
    dead = [str(r[0]) for r in owners if dead_here(str(r[0]))]
    async with store.write() as db:
        cur = await db.execute(
            "UPDATE jobs SET state = 'pending', owner = NULL, lease_until = NULL "
            f"WHERE state = 'running' AND (COALESCE(lease_until, 0) < ? OR owner IN ({_marks(dead)}))",
            (now, *dead),
        )
        if not repair:
            return max(cur.rowcount, 0)
        await db.execute(
            "INSERT INTO jobs(kind, key, user_id, state, created, updated) "
            "SELECT 'session_memory', CAST(s.id AS TEXT), s.user_id, 'pending', ?, ? FROM sessions s "
            "WHERE s.state = 'closed' AND NOT EXISTS (SELECT 1 FROM session_memories m WHERE m.session_id = s.id) "
            "ON CONFLICT(kind, key) DO NOTHING",
            (now, now),
        )
        return max(cur.rowcount, 0)


async def queued_count(store: Store) -> int:
    return int(await store.scalar("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')") or 0)


class JobQueue:
    """Claims, renews and hands back jobs for one process (`owner`)."""

    def __init__(self, store: Store, *, lease: float = LEASE_SECONDS, clock: Callable[[], float] = time.time,
                 owner: str | None = None) -> None:
        self.store = store
        self.lease = lease
        self.clock = clock
        self.owner = owner or new_owner()

    async def claim(self, kind: JobKind, limit: int, skip: Iterable[int] = ()) -> list[int]:
        """Up to `limit` due jobs, now running under this owner's lease: pending ones whose time has come,
        and running ones whose owner stopped renewing (it died). `skip`: jobs already tried in this run."""
        now = self.clock()
        async with self.store.write() as db:
            skipped = sorted(skip)
            # PostgreSQL: rows another process is claiming at this moment are passed over, not waited for.
            async with db.execute(
                "SELECT id FROM jobs WHERE kind = ? AND ((state = 'pending' AND not_before <= ?) "
                "OR (state = 'running' AND COALESCE(lease_until, 0) < ?)) "
                + (f"AND id NOT IN ({_marks(skipped)}) " if skipped else "")
                + f"ORDER BY id LIMIT ?{db.skip_locked}",
                (str(kind), now, now, *skipped, limit),
            ) as cur:
                ids = [int(r[0]) for r in await cur.fetchall()]
            await db.executemany(
                "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, updated = ? WHERE id = ?",
                [(self.owner, now + self.lease, now, i) for i in ids],
            )
        return ids

    async def renew(self) -> int:
        """Extend the lease of every job this owner is running."""
        now = self.clock()
        async with self.store.write() as db:
            cur = await db.execute(
                "UPDATE jobs SET lease_until = ? WHERE owner = ? AND state = 'running'", (now + self.lease, self.owner)
            )
            return max(cur.rowcount, 0)

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Renew this owner's leases every third of a lease while the body runs (a batch can take minutes)."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.lease / 3)
                with contextlib.suppress(Exception):  # a failing store: the lease runs out, another takes over
                    await self.renew()

        task = asyncio.ensure_future(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release(self, ids: Iterable[int], *, not_before: float | None = None) -> None:
        """Jobs this owner claimed but did not finish go back to pending (after `not_before`, if given)."""
        rows = [(not_before, i, self.owner) for i in ids]
        if not rows:
            return
        async with self.store.write() as db:
            await db.executemany(
                "UPDATE jobs SET state = 'pending', "
                "not_before = GREATEST(not_before, COALESCE(CAST(? AS DOUBLE PRECISION), 0)), owner = NULL, "
                "lease_until = NULL WHERE id = ? AND state = 'running' AND owner = ?",
                rows,
            )

    async def due_count(self) -> int:
        now = self.clock()
        return int(await self.store.scalar(
            "SELECT COUNT(*) FROM jobs WHERE (state = 'pending' AND not_before <= ?) "
            "OR (state = 'running' AND COALESCE(lease_until, 0) < ?)", (now, now)
        ) or 0)
