"""The int4 path's own decode steps (models/fast_llama.py) against transformers' forward of the same int4 model.

On the tiny LLaMA: one step's logits for a left-padded batch match the transformers forward of the whole
sequence (within the int8 head's rounding), rows leaving the batch keep their own cache, and the backend
builds the stepper only for int4 Llama models. On the embedded model (slow): greedy answers agree with the
transformers int4 path and stay sensible.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from models.base import GenParams, Prompt
from models.decode import cache_arg, decode, output_cache, prompt_position_ids
from models.fast_llama import FastLlamaStepper, supported
from models.quantize import int4_available, quantize_model
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_llama

pytestmark = pytest.mark.skipif(not int4_available(), reason="this torch build has no CPU int4 kernels")


@pytest.fixture(scope="module")
def int4_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None
    quantize_model(model, "int4")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer, folder


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=0.03, atol=0.03 * float(want.abs().max()))


def test_steps_match_the_transformers_forward(int4_llama: tuple[Any, Any, Path]) -> None:
    model, tokenizer, _ = int4_llama
    assert supported(model) is None
    stepper = FastLlamaStepper(model)
    enc = tokenizer(["Hello, how are you today? I am", "Why"], return_tensors="pt", padding=True)
    ids, mask = enc.input_ids, enc.attention_mask
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=prompt_position_ids(mask),
                    use_cache=True, **{cache_arg(model): DynamicCache(config=model.config)})
        state = stepper.start(output_cache(out), mask, max_new_tokens=3)
        seq, seq_mask = ids, mask
        nxt = out.logits[:, -1].argmax(-1)
        pos = prompt_position_ids(mask)[:, -1:] + 1
        for _ in range(3):
            got = state.step(nxt, pos)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)[:, None]], dim=1)
            want = model(input_ids=seq, attention_mask=seq_mask, position_ids=prompt_position_ids(seq_mask)).logits[:, -1]
            _close(got, want)
            nxt, pos = want.argmax(-1), pos + 1
        with pytest.raises(RuntimeError, match="full"):
            state.step(nxt, pos)


def test_a_row_leaving_keeps_the_others_right(int4_llama: tuple[Any, Any, Path]) -> None:
    model, tokenizer, _ = int4_llama
    stepper = FastLlamaStepper(model)
    prompts = ["Hello, how are you today? I am", "Why", "The weather in Lyon is"]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    params = GenParams(max_new_tokens=8)
    together = decode(model, enc.input_ids, enc.attention_mask, params, stepper=stepper)
    # Stop tokens make rows leave at different steps; each row's tokens must not depend on its neighbours.
    stops = (together[1][2],)
    mixed = decode(model, enc.input_ids, enc.attention_mask, params, stop_token_ids=stops, stepper=stepper)
    for i, prompt in enumerate(prompts):
        one = tokenizer([prompt], return_tensors="pt")
        alone = decode(model, one.input_ids, one.attention_mask, params, stop_token_ids=stops, stepper=stepper)[0]
        assert mixed[i] == alone
    assert len(mixed[1]) == 2  # row 1 stopped at its third token
    # A job batch is prefilled a few rows at a time (replies are served in between): the groups, each padded
    # to its own longest prompt, join one cache before the int4 steps start; the rows come out the same.
    chunked = decode(model, enc.input_ids, enc.attention_mask, params, stop_token_ids=stops, stepper=stepper,
                     prefill_rows=1, should_stop=lambda: False)
    assert chunked == mixed


def test_backend_uses_the_stepper_only_for_int4_llama(int4_llama: tuple[Any, Any, Path]) -> None:
    model, _, folder = int4_llama
    assert TransformersBackend.load(folder, device="cpu").stepper is None
    int4 = TransformersBackend.load(folder, device="cpu", quantize="int4")
    assert isinstance(int4.stepper, FastLlamaStepper)
    out = int4.generate([Prompt(text="Hello, how are"), Prompt(text="Why")], GenParams(max_new_tokens=5))
    assert [g.new_tokens for g in out] == [5, 5]
    plain = copy.deepcopy(model)
    plain.config.model_type = "gpt2"
    assert supported(plain) == "not a Llama-architecture model"


@pytest.mark.slow
def test_embedded_int4_steps_agree_with_transformers(embedded_cache: Path) -> None:
    backend = TransformersBackend.load(embedded_cache, device="cpu", quantize="int4")
    assert backend.stepper is not None
    prompts = [Prompt(messages=(("user", "What is the capital of France? Answer in one sentence."),)),
               Prompt(messages=(("user", "Name three fruits."),))]
    params = GenParams(max_new_tokens=24)
    fast = backend.generate(prompts, params)
    stepper, backend.stepper = backend.stepper, None
    slow = backend.generate(prompts, params)
    backend.stepper = stepper
    assert "Paris" in fast[0].text
    assert [g.text for g in fast] == [g.text for g in slow]
