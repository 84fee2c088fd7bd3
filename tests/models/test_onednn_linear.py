"""bfloat16 weights packed once for oneDNN (models/onednn_linear.py): the same numbers as F.linear, replies equal
to transformers' generate(), and plain layers kept wherever the numbers would change.

On a CPU without oneDNN bfloat16 support nothing is packed; the tests then check that nothing was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from models.base import GenParams, Prompt
from models.onednn_linear import PackedLinear, available, pack_linears
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_llama, build_tiny_t5


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "m")


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, PackedLinear))]


def test_torch_still_has_the_two_onednn_operators() -> None:
    """torch names them private (torch.compile's CPU weight freezing calls them): a rename fails here."""
    if torch.backends.mkldnn.is_available():
        assert hasattr(torch.ops.mkldnn, "_reorder_linear_weight"), "torch renamed mkldnn._reorder_linear_weight"
        assert hasattr(torch.ops.mkldnn, "_linear_pointwise"), "torch renamed mkldnn._linear_pointwise"


@pytest.mark.parametrize(("rows", "bias"), [(1, False), (7, True), (64, False)])
def test_a_packed_layer_computes_what_f_linear_computes(rows: int, bias: bool) -> None:
    if not available():
        return
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias).to(torch.bfloat16)
    x = torch.randn(2, rows, 96).to(torch.bfloat16)
    assert torch.equal(PackedLinear(linear)(x), F.linear(x, linear.weight, linear.bias))


def test_a_bfloat16_cpu_load_packs_every_linear_and_replies_as_generate(llama_dir: Path) -> None:
    backend = TransformersBackend.load(llama_dir, device="cpu", dtype="bfloat16")
    linears = _linears(backend.model)
    packed = [m for m in linears if isinstance(m, PackedLinear)]
    assert backend.packed_linears == len(packed) == (len(linears) if available() else 0)
    plain = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    reference = TransformersBackend(plain, backend.tokenizer, name="plain", device="cpu", decode="generate")
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    prompts = [Prompt(messages=(("user", "hello there " * n),)) for n in (1, 4, 9)]
    params = GenParams(max_new_tokens=16, repetition_penalty=1.1)
    assert backend.generate(prompts, params) == reference.generate(prompts, params)


def test_float32_and_int4_models_are_not_packed(llama_dir: Path) -> None:
    assert TransformersBackend.load(llama_dir, device="cpu", dtype="float32").packed_linears == 0
    int4 = TransformersBackend.load(llama_dir, device="cpu", dtype="auto", quantize="int4")
    assert int4.packed_linears == 0 and not any(isinstance(m, PackedLinear) for m in int4.model.modules())


def test_a_model_whose_output_would_change_keeps_its_plain_layers(llama_dir: Path) -> None:
    """With dropout active two forwards differ, as a packed product that rounded differently would: the check
    at load sees it and puts every plain layer back."""
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16, attention_dropout=0.9)
    model.train()
    before = list(model.named_modules())
    assert pack_linears(model) == 0
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in before]
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_a_model_the_check_cannot_run_keeps_its_plain_layers(tmp_path: Path) -> None:
    """A seq2seq model wants decoder inputs besides the probe's ids: packing is an optimisation, so the failed
    check leaves the model as loaded instead of failing the load."""
    t5 = AutoModelForSeq2SeqLM.from_pretrained(build_tiny_t5(tmp_path / "t5"), dtype=torch.bfloat16).eval()
    assert pack_linears(t5) == 0
    assert not any(isinstance(m, PackedLinear) for m in t5.modules())
