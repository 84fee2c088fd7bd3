"""Counting tokens on the event loop while the model thread encodes padded batches must not race.

A fast tokenizer's padding/truncation settings live on one shared object that every call sets; without
the backend's lock a count in between unset a batch's padding ("Unable to create tensor...", seen in a
LoCoMo run while contexts were counted during answer generation).
"""

from __future__ import annotations

import threading
from pathlib import Path

from models.base import Prompt
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_llama


def test_counting_while_encoding_batches(tmp_path: Path) -> None:
    backend = TransformersBackend.load(build_tiny_llama(tmp_path / "llama"), device="cpu")
    prompts = [Prompt(text="short"), Prompt(text="a much longer prompt " * 20)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            backend.count_tokens("one two three four five six seven eight")

    counters = [threading.Thread(target=count) for _ in range(2)]
    for t in counters:
        t.start()
    try:
        for _ in range(300):
            try:
                batch = backend.encode(prompts)
                assert batch["input_ids"].shape[0] == 2
            except BaseException as exc:
                errors.append(exc)
                break
    finally:
        stop.set()
        for t in counters:
            t.join()
    assert not errors, errors[0]
