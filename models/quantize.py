"""Optional int4 weight-only quantization for CPU decoding (`model.quantize = "int4"`).

Why: decoding one token at a time on a small CPU is bound by reading the weights. The embedded model ships
as a Q4_1 GGUF: every decoder Linear is stored as groups of 32 four-bit values `q` with a per-group scale `d`
and minimum `m` (w = d·q + m). De-quantizing to float32 (what the cache holds) makes every step read 8× the
bytes the file had. This module re-packs each such Linear into torch's CPU int4 kernel
(`aten._weight_int4pack_mm_for_cpu`, asymmetric groups along the input dimension), which is the same grid
(w = (q − 8)·scale + zero with zero = m + 8·d), so for the embedded model the re-packing is exact: the 4-bit
codes are recovered from the de-quantized weights as (w − min)/scale of each group. Any other float model can
be quantized the same way (plain min/max 4-bit groups), with the loss that implies.

What changes numerically: the kernel takes bfloat16 activations and bfloat16 scales/zeros (the GGUF has
float16 ones), so int4 output is close to, not identical with, float32 greedy output. llama.cpp runs the same
file with activations quantized to 8 bits, so this is, if anything, closer to the weights as published.
Greedy identity with `generate()` is a property of the float32 lean path, which is untouched: `quantize =
"none"` (the default) changes nothing.

Per-step costs kept low: decode steps (below `DENSE_ROWS` rows) use the int4 kernel; a prompt's prefill
de-quantizes each Linear to its exact Q4_1 float32 values on the fly and uses the float32 GEMM (about twice
as fast as the int4 kernel on AVX2); the output head (the 49k×576 embedding, 28M of the 135M parameters)
is kept in bfloat16, half of float32's ~18 ms a step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["QUANTIZE_MODES", "Bf16Linear", "Int4Linear", "QuantizeReport", "int4_available", "quantize_model"]

QUANTIZE_MODES = ("none", "int4")
GROUP_SIZE = 32  # the GGUF's Q4_1 groups
# Rows at or above which a Linear de-quantizes to float32 instead of using the int4 kernel: on a 2-core AVX2
# EPYC a 1536×576 layer breaks even near 64 rows and a prefill of a few hundred tokens is ~2× faster in
# float32, while decode steps of big batches are slower either way (64 rows: ~0.8× on the kernel, ~0.7×
# de-quantizing every step). So decode steps stay on the kernel and long prefills go the float32 way.
DENSE_ROWS = 128


def int4_available() -> bool:
    """True when this torch build has the CPU int4 weight-only kernels."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


class Int4Linear(nn.Module):
    """A Linear whose weight is stored as 4-bit groups; activations may be any float dtype."""

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        group_size: int,
        packed: torch.Tensor,
        scales_zeros: torch.Tensor,
        nibbles: torch.Tensor,
        scale: torch.Tensor,
        minimum: torch.Tensor,
        bias: torch.Tensor | None,
        dense_rows: int = DENSE_ROWS,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.dense_rows = dense_rows
        self.register_buffer("packed", packed, persistent=False)  # the kernel's own layout
        self.register_buffer("scales_zeros", scales_zeros, persistent=False)  # (K/G, N, 2) bfloat16
        self.register_buffer("nibbles", nibbles, persistent=False)  # (N, K/2) uint8, two codes a byte
        self.register_buffer("scale", scale, persistent=False)  # (N, K/G) float32
        self.register_buffer("minimum", minimum, persistent=False)  # (N, K/G) float32
        self.register_buffer("bias", bias, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, measure_error: bool = False) -> tuple[Int4Linear, float | None]:
        """Quantize `linear`; returns the module and (if asked) the largest absolute weight error introduced."""
        weight = linear.weight.detach().to(torch.float32)
        n, k = weight.shape
        group_size = GROUP_SIZE
        if not supports(n, k):
            raise ValueError(f"cannot pack a {n}×{k} weight in groups of {group_size}")
        groups = weight.reshape(n, k // group_size, group_size)
        minimum = groups.amin(dim=-1)
        scale = (groups.amax(dim=-1) - minimum) / 15.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: every code is 0
        codes = groups.sub(minimum[..., None]).div_(scale[..., None]).round_().clamp_(0, 15)
        error = None
        if measure_error:
            error = float(codes.mul(scale[..., None]).add_(minimum[..., None]).sub_(groups).abs_().amax())
        codes = codes.to(torch.uint8).reshape(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        scales_zeros = torch.stack([scale.t(), (minimum + 8.0 * scale).t()], dim=-1).to(torch.bfloat16).contiguous()
        nibbles = (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        module = cls(
            in_features=k, out_features=n, group_size=group_size, packed=packed, scales_zeros=scales_zeros,
            nibbles=nibbles, scale=scale.contiguous(), minimum=minimum.contiguous(), bias=bias,
        )
        return module, error

    def codes(self) -> torch.Tensor:
        """The 4-bit codes, one uint8 per weight, (out_features, in_features)."""
        return torch.stack([self.nibbles & 0x0F, self.nibbles >> 4], dim=-1).reshape(self.out_features, -1)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out_features, in_features) these codes stand for."""
        n, k, g = self.out_features, self.in_features, self.group_size
        codes = self.codes().reshape(n, k // g, g)
        return (codes.to(torch.float32) * self.scale[..., None] + self.minimum[..., None]).reshape(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] >= self.dense_rows:
            out = nn.functional.linear(rows.to(torch.float32), self.dequantize()).to(x.dtype)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows.to(torch.bfloat16), self.packed, self.group_size, self.scales_zeros
            ).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


class Bf16Linear(nn.Module):
    """A Linear with a bfloat16 copy of its weight (for the output head); returns the input's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # Not named `weight`: a later tie_weights() must not swap a float32 tensor in under us.
        self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16).contiguous(), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x.to(torch.bfloat16), self.weight_bf16).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)


