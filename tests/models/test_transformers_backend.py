"""The decode path each model takes, and the GPU path (transformers' static cache, compiled) run on this CPU.

No GPU is needed: the static-cache path is the same generate() call on any device, and transformers compiles
it on CUDA; here compilation is turned on for the CPU with a counting backend (`_compile_all_devices`), so the
tests see how often the bot's GPU traffic would make torch compile, and what happens when compiling fails.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import CompileConfig

from models.base import GenParams, Prompt
from models.transformers_backend import TransformersBackend, pick_decode
from models.worker import ModelWorker, Priority
from tests.tiny_models import build_tiny_llama, build_tiny_t5

GREEDY = GenParams(max_new_tokens=12)


def _prompts(n: int, words: int = 1) -> list[Prompt]:
    """Chat prompts of different lengths, so a batch is left-padded."""
    return [Prompt(messages=(("user", "hello there " * (words + 3 * i)),)) for i in range(n)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "m")


def _backend(folder: Path, decode: str | None) -> TransformersBackend:
    loaded = TransformersBackend.load(folder, device="cpu", dtype="float32")
    return TransformersBackend(loaded.model, loaded.tokenizer, name="tiny", device="cpu", decode=decode)


@pytest.mark.parametrize(("device", "seq2seq", "expected"), [
    ("cpu", False, "own"), ("cuda", False, "static"), ("cuda:1", False, "static"),
    ("cpu", True, "generate"), ("cuda", True, "generate"), ("mps", False, "own"),
])
def test_each_device_and_kind_of_model_has_one_path(device: str, seq2seq: bool, expected: str) -> None:
    assert pick_decode(device, seq2seq) == expected


def test_a_cpu_load_takes_the_own_loop_and_a_seq2seq_model_generate(llama_dir: Path, tmp_path: Path) -> None:
    llama = TransformersBackend.load(llama_dir, device="cpu")
    assert llama.decode == "own" and llama.capabilities.between_steps and llama.capabilities.continuous_batching
    t5 = TransformersBackend.load(build_tiny_t5(tmp_path / "t5"), device="cpu")
    assert t5.decode == "generate" and not t5.capabilities.between_steps
    with pytest.raises(ValueError, match="decode 'own'"):
        TransformersBackend(t5.model, t5.tokenizer, name="t5", device="cpu", decode="own")


def test_the_static_cache_path_answers_as_the_own_loop(llama_dir: Path) -> None:
    """Greedy replies, a padded batch and a streamed reply on the GPU path equal the CPU path's."""
    own, static = _backend(llama_dir, None), _backend(llama_dir, "static")
    assert own.decode == "own" and static.decode == "static"
    assert static.capabilities.streaming
    assert not static.capabilities.between_steps and not static.capabilities.continuous_batching
    prompts = _prompts(3)
    assert [g.text for g in static.generate(prompts, GREEDY)] == [g.text for g in own.generate(prompts, GREEDY)]
    seen: list[str] = []
    streamed = static.generate(prompts[:1], GREEDY, on_text=seen.append)
    assert streamed[0].text == own.generate(prompts[:1], GREEDY)[0].text
    assert seen and seen[-1] == streamed[0].text


def _on_the_cpu(backend: Any) -> CompileConfig:
    """transformers compiles generate() with this backend on any device, as it does on CUDA by default."""
    config = CompileConfig(backend=backend, mode=None)
    config._compile_all_devices = True
    return config


def _counting_compiler(compiled: list[int]) -> Any:
    def backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        compiled.append(1)
        return graph.forward

    return backend


def test_varied_traffic_compiles_a_bounded_number_of_times(llama_dir: Path) -> None:
    """Replies and job batches of every length and size: torch compiles a few times, not once per call.

    transformers keeps the static cache at the longest length seen so far and compiles with dynamic shapes
    after the first change; on a GPU each compilation takes seconds to a minute, so this is what keeps a
    long-running bot from recompiling on every new prompt length."""
    own, static = _backend(llama_dir, None), _backend(llama_dir, "static")
    compiled: list[int] = []
    static.model.generation_config.compile_config = _on_the_cpu(_counting_compiler(compiled))
    torch._dynamo.reset()
    try:
        calls = [(1, 1), (1, 4), (3, 2), (2, 6), (1, 2), (4, 1), (1, 9), (3, 3)]
        for rows, words in calls:
            prompts = _prompts(rows, words)
            assert [g.text for g in static.generate(prompts, GREEDY)] == [g.text for g in own.generate(prompts, GREEDY)]
        assert 1 <= len(compiled) <= 4, f"{len(compiled)} compilations for {len(calls)} calls"
    finally:
        torch._dynamo.reset()


def test_a_failed_compilation_falls_back_to_plain_generate(llama_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No Triton, no compiler: the reply still comes, the failure is said once, later calls skip compiling."""
    own, static = _backend(llama_dir, None), _backend(llama_dir, "static")

    def broken(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        raise RuntimeError("Cannot find a working triton installation")

    static.model.generation_config.compile_config = _on_the_cpu(broken)
    torch._dynamo.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="models.transformers_backend"):
            first = static.generate(_prompts(2), GREEDY)
            second = static.generate(_prompts(1, 5), GREEDY)
    finally:
        torch._dynamo.reset()
    assert [g.text for g in first] == [g.text for g in own.generate(_prompts(2), GREEDY)]
    assert second[0].text == own.generate(_prompts(1, 5), GREEDY)[0].text
    assert static.decode == "generate"
    warnings = [r.getMessage() for r in caplog.records if "compiling the decode steps failed" in r.getMessage()]
    assert len(warnings) == 1 and "triton" in warnings[0]


async def test_the_worker_serves_jobs_and_replies_on_the_static_path(llama_dir: Path) -> None:
    """Without between-step yielding the worker runs job batches whole and a waiting reply next."""
    static = _backend(llama_dir, "static")
    worker = ModelWorker(static, max_batch=4)
    try:
        jobs = worker.generate(_prompts(6, 2), GREEDY, Priority.JOB)
        reply = worker.generate(_prompts(1), GREEDY, Priority.REPLY)
        import asyncio

        job_out, reply_out = await asyncio.gather(jobs, reply)
    finally:
        await worker.close()
    assert len(job_out) == 6 and len(reply_out) == 1
    assert worker.stats.max_batch_seen <= 4  # no continuous batching: max_batch rows per call
