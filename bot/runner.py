"""`membot run`: start every platform whose token variable is set, sharing one app (store + model)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from bot.config import Settings
from bot.text import redact_in_logs

log = logging.getLogger(__name__)


def _token(env_name: str) -> str | None:
    value = os.environ.get(env_name, "").strip()
    return value or None


async def run_platforms(settings: Settings) -> int:
    from bot.app import App

    plans: list[tuple[str, str]] = []
    for platform, env_name in (("telegram", settings.telegram.token_env), ("discord", settings.discord.token_env)):
        if _token(env_name):
            redact_in_logs(_token(env_name))  # from the moment it is read: every log line and error message
            plans.append((platform, env_name))
        else:
            log.warning("%s not started: the environment variable %s is not set", platform.title(), env_name)
    if not plans:
        print(
            f"membot: no platform to run: set {settings.telegram.token_env} and/or {settings.discord.token_env} "
            "(or use `membot chat` in the terminal)"
        )
        return 2
    app = await App.create(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    adapters = []
    try:
        await app.start()
        for platform, env_name in plans:
            adapter = _build_adapter(platform, app, _token(env_name) or "")
            await adapter.start()
            adapters.append(adapter)
            log.info("%s started", platform.title())
        await stop.wait()
        return 0
    finally:
        for adapter in reversed(adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("error while stopping an adapter")
        await app.close()


def _build_adapter(platform: str, app: object, token: str) -> object:
    if platform == "telegram":
        from bot.telegram_adapter import TelegramAdapter

        return TelegramAdapter(app, token)  # type: ignore[arg-type]
    from bot.discord_adapter import DiscordAdapter

    return DiscordAdapter(app, token)  # type: ignore[arg-type]