def supports(out_features: int, in_features: int) -> bool:
    """The CPU kernel's shape rules: out_features a multiple of 16, in_features of the group size."""
    return out_features % 16 == 0 and in_features % GROUP_SIZE == 0


@dataclass
class QuantizeReport:
    mode: str
    quantized: int = 0
    skipped: list[str] = field(default_factory=list)
    head: str = "float32"
    max_abs_error: float | None = None  # measured only with quantize_model(..., measure_error=True)
    max_rel_error: float | None = None
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0

    def summary(self) -> str:
        error = "" if self.max_abs_error is None else (
            f", max weight error {self.max_abs_error:.2e} ({self.max_rel_error or 0:.1e} of the layer's largest weight)"
        )
        return (
            f"int4: {self.quantized} linear layers quantized ({len(self.skipped)} skipped), head {self.head}"
            f"{error}, weights {self.weight_bytes_before / 2**20:.0f} MiB -> {self.weight_bytes_after / 2**20:.0f} MiB"
        )


def _head_name(model: Any) -> str | None:
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    for name, module in model.named_modules():
        if module is head:
            return name
    return None


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantize_model(model: nn.Module, mode: str = "int4", *, measure_error: bool = False) -> QuantizeReport:
    """Swap the model's Linear layers for int4 ones in place (CPU, float models); returns what was done.

    Linears the kernel cannot take (shape rules) stay float32 and are listed in `skipped`. The output head
    is never made 4-bit (it is the model's Q8_0 embedding in the GGUF); it is kept in bfloat16, half the cost.
    """
    report = QuantizeReport(mode=mode)
    if measure_error:
        report.max_abs_error = report.max_rel_error = 0.0
    if mode == "none":
        return report
    if mode != "int4":
        raise ValueError(f"unknown quantization {mode!r}; expected one of {', '.join(QUANTIZE_MODES)}")
    if not int4_available():
        raise RuntimeError("this torch build has no CPU int4 kernels (aten._weight_int4pack_mm_for_cpu)")
    head_name = _head_name(model)
    targets = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != head_name
    ]
    for name, linear in targets:
        if linear.weight.device.type != "cpu":
            raise RuntimeError("int4 quantization runs on CPU models only")
        if not supports(linear.out_features, linear.in_features):
            report.skipped.append(name)
            continue
        new, error = Int4Linear.from_linear(linear, measure_error=measure_error)
        if error is not None:
            largest = float(linear.weight.detach().abs().amax()) or 1.0
            report.max_abs_error = max(report.max_abs_error, error)
            report.max_rel_error = max(report.max_rel_error, error / largest)
        report.weight_bytes_before += linear.weight.numel() * linear.weight.element_size()
        report.weight_bytes_after += sum(int(b.numel() * b.element_size()) for b in new.buffers())
        _set_module(model, name, new)
        report.quantized += 1
    if head_name and isinstance(old := model.get_submodule(head_name), nn.Linear):
        _set_module(model, head_name, Bf16Linear(old))
        report.head = "bfloat16"
    # What is left (the embedding, norms) may still point into the checkpoint's memory map, which keeps every
    # page quantizing read resident (~0.4 GB more RSS for the embedded model); copies let the mapping go.
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
    log.info("%s", report.summary())
    return report
