"""The thread count of small decode steps (models/step_threads.py): each batch size keeps the count its steps
measured fastest, every step ends on the configured count, and a model whose numbers depend on the thread
count is never tuned. The timing tests run on a simulated clock: which count is faster is the input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from models import step_threads
from models.base import GenParams, Prompt
from models.step_threads import RETUNE_STEPS, TRIALS, StepThreads, candidates, thread_count_keeps_results
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_llama


class Machine:
    """A clock and a thread setting: a step's time is `cost(threads, rows, length)`."""

    def __init__(self, threads: int, cost: Any) -> None:
        self.threads = threads
        self.now = 0.0
        self.cost = cost
        self.sets: list[int] = []

    def set_threads(self, n: int) -> None:
        self.sets.append(n)
        self.threads = n

    def tuner(self) -> StepThreads:
        return StepThreads(self.threads, clock=lambda: self.now, set_threads=self.set_threads)

    def steps(self, tuner: StepThreads, rows: int, count: int, length: int = 100) -> list[int]:
        """Run `count` steps over a context of `length` tokens; return the thread count each ran on."""
        seen = []
        for _ in range(count):
            with tuner.step(rows, length):
                seen.append(self.threads)
                self.now += self.cost(self.threads, rows, length)
        return seen


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_candidates_are_powers_of_two_and_the_configured_count() -> None:
    assert candidates(1) == (1,)
    assert candidates(2) == (1, 2)
    assert candidates(6) == (1, 2, 4, 6)
    assert candidates(8) == (1, 2, 4, 8)


def test_each_batch_size_keeps_the_count_measured_fastest() -> None:
    # One thread is faster for one row, two threads for eight rows (as measured on a 2-core machine at 16).
    machine = Machine(2, lambda n, rows, length: {1: 0.036, 2: 0.044}[n] if rows == 1 else {1: 0.080, 2: 0.070}[n])
    tuner = machine.tuner()
    trial = machine.steps(tuner, 1, TRIALS * 2)
    assert sorted(trial) == [1] * TRIALS + [2] * TRIALS  # both counts timed, in turn
    assert machine.steps(tuner, 1, 20) == [1] * 20
    machine.steps(tuner, 7, TRIALS * 2)
    assert machine.steps(tuner, 5, 20) == [2] * 20  # 5 to 8 rows share one measurement
    assert tuner.chosen() == {"1x256": 1, "8x256": 2}
    assert machine.threads == 2  # every step ends on the configured count


def test_each_context_length_is_measured_apart() -> None:
    # Attention over a long context gives the second thread work (measured: 71 against 61 ms at 1,286 tokens).
    machine = Machine(2, lambda n, rows, length: {1: 0.034, 2: 0.041}[n] if length <= 256 else {1: 0.071, 2: 0.061}[n])
    tuner = machine.tuner()
    machine.steps(tuner, 1, TRIALS * 2, length=60)
    machine.steps(tuner, 1, TRIALS * 2, length=1286)
    assert tuner.chosen() == {"1x256": 1, "1x2048": 2}
    assert machine.steps(tuner, 1, 5, length=1500) == [2] * 5
    assert machine.steps(tuner, 1, 5, length=200) == [1] * 5


def test_larger_batches_and_one_thread_are_left_alone() -> None:
    machine = Machine(2, lambda n, rows, length: 0.01)
    machine.steps(machine.tuner(), 9, 50)
    assert machine.sets == []
    single = Machine(1, lambda n, rows, length: 0.01)
    single.steps(single.tuner(), 1, 50)
    assert single.sets == []


def test_a_failing_step_restores_the_count_and_is_not_timed() -> None:
    machine = Machine(2, lambda n, rows, length: 0.01)
    tuner = machine.tuner()
    with pytest.raises(RuntimeError), tuner.step(1, 100):
        assert machine.threads == 1
        raise RuntimeError("model failed")
    assert machine.threads == 2
    assert machine.steps(tuner, 1, 1) == [1]  # the failed step did not count as the first trial


def test_the_choice_is_measured_again_when_the_machine_changes() -> None:
    slow_one = False

    def cost(n: int, rows: int, length: int) -> float:
        return (0.05 if n == 1 else 0.04) if slow_one else (0.03 if n == 1 else 0.04)

    machine = Machine(2, cost)
    tuner = machine.tuner()
    machine.steps(tuner, 1, TRIALS * 2)
    assert tuner.chosen() == {"1x256": 1}
    slow_one = True  # e.g. another process now keeps one core busy
    machine.steps(tuner, 1, RETUNE_STEPS + TRIALS * 2)
    assert tuner.chosen() == {"1x256": 2}


class _CountsThreads(nn.Module):
    """Logits that change with the thread count, as a float32 sum split by thread would."""

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        logits = torch.zeros(*input_ids.shape, 8) + torch.get_num_threads()
        return SimpleNamespace(logits=logits, cache=None, past_key_values=None)


def test_a_model_whose_numbers_depend_on_the_thread_count_is_not_tuned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger=step_threads.__name__)
    assert not thread_count_keeps_results(_CountsThreads(), 2)
    assert "fewer threads change this model's numbers" in caplog.text
    assert torch.get_num_threads() == 2
    assert not thread_count_keeps_results(_CountsThreads(), 1)  # nothing to choose from


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "m")


def test_a_cpu_load_tunes_decode_steps_and_replies_as_generate(llama_dir: Path) -> None:
    backend = TransformersBackend.load(llama_dir, device="cpu", dtype="bfloat16", threads=2)
    if not thread_count_keeps_results(backend.model, 2):  # this CPU's kernels: then nothing may be tuned
        assert backend.step_threads is None
        return
    assert backend.step_threads is not None
    plain = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    reference = TransformersBackend(plain, backend.tokenizer, name="plain", device="cpu", decode="generate")
    params = GenParams(max_new_tokens=24, repetition_penalty=1.1)
    for n in (1, 4, 9):  # replies of one row: the trial steps run on both counts
        prompt = [Prompt(messages=(("user", "hello there " * n),))]
        assert backend.generate(prompt, params) == reference.generate(prompt, params)
    # A batch of 3 padded rows (a job batch, or replies decoded together): steps of 4 rows tried on both counts
    batch = [Prompt(messages=(("user", "tell me more " * n),)) for n in (1, 3, 7)]
    assert backend.generate(batch, params) == reference.generate(batch, params)
    assert set(backend.step_threads.chosen()) == {"1x256", "4x256"}
    assert torch.get_num_threads() == 2
