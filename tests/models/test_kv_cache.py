"""The in-place growing cache layer holds exactly what transformers' concatenating layer holds."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from models.kv_cache import GROW, GrowingLayer, use_growing_layers


def test_same_contents_as_dynamic_layer_across_reallocations() -> None:
    torch.manual_seed(0)
    plain, growing = DynamicLayer(), GrowingLayer()
    steps = [torch.randn(3, 2, 40, 8)] + [torch.randn(3, 2, 1, 8) for _ in range(GROW + 30)]
    for chunk in steps:
        k_plain, v_plain = plain.update(chunk, chunk * 2)
        k_grow, v_grow = growing.update(chunk, chunk * 2)
        assert torch.equal(k_plain, k_grow) and torch.equal(v_plain, v_grow)
    assert growing.get_seq_length() == plain.get_seq_length() == 40 + GROW + 30


def test_rows_selected_and_replaced_then_grown() -> None:
    torch.manual_seed(1)
    plain, growing = DynamicLayer(), GrowingLayer()
    first = torch.randn(4, 2, 10, 8)
    plain.update(first, first)
    growing.update(first, first)
    rows = torch.tensor([0, 2])
    plain.batch_select_indices(rows)
    growing.batch_select_indices(rows)
    # Replaced whole, keys first and then values (as continuous batching trims leading columns).
    for layer in (plain, growing):
        layer.keys = layer.keys[:, :, 3:]
        layer.values = layer.values[:, :, 3:]
    step = torch.randn(2, 2, 1, 8)
    assert all(torch.equal(a, b) for a, b in zip(plain.update(step, step), growing.update(step, step), strict=True))
    assert growing.get_seq_length() == 8


def test_only_fresh_plain_layers_are_swapped() -> None:
    cache = use_growing_layers(DynamicCache(config=_config()))
    assert cache.layers and all(isinstance(layer, GrowingLayer) for layer in cache.layers)


def _config():  # a two-layer Llama config is enough for DynamicCache(config=...)
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=32, vocab_size=50)
