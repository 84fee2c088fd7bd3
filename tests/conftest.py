"""Shared fixtures: a settings object on a temp database, a manual clock, an app on the fake backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App
from bot.config import Settings, load_settings
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        overrides={
            "storage.path": str(tmp_path / "membot.sqlite3"),
            "model.backend": "fake",
            "sessions.inactivity_timeout": 60,
            "bot.name": "Membot",
        },
    )


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def app(settings: Settings, fake_backend: FakeBackend, clock: ManualClock) -> AsyncIterator[App]:
    application = await App.create(settings, backend=fake_backend, clock=clock)
    await application.start(schedule=False)
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture(scope="session")
def embedded_cache() -> Path:
    """The de-quantized embedded model, made once per machine under .cache/ (git-ignored)."""
    from models.embedded import ensure_cached

    folder, _ = ensure_cached(REPO / ".cache" / "test-models" / "SmolLM2-135M-Instruct")
    return folder
