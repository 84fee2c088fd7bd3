"""COMEDY tasks 1 and 2 over the store: session memories and compressive memory versions.

Each function takes a batch, so one forward pass serves many sessions or people. Writing a result and
marking its job done happen in one transaction: a job killed half-way is simply done again, and the
unique keys (one memory per session, one row per version) make a second write impossible.
Malformed output is stored raw and flagged; after the last attempt a plain extractive memory is written
instead, so every closed session still ends with exactly one session memory and no fact is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from memory.dates import format_date, resolve_relative
from memory.evidence import Evidence
from memory.facts import compose, extract, session_facts
from memory.jobqueue import JobState, drop, finish, job_row, postpone, queue_compression, retry
from memory.store import Forgotten, Store
from models.base import BackendError, Cancelled, Generation, GenParams, Prompt
from models.profiles.base import CompressionInput, CompressionOutput, Profile, SessionInput
from models.worker import Priority

log = logging.getLogger(__name__)


class Generator(Protocol):
    name: str

    async def generate(
        self, prompts: Sequence[Prompt], params: GenParams, priority: Priority = Priority.REPLY
    ) -> list[Generation]: ...


@dataclass
class TaskReport:
    written: int = 0
    fallbacks: int = 0
    malformed: int = 0
    waiting: int = 0
    model_calls: int = 0
    generated_tokens: int = 0
    items: list[int] = field(default_factory=list)

    def add(self, other: TaskReport) -> None:
        self.written += other.written
        self.fallbacks += other.fallbacks
        self.malformed += other.malformed
        self.waiting += other.waiting
        self.model_calls += other.model_calls
        self.generated_tokens += other.generated_tokens
        self.items += other.items


@dataclass(frozen=True)
class _SessionJob:
    job_id: int
    session_id: int
    user_pk: int
    attempts: int
    private: bool
    started: float
    item: SessionInput
    backbone: tuple[str, ...]  # facts built from the person's own statements (memory.facts)
    evidence: Evidence  # the person's own words in this session: what a stored line must be supported by
    earlier: tuple[str, ...]  # the person's facts from earlier sessions


async def _load_session(
    store: Store, job_id: int, session_id: int, attempts: int, bot_name: str
) -> _SessionJob | None:
    """A claimed job's session, with the person's own words and earlier facts; None when they were forgotten."""
    row = await store.fetchone(
        "SELECT s.user_id, s.private, s.started, u.display_name, u.platform_user_id FROM sessions s "
        "JOIN users u ON u.id = s.user_id WHERE s.id = ?",
        (session_id,),
    )
    if row is None:
        return None
    user_pk, user_name = int(row[0]), str(row[3] or row[4])
    messages = await store.fetchall(
        "SELECT author, text, created FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
    )
    turns = tuple((user_name if m[0] == "user" else bot_name, str(m[1])) for m in messages)
    item = SessionInput(user_name=user_name, bot_name=bot_name, date=format_date(float(row[2])), turns=turns)
    own = [(str(m[1]), float(m[2])) for m in messages if m[0] == "user"]
    earlier_rows = await store.fetchall(
        "SELECT facts FROM session_memories WHERE user_id = ? AND session_time < ? ORDER BY session_time, id",
        (user_pk, float(row[2])),
    )
    earlier = [f for r in earlier_rows for f in json.loads(r[0])]
    backbone = tuple(extract(user_name, [text for text, _ in own], earlier=earlier))
    evidence = Evidence.from_turns(own, names=(user_name,), bot=bot_name)
    return _SessionJob(job_id, session_id, user_pk, attempts, bool(row[1]), float(row[2]), item, backbone, evidence,
                       tuple(earlier))


def fallback_facts(item: SessionInput, backbone: Sequence[str] = ()) -> list[str]:
    """When the model's output could not be used: the backbone facts, else the person's own words quoted."""
    if backbone:
        return list(backbone)
    return [f"{speaker} said: {text[:300]}" for speaker, text in item.turns if speaker == item.user_name]


async def _wait_for_model(store: Store, job_ids: list[int], exc: BackendError, now: float, retry_backoff: float,
                          kind: str) -> None:
    """The model could not run these jobs: pending again after `retry_backoff`, or at once when they were only
    stopped because the bot is shutting down (no attempt is counted either way)."""
    stopped = isinstance(exc, Cancelled)
    log.log(logging.INFO if stopped else logging.WARNING, "%s jobs wait: %s", kind, exc)
    await postpone(store, job_ids, now + (0.0 if stopped else retry_backoff), str(exc))


async def _record_output(store: Store, job_id: int, user_pk: int, task: str, raw: str, reason: str, now: float) -> None:
    try:
        async with store.write() as db:
            await db.execute(
                "INSERT INTO model_outputs(job_id, user_id, task, raw, flagged, reason, created) "
                "VALUES (?, ?, ?, ?, 1, ?, ?)",
                (job_id, user_pk, task, raw, reason, now),
            )
    except Forgotten:
        pass  # a write about a person forgotten while the model worked: nothing to keep


async def write_session_memories(
    store: Store,
    generator: Generator,
    profile: Profile,
    job_ids: Sequence[int],
    *,
    bot_name: str,
    max_new_tokens: int,
    max_attempts: int,
    clock: Callable[[], float],
    retry_backoff: float = 60.0,
) -> TaskReport:
    """COMEDY task 1 for a batch of claimed session-memory jobs."""
    report = TaskReport()
    jobs: list[_SessionJob] = []
    for job_id in job_ids:
        row = await job_row(store, job_id)
        if row is None:
            continue
        job = await _load_session(store, job_id, int(row[0]), row[2], bot_name)
        if job is None:  # the person was forgotten meanwhile
            async with store.write() as db:
                await drop(db, job_id)
            continue
        jobs.append(job)

    by_attempt: dict[int, list[_SessionJob]] = {}
    for job in jobs:
        by_attempt.setdefault(job.attempts, []).append(job)
    for attempt, group in sorted(by_attempt.items()):
        prompts = [profile.session_memory_prompt(j.item) for j in group]
        params = profile.memory_params(max_new_tokens, attempt)
        try:
            outputs = await generator.generate(prompts, params, Priority.JOB)
        except BackendError as exc:
            await _wait_for_model(store, [j.job_id for j in group], exc, clock(), retry_backoff, "session-memory")
            report.waiting += len(group)
            continue
        report.model_calls += len(prompts)
        for job, out in zip(group, outputs, strict=True):
            report.generated_tokens += out.new_tokens
            lines = profile.parse_session_memory(out.text, job.item)
            source = "model"
            if lines is None:
                report.malformed += 1
                await _record_output(store, job.job_id, job.user_pk, "session_memory", out.text,
                                     "no usable fact lines", clock())
                if job.attempts + 1 < max_attempts:
                    await retry(store, job.job_id, "malformed model output", clock())
                    continue
                facts, source = fallback_facts(job.item, job.backbone), "fallback"
                report.fallbacks += 1
            else:
                facts = session_facts(job.item.user_name, job.backbone, lines, job.evidence, earlier=job.earlier)
            facts = [resolve_relative(f, job.started) for f in facts]
            now = clock()
            if not await _save_session_memory(store, job, facts, source, generator.name, now):
                continue
            report.written += 1
            report.items.append(job.session_id)
    return report


async def _save_session_memory(
    store: Store, job: _SessionJob, facts: list[str], source: str, model: str, now: float
) -> bool:
    """One session's memory and its job, in one transaction; False when the person was forgotten while the
    model worked (their rows are gone: the job is dropped and the rest of the batch goes on)."""
    try:
        async with store.write() as db:
            cur = await db.execute(
                "INSERT INTO session_memories(session_id, user_id, private, session_time, facts, source, model, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(session_id) DO NOTHING",
                (job.session_id, job.user_pk, int(job.private), job.started, json.dumps(facts), source,
                 model, now),
            )
            await finish(db, job.job_id, now, attempt=True,
                         error=None if source == "model" else "fallback memory after malformed outputs")
            if cur.rowcount:  # not when another process wrote it first (its lease had run out meanwhile)
                await queue_compression(db, job.user_pk, job.private, now)
    except Forgotten:
        log.info("session-memory job %d dropped: its person was forgotten meanwhile", job.job_id)
        return False
    return True


@dataclass(frozen=True)
class _CompressJob:
    job_id: int
    user_pk: int
    scope: str
    attempts: int
    memory_ids: tuple[int, ...]
    sessions: tuple[int, ...]
    item: CompressionInput
    history: tuple[tuple[str, tuple[str, ...]], ...]  # every session memory in scope, oldest first: (date, facts)
    history_ids: tuple[int, ...] = ()  # their ids: the version is written only if they all still exist


async def _load_compression(store: Store, job_id: int, bot_name: str) -> _CompressJob | None:
    row = await job_row(store, job_id)
    if row is None:
        return None
    user_pk, scope = row[1], row[0].split(":", 1)[1]
    marker = "compressed_all" if scope == "all" else "compressed_public"
    privacy = "" if scope == "all" else " AND private = 0"
    memories = await store.fetchall(
        f"SELECT id, session_id, session_time, facts FROM session_memories WHERE user_id = ? AND {marker} IS NULL"
        f"{privacy} ORDER BY session_time, id",
        (user_pk,),
    )
    if not memories:
        return None
    user = await store.fetchone("SELECT display_name, platform_user_id FROM users WHERE id = ?", (user_pk,))
    user_name = str(user[0] or user[1]) if user else "the user"
    previous = await store.fetchone(
        "SELECT profile, relationship, events FROM compressive_memories WHERE user_id = ? AND scope = ? "
        "ORDER BY version DESC LIMIT 1",
        (user_pk, scope),
    )
    item = CompressionInput(
        user_name=user_name,
        bot_name=bot_name,
        previous_profile=str(previous[0]) if previous else "",
        previous_relationship=str(previous[1]) if previous else "",
        previous_events=str(previous[2]) if previous else "",
        new_memories=tuple((format_date(float(m[2])), tuple(json.loads(m[3]))) for m in memories),
    )
    # The stored memory is recomposed from all the person's session memories, so a correction in any
    # session supersedes the fact it corrects wherever it stood.
    history = await store.fetchall(
        f"SELECT session_time, facts, id FROM session_memories WHERE user_id = ?{privacy} ORDER BY session_time, id",
        (user_pk,),
    )
    return _CompressJob(
        job_id, user_pk, scope, int(row[2]), tuple(int(m[0]) for m in memories),
        tuple(int(m[1]) for m in memories), item,
        tuple((format_date(float(h[0])), tuple(json.loads(h[1]))) for h in history),
        tuple(int(h[2]) for h in history),
    )


async def compress_memories(
    store: Store,
    generator: Generator,
    profile: Profile,
    job_ids: Sequence[int],
    *,
    bot_name: str,
    max_new_tokens: int,
    max_attempts: int,
    clock: Callable[[], float],
    retry_backoff: float = 60.0,
) -> TaskReport:
    """COMEDY task 2 for a batch of claimed compression jobs: one new version per person and scope."""
    report = TaskReport()
    jobs: list[_CompressJob] = []
    for job_id in job_ids:
        job = await _load_compression(store, job_id, bot_name)
        if job is None:
            async with store.write() as db:
                await finish(db, job_id, clock())
            continue
        jobs.append(job)
    by_attempt: dict[int, list[_CompressJob]] = {}
    for job in jobs:
        by_attempt.setdefault(min(job.attempts, max_attempts - 1), []).append(job)
    for attempt, group in sorted(by_attempt.items()):
        per_job = [profile.compression_prompts(j.item) for j in group]
        flat = [p for prompts in per_job for p in prompts]
        params = profile.memory_params(max_new_tokens, attempt)
        try:
            outputs = await generator.generate(flat, params, Priority.JOB)
        except BackendError as exc:
            await _wait_for_model(store, [j.job_id for j in group], exc, clock(), retry_backoff, "compression")
            report.waiting += len(group)
            continue
        report.model_calls += len(flat)
        offset = 0
        for job, prompts in zip(group, per_job, strict=True):
            mine = outputs[offset : offset + len(prompts)]
            offset += len(prompts)
            report.generated_tokens += sum(o.new_tokens for o in mine)
            parsed = profile.parse_compression([o.text for o in mine], job.item)
            flagged = 0
            if parsed is None:
                report.malformed += 1
                raw = "\n---\n".join(o.text for o in mine)
                await _record_output(store, job.job_id, job.user_pk, "compress", raw, "unusable sections", clock())
                if job.attempts + 1 < max_attempts:
                    await retry(store, job.job_id, "malformed model output", clock())
                    continue
                parsed = CompressionOutput("", "", "")
                flagged = 1
                report.fallbacks += 1
            memory = compose(job.history, name=job.item.user_name, bot_name=job.item.bot_name,
                             model_profile=parsed.profile, model_relationship=parsed.relationship,
                             max_events=job.item.max_events)
            try:
                if not await _save_version(store, job, memory.profile, memory.relationship, memory.events,
                                           generator.name, flagged, clock()):
                    log.info("compression job %d not saved: some of its sessions were deleted meanwhile",
                             job.job_id)
                    continue
            except Forgotten:
                log.info("compression job %d dropped: its person was forgotten meanwhile", job.job_id)
                continue
            report.written += 1
            report.items.append(job.user_pk)
    return report


async def _save_version(
    store: Store, job: _CompressJob, profile: str, relationship: str, events: str, model: str, flagged: int, now: float
) -> bool:
    """Write the version; False (nothing written, the job left pending for the next run) when a session it
    was composed from was deleted while the model worked (a server admin's forget): it would bring back what
    was deleted."""
    marker = "compressed_all" if job.scope == "all" else "compressed_public"
    async with store.write() as db:
        used = sorted(set(job.history_ids) | set(job.memory_ids))
        async with db.execute(
            f"SELECT COUNT(*) FROM session_memories WHERE id IN ({','.join('?' * len(used))})", used
        ) as cur:
            found = await cur.fetchone()
        if found is None or int(found[0]) != len(used):
            await finish(db, job.job_id, now, state=JobState.PENDING)
            return False
        async with db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM compressive_memories WHERE user_id = ? AND scope = ?",
            (job.user_pk, job.scope),
        ) as cur:
            row = await cur.fetchone()
        version = int(row[0] if row else 0) + 1
        # One version per person, scope and set of sessions (a unique index): a process whose lease ran out
        # while it worked finds the version written by the one that took over, and writes nothing.
        cur = await db.execute(
            "INSERT INTO compressive_memories(user_id, scope, version, profile, relationship, events, source_sessions, "
            "model, flagged, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (job.user_pk, job.scope, version, profile, relationship, events, json.dumps(list(job.sessions)), model,
             flagged, now),
        )
        if cur.rowcount:
            await db.executemany(
                f"UPDATE session_memories SET {marker} = ? WHERE id = ?", [(version, m) for m in job.memory_ids]
            )
        # New memories may have arrived while we generated: then the job stays pending for the next run.
        async with db.execute(
            f"SELECT COUNT(*) FROM session_memories WHERE user_id = ? AND {marker} IS NULL"
            + ("" if job.scope == "all" else " AND private = 0"),
            (job.user_pk,),
        ) as cur:
            left = await cur.fetchone()
        await finish(db, job.job_id, now, state=JobState.PENDING if left and left[0] else JobState.DONE)
    return True
