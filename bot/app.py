"""Wiring: one store, one model worker, the session manager, the jobs and the dispatcher.

Every entry point (terminal chat, `membot run`, `membot jobs run`, the benchmarks, the tests) builds the
same object, so they all exercise the same path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.config import Settings
from bot.dispatcher import Dispatcher, ReplySettings
from bot.text import redact_in_logs
from memory.context import ContextBuilder
from memory.jobs import JobRunner, build_scheduler
from memory.sessions import SessionManager
from memory.store import Store
from models.base import Engine
from models.factory import build_backend
from models.profiles import get_profile
from models.worker import ModelWorker

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    store: Store
    worker: ModelWorker
    memory_worker: ModelWorker
    sessions: SessionManager
    jobs: JobRunner
    dispatcher: Dispatcher
    scheduler: AsyncIOScheduler | None = None

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        backend: Engine | None = None,
        memory_backend: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> App:
        for model in (settings.model, settings.memory_model):
            if model is not None and model.backend == "openai" and model.api_key_env:
                redact_in_logs(os.environ.get(model.api_key_env))  # the model server's API key
        store = await Store.open(settings.storage.target(), password=settings.storage.password())
        try:
            backend = backend or build_backend(settings.model)
            worker = ModelWorker(backend, max_batch=settings.model.max_batch, batch_wait_ms=settings.model.batch_wait_ms)
            if memory_backend is None and settings.memory_model is not None:
                memory_backend = build_backend(settings.memory_model)
            memory_settings = settings.memory_model or settings.model
            memory_worker = (
                ModelWorker(memory_backend, max_batch=memory_settings.max_batch,
                            batch_wait_ms=memory_settings.batch_wait_ms)
                if memory_backend is not None else worker
            )
        except BaseException:
            await store.close()
            raise
        # Profiles are bound to their model's tokenizer: exact token counts and EOS text for the seed formats.
        profile = get_profile(settings.model.profile, backend)
        memory_profile = (
            get_profile(settings.memory_model.profile, memory_backend or backend) if settings.memory_model else profile
        )
        sessions = SessionManager(store, inactivity_timeout=settings.sessions.inactivity_timeout, clock=clock)
        jobs = JobRunner(
            store, sessions, memory_worker, memory_profile, bot_name=settings.bot.name,
            batch_size=settings.jobs.batch_size, max_attempts=settings.jobs.max_attempts,
            max_new_tokens=(settings.memory_model or settings.model).memory_max_new_tokens,
            retry_backoff=settings.jobs.retry_backoff, retention_days=settings.memory.retention_days, clock=clock,
        )
        context = ContextBuilder(
            store=store, count_tokens=worker.count_tokens, bot_name=settings.bot.name,
            persona=settings.bot.persona.replace("{name}", settings.bot.name),
            strategy=settings.memory.strategy, budget=settings.memory.reply_context_tokens,
            retrieval_k=settings.memory.retrieval_k,
        )
        dispatcher = Dispatcher(
            store=store, sessions=sessions, context=context, worker=worker, profile=profile, jobs=jobs,
            settings=ReplySettings(
                bot_name=settings.bot.name, max_message_chars=settings.bot.max_message_chars,
                max_new_tokens=settings.model.max_new_tokens, temperature=settings.model.temperature,
                top_p=settings.model.top_p, repetition_penalty=settings.model.repetition_penalty,
                private_in_groups=settings.memory.private_in_groups,
                jobs_interval=settings.jobs.interval, jobs_cron=settings.jobs.cron,
            ),
        )
        return cls(settings, store, worker, memory_worker, sessions, jobs, dispatcher)

    async def start(self, *, schedule: bool = True) -> None:
        """Recover from a crash, start the model thread and (optionally) the scheduled jobs."""
        recovered = await self.sessions.recover()
        if recovered["closed"] or recovered["requeued"]:
            log.info("recovered after restart: closed %(closed)d idle session(s), requeued %(requeued)d job(s)",
                     recovered)
        self.worker.start()
        self.memory_worker.start()
        if schedule:
            self.scheduler = build_scheduler(
                self.jobs, sweep_interval=self.settings.sessions.sweep_interval,
                interval=self.settings.jobs.interval, cron=self.settings.jobs.cron,
            )
            self.scheduler.start()

    async def close(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.worker.close()
        if self.memory_worker is not self.worker:
            await self.memory_worker.close()
        await self.store.close()
