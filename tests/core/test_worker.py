"""The model worker: batches, replies before jobs, cancellation, survives backend errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from models.base import (
    BackendError,
    Cancelled,
    Capabilities,
    Engine,
    Generation,
    GenParams,
    Prompt,
    TokenizerInfo,
)
from models.transformers_backend import TransformersBackend
from models.worker import ModelWorker, Priority
from tests.tiny_models import build_tiny_llama


class GatedBackend:
    """Blocks its first batch until released, so tests can queue work behind it."""

    name = "gated"
    device = "cpu"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def generate(self, prompts: Sequence[Prompt], params: GenParams, *, on_text: object = None,
                 between_steps: object = None, max_rows: int | None = None,
                 cancelled: object = None) -> list[Generation]:
        if not self.batches:
            self.entered.set()
            self.gate.wait(5)
        self.batches.append([p.text or "" for p in prompts])
        if any(p.text == "boom" for p in prompts):
            raise RuntimeError("kaboom")
        return [Generation(text=(p.text or "").upper(), new_tokens=1) for p in prompts]

    def count_tokens(self, text: str) -> int:
        return len(text)

    def tokenizer_info(self) -> TokenizerInfo:
        return TokenizerInfo(count_tokens=self.count_tokens)

    def close(self) -> None:
        pass


async def _wait_started(backend: GatedBackend, worker: ModelWorker) -> None:
    await asyncio.to_thread(backend.entered.wait, 5)


async def test_replies_go_before_jobs_and_are_batched() -> None:
    backend = GatedBackend()
    worker = ModelWorker(backend, max_batch=8, batch_wait_ms=1)
    params = GenParams()
    first = asyncio.ensure_future(worker.generate([Prompt(text="first")], params, Priority.JOB))
    await _wait_started(backend, worker)
    jobs = asyncio.ensure_future(worker.generate([Prompt(text=f"job{i}") for i in range(3)], params, Priority.JOB))
    await asyncio.sleep(0.02)
    replies = [asyncio.ensure_future(worker.generate([Prompt(text=f"r{i}")], params)) for i in range(3)]
    await asyncio.sleep(0.02)
    backend.gate.set()
    assert [g.text for g in await jobs] == ["JOB0", "JOB1", "JOB2"]
    assert [(await r)[0].text for r in replies] == ["R0", "R1", "R2"]
    await first
    assert backend.batches[1] == ["r0", "r1", "r2"]  # the replies, batched, before the waiting jobs
    assert backend.batches[2] == ["job0", "job1", "job2"]
    await worker.close()


async def test_cancelled_requests_are_skipped() -> None:
    backend = GatedBackend()
    worker = ModelWorker(backend, batch_wait_ms=0)
    first = asyncio.ensure_future(worker.generate([Prompt(text="first")], GenParams()))
    await _wait_started(backend, worker)
    doomed = asyncio.ensure_future(worker.generate([Prompt(text="doomed")], GenParams()))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.sleep(0.01)  # the cancellation reaches the awaiting task, which withdraws its request
    backend.gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.sleep(0.05)
    assert ["doomed"] not in backend.batches
    await worker.close()


async def test_backend_errors_reach_the_caller_and_the_thread_survives() -> None:
    backend = GatedBackend()
    backend.gate.set()
    worker = ModelWorker(backend, batch_wait_ms=0)
    with pytest.raises(BackendError, match="kaboom"):
        await worker.generate([Prompt(text="boom")], GenParams())
    assert (await worker.generate([Prompt(text="ok")], GenParams()))[0].text == "OK"
    await worker.close()


def _flag_between_steps(worker: ModelWorker) -> threading.Event:
    """An event set once a job batch first calls back between its steps (it is running by then)."""
    polled = threading.Event()
    serve = worker._serve_waiting_replies

    def spy() -> None:
        polled.set()
        serve()

    worker._serve_waiting_replies = spy  # type: ignore[method-assign]
    return polled


async def test_a_job_batch_yields_to_a_reply_between_decode_steps(tmp_path: Path) -> None:
    backend = _tiny_llama_backend(tmp_path / "llama")
    job_params, reply_params = GenParams(max_new_tokens=150), GenParams(max_new_tokens=4)
    jobs = [Prompt(text=f"session number {i} was about bees") for i in range(5)]
    alone = backend.generate(jobs, job_params)

    worker = ModelWorker(backend, batch_wait_ms=0)
    polled = _flag_between_steps(worker)
    job_task = asyncio.ensure_future(worker.generate(jobs, job_params, Priority.JOB))
    await asyncio.to_thread(polled.wait, 10)  # the job batch is running (between its first prefill chunks)
    reply = await worker.generate([Prompt(text="hello")], reply_params)
    assert not job_task.done()  # the reply came back while the job batch was still in progress
    assert reply[0].new_tokens == 4
    assert [g.text for g in await job_task] == [g.text for g in alone]  # and the jobs lost nothing
    await worker.close()


class ContinuousBackend(GatedBackend):
    """Says it batches continuously: the worker then hands it more job prompts than `max_batch` at once."""

    capabilities = Capabilities(between_steps=True, continuous_batching=True)

    def __init__(self) -> None:
        super().__init__()
        self.max_rows: list[int | None] = []

    def generate(self, prompts: Sequence[Prompt], params: GenParams, *, on_text: object = None,
                 between_steps: object = None, max_rows: int | None = None,
                 cancelled: object = None) -> list[Generation]:
        self.max_rows.append(max_rows)
        return super().generate(prompts, params)


async def test_job_prompts_beyond_max_batch_go_to_a_continuous_backend_together() -> None:
    backend = ContinuousBackend()
    worker = ModelWorker(backend, max_batch=4, batch_wait_ms=1)
    params = GenParams()
    first = asyncio.ensure_future(worker.generate([Prompt(text="first")], params, Priority.JOB))
    await _wait_started(backend, worker)
    jobs = asyncio.ensure_future(worker.generate([Prompt(text=f"j{i}") for i in range(20)], params, Priority.JOB))
    replies = asyncio.ensure_future(worker.generate([Prompt(text=f"r{i}") for i in range(6)], params))
    await asyncio.sleep(0.02)
    backend.gate.set()
    assert [g.text for g in await jobs] == [f"J{i}" for i in range(20)]
    await replies
    await first
    sizes = [len(b) for b in backend.batches]
    assert sizes == [1, 4, 2, 16, 4]  # replies in batches of max_batch; jobs 4 x max_batch, 4 rows at a time
    assert backend.max_rows == [4, None, None, 4, 4]
    await worker.close()


def test_every_engine_says_what_it_can_do() -> None:
    """The worker reads `capabilities`, never probes attributes: every engine, stand-ins included, has them."""
    from models.fake import FakeBackend

    for engine in (GatedBackend(), ContinuousBackend(), FakeBackend()):
        assert isinstance(engine, Engine) and isinstance(engine.capabilities, Capabilities)


async def test_a_streamed_reply_on_an_engine_that_cannot_stream_gets_its_text_once_done() -> None:
    backend = GatedBackend()
    backend.gate.set()
    worker = ModelWorker(backend, batch_wait_ms=1)
    seen: list[str] = []
    out = await worker.generate([Prompt(text="hi there")], GenParams(), on_text=seen.append)
    assert seen == ["HI THERE"] and out[0].text == "HI THERE"
    await worker.close()


def _tiny_llama_backend(folder: Path) -> TransformersBackend:
    """A real model whose rows never end early: a long generation runs its whole length unless stopped."""
    backend = TransformersBackend.load(build_tiny_llama(folder), device="cpu")
    backend.model.generation_config.eos_token_id = None
    backend.stop_token_ids = lambda: ()  # type: ignore[method-assign]
    return backend


@pytest.mark.parametrize("decode", ["own", "static"])
async def test_a_running_reply_whose_caller_gave_up_stops_at_the_next_step(tmp_path: Path, decode: str) -> None:
    """A person forgotten while their reply is generated: the model stops within a step and moves on."""
    backend = _tiny_llama_backend(tmp_path / "llama")
    backend.decode = decode
    worker = ModelWorker(backend, batch_wait_ms=0)
    started = threading.Event()
    steps: list[str] = []

    def on_text(text: str) -> None:
        steps.append(text)
        started.set()

    long = GenParams(max_new_tokens=200)
    doomed = asyncio.ensure_future(worker.generate([Prompt(text="tell me everything")], long, on_text=on_text))
    await asyncio.to_thread(started.wait, 10)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    after = await worker.generate([Prompt(text="hello")], GenParams(max_new_tokens=3))
    assert after[0].new_tokens == 3
    assert worker.stats.prompts == 1  # the withdrawn reply never finished: only "hello" was answered
    assert len(steps) < 200
    await worker.close()


async def test_closing_the_worker_stops_a_long_job_batch(tmp_path: Path) -> None:
    """Shutting the bot down mid-batch: the thread ends within a step and the jobs are told why."""
    worker = ModelWorker(_tiny_llama_backend(tmp_path / "llama"), batch_wait_ms=0)
    polled = _flag_between_steps(worker)
    jobs = asyncio.ensure_future(worker.generate(
        [Prompt(text=f"session {i}") for i in range(4)], GenParams(max_new_tokens=100_000), Priority.JOB))
    await asyncio.to_thread(polled.wait, 10)
    thread = worker._thread
    assert thread is not None
    await worker.close()
    assert not thread.is_alive()
    with pytest.raises(Cancelled, match="closing"):
        await jobs
