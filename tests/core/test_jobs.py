"""Memory jobs: batched, idempotent after a crash, defensive about malformed model output."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bot.app import App
from bot.incoming import IncomingMessage
from memory.jobqueue import LEASE_SECONDS, JobKind
from models.base import Prompt
from models.fake import FakeBackend, default_response
from tests.fakes.clock import ManualClock

pytestmark = pytest.mark.backends


def _msg(text: str, user: str = "alice", chat: str = "dm-alice", kind: str = "dm") -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id=user, display_name=user.title(), chat_id=chat,
                           chat_kind=kind, text=text)


async def _sessions_for(app: App, users: list[str], clock: ManualClock) -> None:
    for user in users:
        await app.dispatcher.handle(_msg(f"My name is {user} and I collect stamps.", user, f"dm-{user}"))
    clock.advance(120)  # past the 60 s timeout of the test settings


async def test_jobs_batch_and_write_one_memory_per_session(app: App, fake_backend: FakeBackend, clock: ManualClock) -> None:
    await _sessions_for(app, [f"user{i}" for i in range(5)], clock)
    fake_backend.calls.clear()
    report = await app.jobs.run_until_idle()
    assert report.closed_sessions == 5
    assert report.session_memories.written == 5
    assert report.compressions.written == 5
    sizes = [len(batch) for batch, _ in fake_backend.calls]
    assert max(sizes) > 1, f"expected batched generation, got batch sizes {sizes}"
    assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 5
    # Running again does nothing more.
    again = await app.jobs.run_until_idle()
    assert again.session_memories.written == 0 and again.compressions.written == 0
    assert await app.store.scalar("SELECT COUNT(*) FROM compressive_memories") == 5


async def test_job_killed_half_way_is_redone_once(settings, clock: ManualClock) -> None:
    """Simulate a crash: jobs claimed ('running') and the process gone before writing."""
    backend = FakeBackend()
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    await _sessions_for(app, ["alice", "bob"], clock)
    await app.sessions.sweep()
    claimed = await app.jobs._claim(JobKind.SESSION_MEMORY)
    assert len(claimed) == 2
    await app.close()  # the "crash": nothing written, jobs left running
    clock.advance(LEASE_SECONDS + 1)  # the dead process renews nothing (one on this machine: tests/reliability)

    app = await App.create(settings, backend=backend, clock=clock)
    try:
        await app.start(schedule=False)  # recovery requeues running jobs whose lease ran out
        await app.jobs.run_until_idle()
        await app.jobs.run_until_idle()
        rows = await app.store.fetchall("SELECT session_id, COUNT(*) FROM session_memories GROUP BY session_id")
        assert len(rows) == 2 and all(r[1] == 1 for r in rows)
        versions = await app.store.fetchall(
            "SELECT user_id, scope, COUNT(*), MAX(version) FROM compressive_memories GROUP BY user_id, scope"
        )
        assert versions and all((v[2], v[3]) == (1, 1) for v in versions)
        assert await app.store.scalar("SELECT COUNT(*) FROM jobs WHERE state != 'done'") == 0
    finally:
        await app.close()


async def test_a_job_run_cancelled_as_the_bot_stops_hands_its_jobs_back_without_an_error(
    settings, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduled run is cancelled with the event loop when `membot run` stops mid-batch: before, apscheduler
    logged that as an ERROR with a traceback and the claimed jobs stayed 'running' until their lease ran out."""
    from memory.jobs import build_scheduler

    app = await App.create(settings, backend=FakeBackend(delay=0.3), clock=clock)
    await app.start(schedule=False)
    try:
        await _sessions_for(app, ["alice", "bob"], clock)
        await app.sessions.sweep()
        scheduled = build_scheduler(app.jobs, sweep_interval=60, interval=60).get_job("memory-jobs")
        assert scheduled is not None
        run = asyncio.create_task(scheduled.func())
        for _ in range(100):
            if await app.store.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'"):
                break
            await asyncio.sleep(0.01)
        run.cancel()
        await run  # ends quietly
        assert await app.store.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'") == 0
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        await app.jobs.run_until_idle()
        assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 2
    finally:
        await app.close()


