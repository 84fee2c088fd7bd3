"""Decode steps for Llama-shaped models without transformers' module machinery (the int4 CPU path).

Why: at batch 1 on a 2-core CPU, a decode step of the embedded model spends about a third of its time in
transformers' per-layer Python and small tensor operations (mask building, cache bookkeeping, rotary
re-computation, separate q/k/v and gate/up projections), not in reading weights. This stepper does the
same arithmetic as `LlamaDecoderLayer` with the least work per layer: one fused q/k/v and one fused
gate/up projection (concatenated int4 weights), `F.rms_norm`, rotary from a cached table, a preallocated
key/value cache written in place, `scaled_dot_product_attention` with grouped heads, and the output head
as 8-bit weights with one scale per row.

It is used only with `model.quantize = "int4"`, whose output is already close to, not identical with,
float32 (see models/quantize.py). The float32 lean loop stays greedy-identical to `generate()`. The prompt's
prefill still runs through the transformers model; its cache is copied in once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.quantize import Int4Linear

log = logging.getLogger(__name__)


def _int4_concat(parts: list[Int4Linear]) -> Int4Linear:
    """One Int4Linear computing the concatenated outputs of `parts` (same input, same group size)."""
    group = parts[0].group_size
    k = parts[0].in_features
    all_codes = torch.cat([p.codes() for p in parts])
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(all_codes.to(torch.int32), 1)
    return Int4Linear(
        in_features=k, out_features=all_codes.shape[0], group_size=group, packed=packed,
        scales_zeros=torch.cat([p.scales_zeros for p in parts], dim=1).contiguous(),
        nibbles=torch.cat([p.nibbles for p in parts]), scale=torch.cat([p.scale for p in parts]),
        minimum=torch.cat([p.minimum for p in parts]), bias=None, dense_rows=parts[0].dense_rows,
    )


class _Int8Head(nn.Module):
    """The output head as int8 rows with a bfloat16 scale each (half the bytes of bfloat16)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().to(torch.float32)
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.weight = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scale).float()


@dataclass
class _Layer:
    norm1: torch.Tensor
    qkv: Int4Linear
    o: Int4Linear
    norm2: torch.Tensor
    gate_up: Int4Linear
    down: Int4Linear


def supported(model: Any) -> str | None:
    """None when `model` can use the stepper, else why not (logged once by the backend)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", "") != "llama":
        return "not a Llama-architecture model"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "attention_bias", False) or getattr(
        config, "mlp_bias", False
    ):
        return "biases or an activation other than SiLU"
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return f"rope scaling {rope.get('rope_type') or rope.get('type')!r}"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "rotary_emb"):
        return "unexpected module layout"
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if not all(isinstance(m, Int4Linear) for m in linears):
            return "not every projection is int4"
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return "this torch build has no int8 weight kernel"
    return None


class FastLlamaStepper:
    """Built once per model; `start()` makes the per-generation state."""

    def __init__(self, model: Any) -> None:
        why = supported(model)
        if why is not None:
            raise ValueError(f"fast decode steps unavailable: {why}")
        config = model.config
        inner = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.eps = float(config.rms_norm_eps)
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight.detach().float()
        self.inv_freq = inner.rotary_emb.inv_freq.detach().float()
        self.rope_scale = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        head = model.get_output_embeddings()
        # A tied head is the embedding, which still holds the full-precision values.
        weight = self.embed if getattr(config, "tie_word_embeddings", False) else getattr(head, "weight", None)
        if weight is None:
            weight = head.weight_bf16  # models.quantize.Bf16Linear
        self.head = _Int8Head(weight)
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                norm1=layer.input_layernorm.weight.detach().float(),
                qkv=_int4_concat([attn.q_proj, attn.k_proj, attn.v_proj]),
                o=attn.o_proj,
                norm2=layer.post_attention_layernorm.weight.detach().float(),
                gate_up=_int4_concat([mlp.gate_proj, mlp.up_proj]),
                down=mlp.down_proj,
            ))
        self.scaling = self.head_dim ** -0.5

    def start(self, cache: Any, prompt_mask: torch.Tensor, max_new_tokens: int) -> _StepState:
        """Copy the prefill's cache into preallocated buffers with room for `max_new_tokens` more."""
        rows, prompt_len = prompt_mask.shape
        length = prompt_len + max_new_tokens
        keys, values = [], []
        for i in range(len(self.layers)):
            k, v = _layer_kv(cache, i)
            kb = k.new_zeros((rows, self.kv_heads, length, self.head_dim), dtype=torch.float32)
            vb = kb.clone()
            kb[:, :, :prompt_len] = k
            vb[:, :, :prompt_len] = v
            keys.append(kb)
            values.append(vb)
        valid = torch.zeros((rows, length), dtype=torch.bool)
        valid[:, :prompt_len] = prompt_mask.bool()
        return _StepState(self, keys, values, valid, prompt_len, padded=not bool(prompt_mask.all()))

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.rope_scale, emb.sin() * self.rope_scale


def _layer_kv(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    return cache.layers[index].keys, cache.layers[index].values


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class _StepState:
    def __init__(self, stepper: FastLlamaStepper, keys: list[torch.Tensor], values: list[torch.Tensor],
                 valid: torch.Tensor, t: int, padded: bool) -> None:
        self.s = stepper
        self.keys = keys
        self.values = values
        self.valid = valid
        self.t = t
        self.padded = padded

    def keep(self, rows_t: torch.Tensor) -> None:
        """Finished rows leave the batch."""
        self.keys = [k.index_select(0, rows_t) for k in self.keys]
        self.values = [v.index_select(0, rows_t) for v in self.values]
        self.valid = self.valid.index_select(0, rows_t)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (rows, vocab) for one new token per row at `positions`."""
        s, t = self.s, self.t
        rows = tokens.shape[0]
        if t >= self.valid.shape[1]:
            raise RuntimeError("the decode cache is full")
        h = F.embedding(tokens, s.embed).float()
        cos, sin = s._rotary(positions.reshape(-1))
        cos, sin = cos[:, None, :], sin[:, None, :]
        self.valid[:, t] = True
        mask = self.valid[:, None, None, : t + 1] if self.padded else None
        nq, nkv, hd = s.heads, s.kv_heads, s.head_dim
        for layer, kb, vb in zip(s.layers, self.keys, self.values, strict=True):
            x = F.rms_norm(h, (s.hidden,), layer.norm1, s.eps)
            qkv = layer.qkv(x)
            q = qkv[:, : nq * hd].view(rows, nq, hd)
            k = qkv[:, nq * hd : (nq + nkv) * hd].view(rows, nkv, hd)
            v = qkv[:, (nq + nkv) * hd :].view(rows, nkv, hd)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kb[:, :, t] = k
            vb[:, :, t] = v
            attn = F.scaled_dot_product_attention(
                q[:, :, None, :], kb[:, :, : t + 1], vb[:, :, : t + 1], attn_mask=mask,
                scale=s.scaling, enable_gqa=nkv != nq,
            )
            h = h + layer.o(attn.reshape(rows, nq * hd))
            x = F.rms_norm(h, (s.hidden,), layer.norm2, s.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        self.t = t + 1
        h = F.rms_norm(h, (s.hidden,), s.final_norm, s.eps)
        return s.head(h)
