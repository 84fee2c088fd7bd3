"""Shared fixtures: a settings object on a temp database, a manual clock, an app on the fake backend.

The storage suite (modules marked `backends`) runs on both backends: its tests get `backend` as
"sqlite" and as "postgresql", and `settings` and `store` follow it; PostgreSQL is a throwaway cluster
(tests/postgres_server.py) with a new database for each test.

Also the `locomo_data` marker: tests of LoCoMo's real data file, which is not in this repository, run only
when MEMBOT_LOCOMO_DATA names it; otherwise they are deselected and the summary says so.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.app import App
from bot.config import Settings, load_settings
from memory.store import Store
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock
from tests.postgres_server import REQUIRED_ENV, Cluster, binaries

REPO = Path(__file__).resolve().parents[1]
LOCOMO_DATA_ENV = "MEMBOT_LOCOMO_DATA"
_LOCOMO_DESELECTED = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"locomo_data: needs LoCoMo's real data file (locomo10.json) named by ${LOCOMO_DATA_ENV}"
    )
    config.addinivalue_line("markers", "backends: the storage suite, run on SQLite and on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("backends") and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    bindir = binaries()
    if bindir is None:
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(f"{REQUIRED_ENV}=required but PostgreSQL's initdb and pg_ctl were not found")
        pytest.skip("PostgreSQL is not installed (no initdb): the PostgreSQL half of the storage suite is skipped")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


_databases = itertools.count(1)


@pytest.fixture
async def postgres_url(postgres_cluster: Cluster) -> str:
    """A new, empty database on the test cluster."""
    import asyncpg

    name = f"t{os.getpid()}_{next(_databases)}"
    conn = await asyncpg.connect(postgres_cluster.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return postgres_cluster.url(name)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" unless the module is marked `backends` (then both, one after the other)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def storage_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The database the test's store opens: a SQLite file, or a new PostgreSQL database."""
    if backend == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "membot.sqlite3")


@pytest.fixture
async def store(storage_target: str) -> AsyncIterator[Store]:
    opened = await Store.open(storage_target)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def settings(storage_target: str, backend: str) -> Settings:
    where = {"storage.url": storage_target} if backend == "postgresql" else {"storage.path": storage_target}
    return load_settings(
        None,
        overrides={
            **where,
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