async def test_compressive_versions_strictly_increase(app: App, clock: ManualClock) -> None:
    for day in range(3):
        await app.dispatcher.handle(_msg(f"Day {day}: I visited museum number {day}."))
        clock.advance(120)
        await app.jobs.run_until_idle()
    versions = [r[0] for r in await app.store.fetchall(
        "SELECT version FROM compressive_memories WHERE scope = 'all' ORDER BY id")]
    assert versions == [1, 2, 3]
    events = await app.store.scalar("SELECT events FROM compressive_memories WHERE version = 3 AND scope = 'all'")
    assert "museum number 0" in events and "museum number 2" in events
    assert "8 May 2023" in events  # dated with the session's time


async def test_malformed_output_is_stored_flagged_retried_then_falls_back(settings, clock: ManualClock) -> None:
    def garbage(prompt: Prompt) -> str:
        return "!!!" if prompt.task == "session_memory" else default_response(prompt)

    backend = FakeBackend(responder=garbage)
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    try:
        await app.dispatcher.handle(_msg("I adopted a dog named Rex."))
        clock.advance(120)
        report = await app.jobs.run_until_idle()
        attempts = settings.jobs.max_attempts
        assert report.session_memories.malformed == attempts
        assert report.session_memories.fallbacks == 1
        raw = await app.store.fetchall("SELECT raw, flagged, task FROM model_outputs")
        assert len(raw) == attempts and all(r[0] == "!!!" and r[1] == 1 for r in raw)
        row = await app.store.fetchone("SELECT facts, source FROM session_memories")
        assert row["source"] == "fallback" and "Rex" in json.loads(row["facts"])[0]
        session_prompts = [p for p in backend.prompts if p.task == "session_memory"]
        assert len(session_prompts) == attempts
    finally:
        await app.close()


async def test_a_retry_does_not_hold_up_the_jobs_behind_it(settings, clock: ManualClock) -> None:
    """With one job per claim, a malformed output's retry is pending again at once; the run must go on to
    the other sessions instead of claiming the retried job first and stopping (found by bench/jobs.py)."""
    def garbage_for_alice(prompt: Prompt) -> str:
        text = "\n".join(m[1] for m in prompt.messages)
        if prompt.task == "session_memory" and "alice" in text.lower().split("facts about bob:")[-1]:
            return "!!!"
        return default_response(prompt)

    settings.jobs.batch_size = 1
    backend = FakeBackend(responder=garbage_for_alice)
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    try:
        await _sessions_for(app, ["alice", "bob", "carol"], clock)
        report = await app.jobs.run_due()
        assert report.session_memories.written == 2  # bob's and carol's, in the same run
        assert report.session_memories.malformed == 1
        rest = await app.jobs.run_until_idle()
        assert rest.session_memories.fallbacks == 1  # alice's, after its retries
        assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 3
    finally:
        await app.close()


async def test_malformed_compression_never_crashes(settings, clock: ManualClock) -> None:
    def bad_compress(prompt: Prompt) -> str:
        return "" if prompt.task == "compress" else default_response(prompt)

    app = await App.create(settings, backend=FakeBackend(responder=bad_compress), clock=clock)
    await app.start(schedule=False)
    try:
        await app.dispatcher.handle(_msg("I love sailing."))
        clock.advance(120)
        report = await app.jobs.run_until_idle()
        assert report.compressions.fallbacks >= 1
        flagged = await app.store.scalar("SELECT flagged FROM compressive_memories WHERE scope = 'all'")
        assert flagged == 1
    finally:
        await app.close()


async def test_jobs_wait_when_the_model_is_down(settings, clock: ManualClock) -> None:
    backend = FakeBackend()
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    try:
        await app.dispatcher.handle(_msg("I love sailing."))
        clock.advance(120)
        backend.fail_always = True
        report = await app.jobs.run_due()
        assert report.session_memories.waiting == 1
        assert await app.store.scalar("SELECT state FROM jobs") == "pending"
        backend.fail_always = False
        clock.advance(settings.jobs.retry_backoff + 1)
        report = await app.jobs.run_until_idle()
        assert report.session_memories.written == 1
    finally:
        await app.close()


