"""Continuous batching (models/decode.py, `max_rows`): at most `max_rows` rows decode at once, finished rows
hand their place to waiting prompts, and every row's tokens equal that prompt decoded on its own."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.base import GenParams
from models.decode import decode, output_cache
from tests.tiny_models import build_tiny_llama, early_stop_token

PROMPTS = [
    "Hello, how are you today? I am",
    "Why",
    "The quick brown fox jumps over the lazy dog and then it",
    "My sister Ana lives in Oslo",
    "Tell me",
    "We went skiing last week, and the snow was",
    "Cats",
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    path = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return model, tokenizer


def _alone(model: Any, tokenizer: Any, prompt: str, stop: tuple[int, ...] = (), **kw: Any) -> list[int]:
    """Reference: the prompt alone (no padding) through transformers' generate()."""
    enc = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=list(stop) or None,
                             pad_token_id=tokenizer.pad_token_id, **kw)
    row = out[0, enc.input_ids.shape[1]:].tolist()
    cut = next((i for i, t in enumerate(row) if t in stop), len(row))
    return row[:cut]


def _continuous(model: Any, tokenizer: Any, max_rows: int, prefill_rows: int | None = None,
                should_stop: Any = None, **params: Any) -> list[list[int]]:
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    stops = params.pop("stop_token_ids", ())
    return decode(model, enc.input_ids, enc.attention_mask,
                             GenParams(max_new_tokens=NEW_TOKENS, **params), stop_token_ids=stops,
                             max_rows=max_rows, prefill_rows=prefill_rows, should_stop=should_stop)


@pytest.mark.parametrize(("max_rows", "prefill_rows"), [(2, None), (3, 1), (16, 2)])
def test_every_row_equals_the_prompt_alone(tiny: tuple[Any, Any], max_rows: int, prefill_rows: int | None) -> None:
    model, tokenizer = tiny
    stop = early_stop_token([_alone(model, tokenizer, p) for p in PROMPTS])
    expected = [_alone(model, tokenizer, p, (stop,)) for p in PROMPTS]
    lengths = sorted(len(r) for r in expected)
    assert lengths[0] < NEW_TOKENS - 4 and lengths[-1] == NEW_TOKENS, "rows must finish at different steps"
    got = _continuous(model, tokenizer, max_rows, prefill_rows, stop_token_ids=(stop,))
    assert got == expected


def test_repetition_penalty_per_row(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    expected = [_alone(model, tokenizer, p, repetition_penalty=1.3) for p in PROMPTS]
    assert _continuous(model, tokenizer, 2, repetition_penalty=1.3) == expected


def test_never_more_rows_than_max_rows_and_the_cache_is_trimmed(tiny: tuple[Any, Any]) -> None:
    """Watch every forward pass: the batch never exceeds `max_rows`, and once the longest prompt's row has
    left, the cache no longer carries its columns."""
    model, tokenizer = tiny
    seen: list[tuple[int, int]] = []
    real_forward = model.forward

    @functools.wraps(real_forward)  # keeps the forward's signature, which decode reads
    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real_forward(*args, **kwargs)
        seen.append((kwargs["input_ids"].shape[0], output_cache(out).get_seq_length()))
        return out

    model.forward = spy  # type: ignore[method-assign]
    try:
        _continuous(model, tokenizer, 3)
    finally:
        del model.forward
    assert max(rows for rows, _ in seen) == 3
    longest = max(len(tokenizer(p).input_ids) for p in PROMPTS)
    # Prompts are admitted in order; the longest (third) leaves after NEW_TOKENS steps, and the last
    # prompts' rows then run with a cache shorter than the longest prompt plus its output.
    assert seen[-1][1] < longest + NEW_TOKENS


def test_should_stop_ends_early_with_what_was_made(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 5

    got = _continuous(model, tokenizer, 2, should_stop=should_stop)
    assert len(got) == len(PROMPTS)
    assert 0 < sum(len(r) for r in got) < NEW_TOKENS * len(PROMPTS)
    assert all(not r for r in got[4:]), "prompts never admitted stay empty"


def test_empty_and_zero_tokens(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    empty = torch.zeros((0, 3), dtype=torch.long)
    assert decode(model, empty, empty, GenParams(), max_rows=2) == []
    ids = torch.ones((2, 3), dtype=torch.long)
    assert decode(model, ids, ids, GenParams(max_new_tokens=0), max_rows=2) == [[], []]



def test_a_shared_beginning_is_prefilled_once(tiny: tuple[Any, Any]) -> None:
    """Prompts that begin with the same instructions get that part's cache computed once; every row still
    equals its prompt decoded alone."""
    model, tokenizer = tiny
    head = "You write short facts about a person from a conversation. Bob: I teach math in Oslo. Facts: "
    prompts = [head + tail for tail in ("Ana skis.", "We went to Lyon last week", "Cats", "My sister")]
    prompts.append("Something else entirely")
    head_tokens = len(tokenizer(head).input_ids) - 1
    assert head_tokens >= 32
    expected = [_alone(model, tokenizer, p) for p in prompts]
    widths: list[int] = []
    real_forward = model.forward

    @functools.wraps(real_forward)  # keeps the forward's signature, which decode reads
    def spy(*args: Any, **kwargs: Any) -> Any:
        widths.append(kwargs["input_ids"].shape[1])
        return real_forward(*args, **kwargs)

    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    model.forward = spy  # type: ignore[method-assign]
    try:
        got = decode(model, enc.input_ids, enc.attention_mask, GenParams(max_new_tokens=NEW_TOKENS),
                                max_rows=3, prefill_rows=2)
    finally:
        del model.forward
    assert got == expected
    prefills = [w for w in widths if w > 1]
    assert sum(1 for w in prefills if w >= head_tokens) == 1, prefills  # the shared part, once
    assert sum(prefills) < sum(len(tokenizer(p).input_ids) for p in prompts) - 2 * head_tokens
