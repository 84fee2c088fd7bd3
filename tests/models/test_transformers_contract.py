"""What the decode loops assume about transformers' internals (issue #17 item 4).

models/kv_cache.py subclasses `DynamicLayer`, models/decode.py builds a
`DynamicCache` from the config, hand it to the forward under its current name, select and append batch rows,
and models/fast_llama.py reads the Llama modules by name. None of that is public API: the forward's cache
argument was already renamed once inside 5.x (`past_key_values` → `cache`, 5.24). Several of these would not
fail loudly if they changed: the cache swap would quietly do nothing (decoding slower), or the fast path
would quietly be skipped; the GPU path relies on generate() compiling a static cache on CUDA by itself.
Each test here names what relies on it and what to change, so that the next renaming
fails here, with a clear message, on the transformers version CI resolves (`transformers>=5.17,<6` in
pyproject.toml; these pass on 5.25.0, and the GPU run used 5.17.0).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from models.decode import _new_dynamic_cache, accepts_logits_to_keep, cache_arg, output_cache
from models.kv_cache import GrowingLayer
from tests.tiny_models import build_tiny_llama


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path_factory.mktemp("llama"))).eval()


def test_dynamic_layer_has_what_the_growing_layer_overrides() -> None:
    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    missing = [a for a in ("is_initialized", "lazy_initialization", "update", "get_seq_length", "keys", "values")
               if not hasattr(layer, a)]
    assert not missing, f"transformers' DynamicLayer lost {missing}: models/kv_cache.py GrowingLayer overrides them"
    first = list(inspect.signature(DynamicLayer.update).parameters)[1:3]
    assert first == ["key_states", "value_states"], f"DynamicLayer.update takes {first} now (models/kv_cache.py)"
    assert layer.is_initialized is False, "a new DynamicLayer must start uninitialised (use_growing_layers)"


def test_the_cache_built_from_the_config_grows_in_place(llama: Any) -> None:
    cache = _new_dynamic_cache(llama)
    assert cache is not None, "DynamicCache(config=...) failed: models/decode.py falls back to the model's cache"
    kinds = {type(layer).__name__ for layer in cache.layers}
    assert kinds == {"GrowingLayer"}, (
        f"the cache's layers are {kinds}: models/kv_cache.py use_growing_layers swaps only layers whose type is "
        "DynamicLayer and that are not initialised; transformers changed how DynamicCache builds its layers")
    assert hasattr(cache, "batch_select_indices"), "DynamicCache.batch_select_indices is gone (decode row removal)"


def test_the_forward_takes_and_returns_the_cache_under_a_known_name(llama: Any) -> None:
    params = inspect.signature(llama.forward).parameters
    assert "cache" in params or "past_key_values" in params, (
        "the forward takes its key/value cache under neither `cache` nor `past_key_values`: "
        "update models/decode.py cache_arg and output_cache")
    assert accepts_logits_to_keep(llama), "`logits_to_keep` is gone from the forward (models/decode.py prefill)"
    cache = _new_dynamic_cache(llama)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        out = llama(input_ids=ids, use_cache=True, return_dict=True, logits_to_keep=1, **{cache_arg(llama): cache})
        returned = output_cache(out)
        assert returned is cache, "the forward did not fill the cache it was given (models/decode.py)"
        assert out.logits.shape[1] == 1, "logits_to_keep=1 no longer returns the last position only"
        layer = returned.layers[0]
        assert isinstance(layer, GrowingLayer) and layer.get_seq_length() == 4 and layer.keys.shape[-2] == 4
        step = llama(input_ids=torch.tensor([[9]]), use_cache=True, return_dict=True,
                     **{cache_arg(llama): returned})
        assert output_cache(step).layers[0].get_seq_length() == 5, "a decode step did not append to the cache"
    returned.batch_select_indices(torch.tensor([0]))
    layer.keys = torch.cat([layer.keys, layer.keys])  # models/decode.py's _Batch assigns whole tensors
    assert layer.keys.shape[0] == 2


def test_the_llama_modules_the_int4_stepper_reads(llama: Any) -> None:
    inner = llama.model
    names = ["embed_tokens.weight", "norm.weight", "rotary_emb.inv_freq"]
    block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj", "input_layernorm.weight", "post_attention_layernorm.weight"]

    def has(obj: Any, dotted: str) -> bool:
        for part in dotted.split("."):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True

    missing = [n for n in names if not has(inner, n)] + [n for n in block if not has(inner.layers[0], n)]
    assert not missing, f"LlamaForCausalLM no longer has {missing}: models/fast_llama.py FastLlamaStepper reads them"
    assert llama.get_output_embeddings() is not None



def test_generate_compiles_a_static_cache_on_cuda_by_itself(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bot's GPU path (models/transformers_backend.py: pick_decode "static") passes only
    `cache_implementation="static"` and relies on transformers to compile the decode steps on CUDA. If that
    stops being automatic, the GPU path silently loses its 5-7x (docs/benchmarks.md "GPU"): pass a
    `compile_config` there instead."""
    from types import SimpleNamespace

    from transformers import GenerationConfig, StaticCache

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)  # the check sets it when it would compile
    cache = StaticCache(config=llama.config, max_cache_len=16)
    on_cuda = SimpleNamespace(device=torch.device("cuda"), hf_quantizer=None, config=llama.config)
    criteria = type(llama)._valid_auto_compile_criteria
    assert criteria(on_cuda, {"cache": cache}, GenerationConfig()), (
        "transformers no longer compiles generate() with a static cache on CUDA by default")
    on_cpu = SimpleNamespace(device=torch.device("cpu"), hf_quantizer=None, config=llama.config)
    assert not criteria(on_cpu, {"cache": cache}, GenerationConfig())
