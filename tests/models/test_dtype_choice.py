"""`model.dtype = "auto"` follows the CPU (issue #17 item 8): bfloat16 where the CPU has bfloat16 instructions
(AVX512-BF16, AMX), float32 where it would be emulated, float32 with int4 (its kernels compute in float32), an
explicit dtype always wins, and the choice is said when the model loads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from models.transformers_backend import TransformersBackend, cpu_bf16_flags, pick_dtype
from tests.tiny_models import build_tiny_llama

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni\nprocessor\t: 1\n"
SAPPHIRE = "flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8 avx512_bf16\n"
OLDER = "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"


def test_the_cpus_bfloat16_instructions_are_read_from_its_flags() -> None:
    assert cpu_bf16_flags(EPYC) == ["avx512_bf16"]
    assert cpu_bf16_flags(SAPPHIRE) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(OLDER) == [] and cpu_bf16_flags("") == []


@pytest.mark.parametrize("cpuinfo,quantize,device,expected", [
    (EPYC, "none", "cpu", torch.bfloat16),
    (SAPPHIRE, "none", "cpu", torch.bfloat16),
    (OLDER, "none", "cpu", torch.float32),
    (EPYC, "int4", "cpu", torch.float32),
    (OLDER, "none", "cuda", torch.bfloat16),
])
def test_auto_follows_the_cpu(cpuinfo: str, quantize: str, device: str, expected: Any) -> None:
    dtype, why = pick_dtype("auto", device, quantize, cpuinfo)
    assert dtype == expected and why.startswith("auto")


def test_an_explicit_dtype_wins() -> None:
    assert pick_dtype("float32", "cpu", "none", EPYC) == (torch.float32, "model.dtype")
    assert pick_dtype("bfloat16", "cpu", "none", OLDER) == (torch.bfloat16, "model.dtype")


def test_the_choice_is_said_at_load(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_tiny_llama(tmp_path)
    monkeypatch.setattr("models.transformers_backend.cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"])
    with caplog.at_level(logging.INFO, logger="models.transformers_backend"):
        backend = TransformersBackend.load(folder, device="cpu")
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    assert "bfloat16 (auto: this CPU has avx512_bf16)" in caplog.text
    monkeypatch.setattr("models.transformers_backend.cpu_bf16_flags", lambda cpuinfo=None: [])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models.transformers_backend"):
        backend = TransformersBackend.load(folder, device="cpu")
    assert next(backend.model.parameters()).dtype == torch.float32
    assert "float32 (auto: this CPU has no bfloat16 instructions)" in caplog.text
