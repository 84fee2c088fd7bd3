"""Fixtures for the Telegram adapter tests: the real PTB Application, over HTTP, against the fake Bot API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bot.app import App
from bot.config import TelegramSettings
from bot.telegram_adapter import TelegramAdapter
from tests.fakes import telegram_fixtures
from tests.fakes.telegram_api import ApiCall, FakeTelegramServer

fake_telegram = telegram_fixtures.fake_telegram

USER = 4242  # an ordinary person
OTHER = 5151  # another person
ADMIN = 1001  # listed in telegram.admin_ids
GROUP = -1001234567890

StartBot = Callable[..., Awaitable[TelegramAdapter]]


@pytest.fixture
async def start_bot(fake_telegram: FakeTelegramServer, app: App) -> AsyncIterator[StartBot]:
    """`await start_bot(**telegram_settings)`: the adapter on `app`, polling the fake; stopped after the test."""
    started: list[TelegramAdapter] = []

    async def start(**overrides: Any) -> TelegramAdapter:
        values: dict[str, Any] = {
            "base_url": fake_telegram.base_url, "base_file_url": fake_telegram.base_file_url,
            "admin_ids": [ADMIN], "poll_timeout": 5,
        }
        values.update(overrides)
        app.settings.telegram = TelegramSettings(**values)
        adapter = TelegramAdapter(app, fake_telegram.bot_token)
        await adapter.start()
        started.append(adapter)
        return adapter

    try:
        yield start
    finally:
        for adapter in started:
            await adapter.stop()


@pytest.fixture
async def bot(start_bot: StartBot) -> TelegramAdapter:
    """The adapter with the default settings (polling, no streaming, ADMIN as the admin)."""
    return await start_bot()


async def say(server: FakeTelegramServer, send: Callable[[], object], chat_id: int, *,
              method: str = "sendMessage", timeout: float = 10) -> ApiCall:  # noqa: ASYNC109
    """Do `send()` (queue an update) and return the bot's answer to `chat_id`."""
    mark = len(server.calls)
    send()
    return await server.wait_for_call(
        method, lambda c: str(c.params.get("chat_id")) == str(chat_id) and c.ok, timeout, start=mark, done=True,
    )
