"""Fixtures for the Discord adapter tests: the real adapter on the shared app, driven by the harness.

`discord_harness` is a `DiscordHarness` around the adapter's own client (so `setup_hook`, the command
tree and the message handler are the production ones), already logged in and ready.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.app import App
from bot.discord_adapter import DiscordAdapter
from tests.fakes.discord_payloads import DiscordHarness


@pytest.fixture
async def discord_adapter(app: App) -> DiscordAdapter:
    return DiscordAdapter(app, "fake-token")


@pytest.fixture
async def discord_harness(discord_adapter: DiscordAdapter) -> AsyncIterator[DiscordHarness]:
    harness = DiscordHarness(discord_adapter.client)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.close()