def _until_called(backend: FakeBackend, task: str) -> None:
    """Block (in a thread) until the backend has been given a prompt of `task`."""
    deadline = time.monotonic() + 10
    while not any(batch[0].task == task for batch, _ in backend.calls) and time.monotonic() < deadline:
        time.sleep(0.01)


async def test_jobs_stopped_by_a_closing_model_are_due_again_at_once(
    app: App, fake_backend: FakeBackend, clock: ManualClock
) -> None:
    """Shutting down mid-batch: the batch stops, its jobs are pending again with no back-off and no attempt."""
    await app.dispatcher.handle(_msg("I love sailing."))
    fake_backend.delay = 30.0  # a long batch, which the closing worker interrupts
    clock.advance(120)
    run = asyncio.ensure_future(app.jobs.run_due())
    await asyncio.to_thread(_until_called, fake_backend, "session_memory")
    await app.worker.close()
    report = await asyncio.wait_for(run, 10)
    assert report.session_memories.waiting == 1
    row = await app.store.fetchone("SELECT state, not_before, attempts FROM jobs")
    assert row is not None and row[0] == "pending" and row[1] <= clock() and row[2] == 0


async def test_relative_dates_are_written_as_dates(app: App, clock: ManualClock) -> None:
    await app.dispatcher.handle(_msg("Yesterday I ran my first half marathon."))
    clock.advance(120)
    await app.jobs.run_until_idle()
    facts = json.loads(await app.store.scalar("SELECT facts FROM session_memories"))
    assert any("7 May 2023" in f for f in facts)


async def test_forget_during_a_job_batch_drops_that_persons_job_and_the_rest_completes(
    settings, clock: ManualClock
) -> None:
    """`/forget` while the model writes a batch used to abort the whole batch (FOREIGN KEY failed), throwing
    away and postponing another person's finished memory."""
    backend = FakeBackend(delay=0.5)
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    try:
        await _sessions_for(app, ["alice", "bob"], clock)
        await app.sessions.sweep()
        run = asyncio.create_task(app.jobs.run_due(sweep=False))
        for _ in range(500):  # until the model is writing both memories
            if backend.calls:
                break
            await asyncio.sleep(0.01)
        assert "Done" in await app.dispatcher.forget("telegram", "alice")
        report = await run
        assert report.session_memories.written == 1
        owners = await app.store.fetchall(
            "SELECT u.platform_user_id FROM session_memories m JOIN users u ON u.id = m.user_id")
        assert [r[0] for r in owners] == ["bob"]
        assert await app.store.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'") == 0
        await app.jobs.run_until_idle()
        owners = await app.store.fetchall(
            "SELECT u.platform_user_id FROM compressive_memories c JOIN users u ON u.id = c.user_id")
        assert [r[0] for r in owners] == ["bob"]  # bob's memory is compressed; nothing is left of alice
    finally:
        await app.close()


async def test_a_live_processs_jobs_are_not_taken_by_another_start(settings, clock: ManualClock) -> None:
    """Two processes on one database (issue #16): the second one's start-up recovery and job run leave the
    jobs the first is working on (its lease is live) alone, so nothing is done twice."""
    first = await App.create(settings, backend=FakeBackend(), clock=clock)
    second: App | None = None
    try:
        await first.start(schedule=False)
        await _sessions_for(first, ["alice", "bob"], clock)
        await first.sessions.sweep()
        claimed = await first.jobs._claim(JobKind.SESSION_MEMORY)
        assert len(claimed) == 2

        second = await App.create(settings, backend=FakeBackend(), clock=clock)
        await second.start(schedule=False)  # before: every 'running' job went back to pending here
        report = await second.jobs.run_due()
        assert report.session_memories.written == 0
        running = await first.store.fetchall("SELECT id, owner FROM jobs WHERE state = 'running'")
        assert sorted(r[0] for r in running) == sorted(claimed)
        assert {r[1] for r in running} == {first.jobs.queue.owner}

        clock.advance(LEASE_SECONDS + 1)  # the first stopped renewing (it hangs, or died on another machine)
        taken = await second.jobs.run_until_idle()
        assert taken.session_memories.written == 2 and taken.compressions.written == 2
    finally:
        if second is not None:
            await second.close()
        await first.close()
