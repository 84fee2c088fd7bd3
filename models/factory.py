"""Build the configured backend; imports of heavy libraries happen only for the backend chosen."""

from __future__ import annotations

from typing import Any

from models.base import BackendError, Engine


def build_backend(settings: Any) -> Engine:
    """`settings` is a bot.config.ModelSettings; typed loosely so models/ does not import bot/."""
    if settings.backend == "fake":
        from models.fake import FakeBackend

        # Tests and crash drills slow the fake down with name = "delay=SECONDS".
        delay = float(settings.name.split("=", 1)[1]) if settings.name and settings.name.startswith("delay=") else 0.0
        return FakeBackend(delay=delay)
    if settings.backend == "embedded":
        from models.embedded import load_embedded

        return load_embedded(
            cache_dir=settings.cache_dir, device=settings.device, dtype=settings.dtype, threads=settings.threads,
            quantize=settings.quantize,
        )
    if settings.backend == "transformers":
        from models.transformers_backend import TransformersBackend

        if not settings.name:
            raise BackendError("model.name is required with backend = \"transformers\"")
        return TransformersBackend.load(
            settings.name, gguf_file=settings.gguf_file, device=settings.device, dtype=settings.dtype,
            threads=settings.threads, quantize=settings.quantize,
        )
    if settings.backend == "openai":
        from models.openai_backend import OpenAIBackend

        return OpenAIBackend.from_settings(settings)
    raise BackendError(f"unknown backend {settings.backend!r}")
