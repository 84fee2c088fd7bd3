"""Linear layers of a bfloat16 model on the CPU with their weights packed once for oneDNN.

Why: a bfloat16 ``F.linear`` on the CPU runs oneDNN's matrix product, which first re-lays the weight out in
its blocked format, on every call. For one row at a time (each decode step of a reply) that copy costs as
much as the product itself: the embedded model's output head (49,152 x 576) took 3.5 ms a step unpacked and
1.9 ms packed, a 1,536 x 576 projection 70 us and 34 us (docs/benchmarks.md, "Packed bfloat16 weights").
Packing each weight once at load, as torch.compile's CPU weight freezing does with the same two oneDNN
operators, leaves the arithmetic unchanged: the packed product is bit-identical to ``F.linear``, which
:func:`pack_linears` checks on the model's own forward before keeping it. Float32 models are left alone
(their ``F.linear`` is MKL's, a different kernel, so packing would change the numbers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Token ids for the load-time checks (also models/step_threads.py): in every vocabulary, more than one row.
PROBE_IDS = (1, 5, 9, 13, 2, 7, 11, 3)


def available() -> bool:
    """oneDNN with bfloat16 support and the two operators this module calls (torch names them private)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
        and bool(ops._is_mkldnn_bf16_supported())
    )


class PackedLinear(nn.Module):
    """``nn.Linear``'s product with the weight in oneDNN's layout, packed once (bfloat16, CPU)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # An opaque oneDNN tensor, not a parameter: nothing reads it but forward.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: Any) -> int:
    """Replace the bfloat16 ``nn.Linear`` layers of a decoder-only CPU model by :class:`PackedLinear`; return
    how many. Undone (and 0 returned) unless the model's logits for a probe prompt stay bit-identical, so a
    CPU or a model where oneDNN's packed product differs keeps plain ``F.linear``."""
    if not available():
        return 0
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16 and child.weight.device.type == "cpu"
    ]
    if not swaps:
        return 0
    probe = torch.tensor([PROBE_IDS])
    why = "they change this model's output here"
    with torch.inference_mode():
        try:  # an optimisation: whatever fails here (a model wanting other inputs...) keeps the plain layers
            before = model(input_ids=probe).logits
            for parent, name, child in swaps:
                setattr(parent, name, PackedLinear(child))
            if torch.equal(model(input_ids=probe).logits, before):
                why = ""
        except Exception as exc:
            why = f"the check failed: {exc}"
    if why:
        for parent, name, child in swaps:
            setattr(parent, name, child)
        log.info("bfloat16 weights not packed for oneDNN (%s); keeping plain linear layers", why)
        return 0
    count = len(swaps)
    del swaps, parent, name, child  # the loop's names too: nothing may keep a plain weight alive
    _return_freed_memory()
    return count


def _return_freed_memory() -> None:
    """Hand the plain weights' freed pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    The packed copies are allocated while the plain weights are still alive, so the plain ones are freed from
    the middle of the heap, where glibc keeps them: the embedded model's process stayed 906 MiB resident
    against 648 MiB unpacked; trimmed it is 703 MiB (the output head's packed copy, 56 MB, is the rest:
    its plain weight is also the input embedding)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)
