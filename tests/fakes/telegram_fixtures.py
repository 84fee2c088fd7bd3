"""Pytest fixtures and PTB wiring for the fake Telegram server.

Import into a conftest (``from tests.fakes.telegram_fixtures import fake_telegram``) or a
test module. Kept separate from ``telegram_api`` so the server module has no pytest
dependency and can run standalone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest_asyncio
from telegram.ext import Application, ApplicationBuilder

from tests.fakes.telegram_api import FakeTelegramServer

__all__ = ["fake_telegram", "ptb_builder", "running_polling"]


@pytest_asyncio.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegramServer]:
    """A started fake Bot API server, stopped after the test (function scope)."""
    async with FakeTelegramServer(bot_token="123:ABC", bot_username="membot_test_bot") as server:
        yield server


def ptb_builder(server: FakeTelegramServer) -> ApplicationBuilder:
    """ApplicationBuilder pointed at the fake (token, base_url, base_file_url set).

    Concurrent updates are on, as in production, so ordering bugs show up in tests too.
    """
    return (
        ApplicationBuilder()
        .token(server.bot_token)
        .base_url(server.base_url)
        .base_file_url(server.base_file_url)
        .concurrent_updates(True)
    )


@contextlib.asynccontextmanager
async def running_polling(
    application: Application,
    *,
    poll_timeout: int = 1,
    allowed_updates: Sequence[str] | None = None,
) -> AsyncIterator[Application]:
    """Run ``application`` with long polling for the duration of the block.

    Uses poll_interval=0 and a short long-poll timeout so shutdown is quick; the
    teardown order (updater.stop, stop, shutdown) is the one PTB requires to leave no
    pending tasks behind.
    """
    await application.initialize()
    try:
        await application.start()
        try:
            assert application.updater is not None, "build the Application with an Updater"
            await application.updater.start_polling(
                poll_interval=0, timeout=poll_timeout, allowed_updates=allowed_updates
            )
            try:
                yield application
            finally:
                await application.updater.stop()
        finally:
            await application.stop()
    finally:
        await application.shutdown()
