"""`membot eval locomo`: replay LoCoMo conversations through the bot's own pipeline and score the memory.

Each conversation gets its own SQLite file and the production components (SessionManager, JobRunner,
ContextBuilder, the configured prompt profile); speaker A is the user, speaker B's turns are stored as
the bot's (given, not generated), each LoCoMo session is one session on the session's own clock, and the
memory jobs run after every session as the scheduler would run them. Conversations replay concurrently
through one model worker, so the jobs of different conversations share forward passes.
Then each question is asked as the user's message in a new session and the reply input is recorded for
every strategy and budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.context import ContextBuilder
from memory.jobs import JobRunner
from memory.locomo.dataset import Conversation, Question, load_locomo
from memory.locomo.report import write_report
from memory.locomo.scoring import answer_token_recall, context_has_answer, gold_answer, score_answer
from memory.sessions import SessionManager
from memory.store import Store
from memory.tasks import TaskReport
from models.base import Generation, GenParams, Prompt
from models.profiles import get_profile
from models.profiles.base import Profile, ReplyInput
from models.worker import ModelWorker, Priority

STRATEGIES = ("none", "recent", "sessions", "compressive", "hybrid")
QA_SUFFIX = " Answer with a short phrase; if it was never mentioned, say 'not mentioned'."
_SESSION_OF = re.compile(r"D(\d+):")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _CountingGenerator:
    """Counts the model calls and tokens the memory jobs spend, per conversation."""

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker
        self.name = worker.name
        self.calls = 0
        self.tokens = 0

    async def generate(
        self, prompts: Sequence[Prompt], params: GenParams, priority: Priority = Priority.REPLY
    ) -> list[Generation]:
        out = await self.worker.generate(prompts, params, priority)
        self.calls += len(prompts)
        self.tokens += sum(g.new_tokens for g in out)
        return out


@dataclass
class ReplayResult:
    sample_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    memory_calls: int = 0
    memory_tokens: int = 0
    memory_seconds: float = 0.0
    jobs: TaskReport = field(default_factory=TaskReport)


def context_text(item: ReplyInput) -> str:
    """What the reply model sees of the past (the question itself excluded)."""
    parts = [item.memory, *item.evidence]
    for session in item.past_sessions:
        parts.extend(text for _, text in session)
    parts.extend(text for _, text in item.turns[:-1])
    return "\n".join(p for p in parts if p)


def answer_sample(total: int, wanted: int | None) -> set[int]:
    """Which questions get generated answers: all, or `wanted` spread evenly over the list (LoCoMo lists a
    conversation's questions roughly by category, adversarial last, so the first N would miss some)."""
    if wanted is None or wanted >= total:
        return set(range(total))
    if wanted <= 0:
        return set()
    return {int(i * total / wanted) for i in range(wanted)}


def questions_within(conv: Conversation, limit_sessions: int | None) -> list[Question]:
    if not limit_sessions:
        return list(conv.questions)
    kept = {s.index for s in conv.sessions[:limit_sessions]}
    out = []
    for q in conv.questions:
        sessions = {int(m.group(1)) for e in q.evidence for m in _SESSION_OF.finditer(e)}
        if sessions and sessions <= kept:
            out.append(q)
    return out


async def replay_conversation(
    conv: Conversation,
    worker: ModelWorker,
    profile: Profile,
    reply_profile: Profile,
    *,
    db_path: Path,
    strategies: Sequence[str],
    budgets: Sequence[int],
    answer_budgets: Sequence[int],
    limit_sessions: int | None,
    limit_questions: int | None,
    batch_size: int,
    memory_max_new_tokens: int,
    answer_params: GenParams,
    progress: Any = None,
    builder_options: dict[str, Any] | None = None,
    reuse: bool = False,
    answer_questions: int | None = None,
) -> ReplayResult:
    result = ReplayResult(conv.sample_id)
    clock = _Clock()
    store = await Store.open(db_path)
    replayed_key = f"locomo_replayed:{limit_sessions or 0}"
    try:
        sessions = SessionManager(store, inactivity_timeout=10**9, clock=clock)
        counter = _CountingGenerator(worker)
        jobs = JobRunner(store, sessions, counter, profile, bot_name=conv.speaker_b, batch_size=batch_size,
                         max_new_tokens=memory_max_new_tokens, clock=clock)
        user = conv.speaker_a
        chat = f"locomo:{conv.sample_id}"
        started = time.perf_counter()
        last = None
        done = await store.get_kv(replayed_key) if reuse else None
        if done is None and await store.scalar("SELECT COUNT(*) FROM sessions"):
            # An earlier replay was cut short: start this conversation over rather than replay on top.
            async with store.write() as db:
                await db.execute("DELETE FROM users")
                await db.execute("DELETE FROM chats")
                await db.execute("DELETE FROM kv")
        if done is not None:  # memory already built by an earlier run: re-score only
            cost = json.loads(done)
            result.memory_calls, result.memory_tokens = cost["calls"], cost["tokens"]
            result.memory_seconds = cost["seconds"]
            clock.now = conv.sessions[: limit_sessions or None][-1].when.timestamp() + 86400
            if progress is not None:
                progress.update(len(conv.sessions[: limit_sessions or None]))
        for session in conv.sessions[: limit_sessions or None] if done is None else []:
            base = session.when.timestamp()
            for i, turn in enumerate(session.turns):
                clock.now = base + i * 30
                if turn.speaker == conv.speaker_a:
                    last = await sessions.record_user_message(
                        platform="locomo", user_id=user, display_name=user, chat_id=chat, chat_kind="dm",
                        text=turn.text,
                    )
                else:
                    if last is None:
                        last = await sessions.ensure_session(
                            platform="locomo", user_id=user, display_name=user, chat_id=chat, chat_kind="dm"
                        )
                    await sessions.record_bot_message(last, turn.text)
            clock.now = base + len(session.turns) * 30
            if last is not None:
                await sessions.end_session(last.user_pk, reason="locomo session end")
            last = None
            await jobs.run_until_idle()
            if progress is not None:
                progress.update(1)
        if done is None:
            result.memory_seconds = time.perf_counter() - started
            result.memory_calls, result.memory_tokens = counter.calls, counter.tokens
            await store.set_kv(replayed_key, json.dumps(
                {"calls": counter.calls, "tokens": counter.tokens, "seconds": result.memory_seconds}))

        # What the memory holds, counted from the database (so a re-scoring run reports it too).
        result.jobs = TaskReport(
            written=int(await store.scalar("SELECT COUNT(*) FROM session_memories WHERE source = 'model'") or 0),
            fallbacks=int(await store.scalar("SELECT COUNT(*) FROM session_memories WHERE source = 'fallback'") or 0),
            malformed=int(await store.scalar("SELECT COUNT(*) FROM model_outputs WHERE flagged = 1") or 0),
        )
        questions = questions_within(conv, limit_sessions)[: limit_questions or None]
        clock.now += 86400
        answered = answer_sample(len(questions), answer_questions)
        for number, q in enumerate(questions):
            answering = number in answered
            asked = q.question + QA_SUFFIX
            rec = await sessions.record_user_message(
                platform="locomo", user_id=user, display_name=user, chat_id=chat, chat_kind="dm", text=asked,
            )
            pending: list[tuple[dict[str, Any], Prompt]] = []
            for strategy in strategies:
                for budget in budgets:
                    builder = ContextBuilder(store=store, count_tokens=worker.count_tokens, bot_name=conv.speaker_b,
                                             persona=f"You are {conv.speaker_b}, talking with your friend {user}.",
                                             strategy=strategy, budget=budget, **(builder_options or {}))
                    item = await builder.build(user_pk=rec.user_pk, user_name=user, session_id=rec.session_id,
                                               include_private=True, query=q.question)
                    ctx = context_text(item)
                    gold = gold_answer(q)
                    record = {
                        "sample_id": conv.sample_id, "strategy": strategy, "budget": budget,
                        "category": q.category, "question": q.question, "answer": gold,
                        "prediction": None, "context": ctx, "context_tokens": worker.count_tokens(ctx),
                        "has_answer": context_has_answer(ctx, gold) if q.category != 5 else False,
                        "token_recall": answer_token_recall(ctx, gold) if q.category != 5 else 0.0,
                        "f1": None,
                    }
                    result.records.append(record)
                    if answering and budget in answer_budgets:
                        pending.append((record, reply_profile.reply_prompt(item)))
            if pending:
                outs = await worker.generate([p for _, p in pending], answer_params, Priority.REPLY)
                for (record, _), out in zip(pending, outs, strict=True):
                    record["prediction"] = reply_profile.clean_reply(out.text)
                    record["f1"] = score_answer(record["prediction"], q)
            async with store.write() as db:  # the question leaves no trace for the next one
                await db.execute("DELETE FROM sessions WHERE id = ?", (rec.session_id,))
            if progress is not None:
                progress.update(1)
        return result
    finally:
        await store.close()


async def run_locomo(
    *,
    data: Path,
    out: Path,
    worker: ModelWorker,
    profile: Profile,
    reply_profile: Profile | None = None,
    conversations: list[str] | None = None,
    strategies: Sequence[str] = STRATEGIES,
    budgets: Sequence[int] = (256, 512, 1024, 2048),
    answer_budgets: Sequence[int] | None = None,
    limit_sessions: int | None = None,
    limit_questions: int | None = None,
    batch_size: int = 8,
    memory_max_new_tokens: int = 160,
    answer_max_new_tokens: int = 24,
    meta: dict[str, Any] | None = None,
    show_progress: bool = True,
    builder_options: dict[str, Any] | None = None,
    reuse: bool = False,
    answer_questions: int | None = None,
    with_contexts: bool = False,
) -> dict[str, Any]:
    from tqdm import tqdm

    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    convs = load_locomo(data, conversations)
    reply_profile = reply_profile or profile
    answer_budgets = list(budgets if answer_budgets is None else answer_budgets)
    total = sum(len(c.sessions[: limit_sessions or None]) + len(questions_within(c, limit_sessions)[: limit_questions or None])
                for c in convs)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    workdir = out / "databases"
    if not reuse and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(exist_ok=True)
    started = time.perf_counter()
    answer_params = GenParams(max_new_tokens=answer_max_new_tokens, repetition_penalty=1.1)
    with tqdm(total=total, desc="locomo", unit="step", file=sys.stderr, disable=not show_progress) as bar:
        results = await asyncio.gather(*(
            replay_conversation(
                c, worker, profile, reply_profile, db_path=workdir / f"{c.sample_id}.sqlite3",
                strategies=strategies, budgets=budgets, answer_budgets=answer_budgets,
                limit_sessions=limit_sessions, limit_questions=limit_questions, batch_size=batch_size,
                memory_max_new_tokens=memory_max_new_tokens, answer_params=answer_params, progress=bar,
                builder_options=builder_options, reuse=reuse, answer_questions=answer_questions,
            )
            for c in convs
        ))
    records = [r for res in results for r in res.records]
    memory_cost = {
        "model_calls": sum(r.memory_calls for r in results),
        "generated_tokens": sum(r.memory_tokens for r in results),
        "wall_seconds": round(max((r.memory_seconds for r in results), default=0.0), 1),
    }
    free = {"model_calls": 0, "generated_tokens": 0, "wall_seconds": 0.0}
    cost = {s: (memory_cost if s in ("compressive", "hybrid") else free) for s in strategies}
    full_meta = {
        "model": worker.name, "device": worker.device, "conversations": [c.sample_id for c in convs],
        "limit_sessions": limit_sessions, "limit_questions": limit_questions,
        "answer_budgets": answer_budgets, "answer_questions_per_conversation": answer_questions,
        "total_seconds": round(time.perf_counter() - started, 1),
        "session_memories": sum(r.jobs.written + r.jobs.fallbacks for r in results),
        "fallback_memories": sum(r.jobs.fallbacks for r in results),
        "malformed_outputs": sum(r.jobs.malformed for r in results),
        **(meta or {}),
    }
    return write_report(out, records, cost, full_meta, include_context=with_contexts)


async def run_locomo_cli(settings: Any, args: argparse.Namespace) -> int:
    from models.factory import build_backend

    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    convs = [c.strip() for c in args.conversations.split(",")] if args.conversations else None
    answer_budgets = [] if args.no_answers else ([1024] if 1024 in budgets else budgets[-1:])
    if args.answer_budgets:
        answer_budgets = [int(b) for b in args.answer_budgets.split(",") if b.strip()]
    backend = build_backend(settings.model)
    worker = ModelWorker(backend, max_batch=settings.model.max_batch, batch_wait_ms=max(settings.model.batch_wait_ms, 20))
    worker.start()
    try:
        agg = await run_locomo(
            data=Path(args.data), out=Path(args.out), worker=worker, profile=get_profile(settings.model.profile, backend),
            conversations=convs, strategies=strategies, budgets=budgets, answer_budgets=answer_budgets,
            limit_sessions=args.limit_sessions, limit_questions=args.limit_questions,
            batch_size=settings.jobs.batch_size, memory_max_new_tokens=settings.model.memory_max_new_tokens,
            reuse=args.reuse, answer_questions=args.answer_questions, with_contexts=args.with_contexts,
            meta={"command": "membot " + " ".join(sys.argv[1:]) if sys.argv else "", "cpus": os.cpu_count()},
        )
    finally:
        await worker.close()
    for strategy in strategies:
        cells = agg["cells"].get(strategy, {})
        line = ", ".join(f"{b}: {c['recall']:.3f}" for b, c in cells.items() if c.get("recall") is not None)
        print(f"{strategy:12s} context recall  {line}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
