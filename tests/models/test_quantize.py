"""Int4 weight-only quantization (models/quantize.py, `model.quantize = "int4"`).

On the tiny LLaMA: every Linear is re-packed, the packed codes stand for exactly the min/max 4-bit grid of
the original weights, and the quantized model's logits match a float32 model holding those de-quantized
weights (exactly on the prefill path, within bfloat16 tolerance on the decode-step kernel). On the embedded
model (slow): the GGUF's Q4_1 weights re-pack without any error, and the int4 model still answers sensibly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.config import ConfigError, load_settings
from models.base import BackendError, GenParams, Prompt
from models.decode import decode
from models.quantize import Bf16Linear, Int4Linear, int4_available, quantize_model
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_llama

pytestmark = pytest.mark.skipif(not int4_available(), reason="this torch build has no CPU int4 kernels")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None
    return model, AutoTokenizer.from_pretrained(folder), folder


def _reference_grid(weight: torch.Tensor, group: int = 32) -> torch.Tensor:
    """Asymmetric 4-bit groups along the input dimension, computed independently of models/quantize.py."""
    n, k = weight.shape
    g = weight.reshape(n, k // group, group)
    lo, hi = g.min(dim=-1, keepdim=True).values, g.max(dim=-1, keepdim=True).values
    step = (hi - lo) / 15
    step[step == 0] = 1
    return (torch.round((g - lo) / step).clamp(0, 15) * step + lo).reshape(n, k)


def _dequantized_reference(model: nn.Module) -> nn.Module:
    """The float32 model whose weights are exactly what the int4 codes stand for (the head in bfloat16, as
    quantize_model leaves it)."""
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            module.weight.data = _reference_grid(module.weight.data)
    ref.lm_head = Bf16Linear(model.lm_head)
    return ref


def test_every_linear_is_packed_and_stands_for_the_4_bit_grid(tiny_llama: tuple[Any, Any, Path]) -> None:
    model, _, _ = tiny_llama
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = copy.deepcopy(model)
    report = quantize_model(quantized, "int4", measure_error=True)
    linears = [n for n in originals if n != "lm_head"]
    assert report.quantized == len(linears) == 14 and not report.skipped
    assert report.head == "bfloat16" and isinstance(quantized.lm_head, Bf16Linear)
    assert report.weight_bytes_after < report.weight_bytes_before
    for name in linears:
        module = quantized.get_submodule(name)
        assert isinstance(module, Int4Linear)
        torch.testing.assert_close(module.dequantize(), _reference_grid(originals[name]), rtol=0, atol=1e-6)
    assert report.max_abs_error is not None and report.max_abs_error > 0  # random weights are not on a grid


def test_logits_match_the_dequantized_float32_model(tiny_llama: tuple[Any, Any, Path]) -> None:
    model, tokenizer, _ = tiny_llama
    quantized = copy.deepcopy(model)
    quantize_model(quantized, "int4")
    reference = _dequantized_reference(model)
    ids = tokenizer(["Hello, how are you today? I am fine, thank you."], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = reference(ids).logits
        # Decode-step path: few rows go through the int4 kernel on bfloat16 activations.
        got = quantized(ids).logits
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        # Prefill path: many rows de-quantize to float32, i.e. the reference computation exactly.
        for module in quantized.modules():
            if isinstance(module, Int4Linear):
                module.dense_rows = 1
        torch.testing.assert_close(quantized(ids).logits, want, rtol=1e-4, atol=1e-4)


def test_lean_decode_runs_on_the_int4_model(tiny_llama: tuple[Any, Any, Path]) -> None:
    model, tokenizer, _ = tiny_llama
    quantized = copy.deepcopy(model)
    quantize_model(quantized, "int4")
    reference = _dequantized_reference(model)
    tokenizer.padding_side = "left"
    enc = tokenizer(["Hello, how are you today? I am", "Why"], return_tensors="pt", padding=True)
    params = GenParams(max_new_tokens=6)
    got = decode(quantized, enc.input_ids, enc.attention_mask, params)
    want = decode(reference, enc.input_ids, enc.attention_mask, params)
    assert [len(r) for r in got] == [6, 6]
    assert [r[0] for r in got] == [r[0] for r in want]  # the first token comes from the exact prefill path


def test_backend_load_quantizes_and_none_changes_nothing(tiny_llama: tuple[Any, Any, Path]) -> None:
    _, _, folder = tiny_llama
    plain = TransformersBackend.load(folder, device="cpu")
    assert plain.quantization is None
    assert not any(isinstance(m, Int4Linear) for m in plain.model.modules())
    int4 = TransformersBackend.load(folder, device="cpu", quantize="int4")
    assert int4.quantization is not None and int4.quantization.quantized == 14
    out = int4.generate([Prompt(text="Hello, how are")], GenParams(max_new_tokens=4))
    assert out[0].new_tokens > 0


def test_quantize_setting_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nquantize = "int4"\n')
    assert load_settings(path).model.quantize == "int4"
    assert load_settings(None).model.quantize == "none"
    path.write_text('[model]\nquantize = "int3"\n')
    with pytest.raises(ConfigError, match=r"model\.quantize"):
        load_settings(path)


def test_unknown_mode_and_non_cpu_models_are_refused(tiny_llama: tuple[Any, Any, Path]) -> None:
    model, _, _ = tiny_llama
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_model(copy.deepcopy(model), "int3")
    meta = copy.deepcopy(model).to("meta")
    with pytest.raises(RuntimeError, match="CPU"):
        quantize_model(meta, "int4")


@pytest.mark.slow
def test_embedded_q4_1_weights_repack_exactly_and_answers_stay_sensible(embedded_cache: Path) -> None:
    backend = TransformersBackend.load(embedded_cache, device="cpu", dtype="float32")  # int4 computes in float32
    report = quantize_model(backend.model, "int4", measure_error=True)
    # Every decoder Linear of the GGUF is Q4_1 (groups of 32, scale and minimum): the codes are recovered exactly.
    assert report.quantized == 210 and not report.skipped
    assert report.max_rel_error is not None and report.max_rel_error < 1e-5
    prompt = Prompt(messages=(("user", "What is the capital of France? Answer in one sentence."),))
    answer = backend.generate([prompt], GenParams(max_new_tokens=24))[0].text
    assert "Paris" in answer


def test_backend_refuses_int4_off_cpu(tiny_llama: tuple[Any, Any, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, folder = tiny_llama
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: self)  # pretend: no real CUDA here
    with pytest.raises(BackendError, match="CPU only"):
        TransformersBackend.load(folder, device="cuda", quantize="int4")


def test_a_streamed_reply_takes_the_same_int4_path_as_one_not_streamed(
    tiny_llama: tuple[Any, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a streamed reply always went through transformers' generate(), so `quantize = "int4"` silently
    changed path (and speed) when streaming was on. Now both go through the own loop and its int4 steps."""
    _, _, folder = tiny_llama
    int4 = TransformersBackend.load(folder, device="cpu", quantize="int4")
    assert int4.stepper is not None and int4.capabilities.streaming

    def no_generate(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a decoder-only model's reply went through generate()")

    monkeypatch.setattr(int4.model, "generate", no_generate)
    steps: list[int] = []
    real_step = int4.stepper.start

    def counting_start(*args: Any, **kwargs: Any) -> Any:
        state = real_step(*args, **kwargs)
        step = state.step

        def counted(*a: Any, **k: Any) -> Any:
            steps.append(1)
            return step(*a, **k)

        state.step = counted
        return state

    monkeypatch.setattr(int4.stepper, "start", counting_start)
    prompt, params = Prompt(text="Hello, how are"), GenParams(max_new_tokens=8)
    plain = int4.generate([prompt], params)[0]
    plain_steps = len(steps)
    seen: list[str] = []
    streamed = int4.generate([prompt], params, on_text=seen.append)[0]
    assert plain_steps > 0 and len(steps) == 2 * plain_steps  # the int4 steps, the same number both times
    assert streamed.text == plain.text and seen and seen[-1] == plain.text
    assert all(plain.text.startswith(s.rstrip()) for s in seen)  # the text grew, never changed
