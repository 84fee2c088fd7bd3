"""Shared fixtures: a settings object on a temp database, a manual clock, an app on the fake backend.

Also the `locomo_data` marker: tests of LoCoMo's real data file, which is not in this repository, run only
when MEMBOT_LOCOMO_DATA names it; otherwise they are deselected and the summary says so.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App
from bot.config import Settings, load_settings
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

REPO = Path(__file__).resolve().parents[1]
LOCOMO_DATA_ENV = "MEMBOT_LOCOMO_DATA"
_LOCOMO_DESELECTED = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"locomo_data: needs LoCoMo's real data file (locomo10.json) named by ${LOCOMO_DATA_ENV}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LOCOMO_DATA_ENV):
        return
    real = [item for item in items if item.get_closest_marker("locomo_data")]
    if real:
        config.hook.pytest_deselected(items=real)
        items[:] = [item for item in items if not item.get_closest_marker("locomo_data")]
        config.stash[_LOCOMO_DESELECTED] = len(real)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if n := config.stash.get(_LOCOMO_DESELECTED, 0):
        terminalreporter.write_line(
            f"{n} test(s) of LoCoMo's real data file deselected: set {LOCOMO_DATA_ENV}=path/to/locomo10.json "
            "(snap-research/LoCoMo, data/locomo10.json) to run them; tests/fixtures/locomo_mini.json covers "
            "the same rules in every run."
        )


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
