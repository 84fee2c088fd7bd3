"""`membot run`: start every platform whose token variable is set, sharing one app (store + model)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
from typing import Any

from bot.config import Settings
from bot.text import redact, redact_in_logs
from memory.sqlite_store import RunLock

log = logging.getLogger(__name__)


def _token(env_name: str) -> str | None:
    value = os.environ.get(env_name, "").strip()
    return value or None


async def run_platforms(settings: Settings) -> int:
    platforms = (("telegram", settings.telegram.token_env), ("discord", settings.discord.token_env))
    tokens = {platform: _token(env_name) for platform, env_name in platforms}
    for token in tokens.values():
        if token:
            redact_in_logs(token)  # from the moment it is read: every log line and error message
    # SQLite: first, before the model loads, a second bot on the same file stops at once, with one line.
    # PostgreSQL serves several bot processes: no lock.
    lock = RunLock(settings.storage.resolved_path()) if settings.storage.url is None else None
    if lock is not None:
        lock.acquire()
    try:
        plans: list[tuple[str, str]] = []  # (platform, token)
        for platform, env_name in platforms:
            token = tokens[platform]
            if token:
                plans.append((platform, token))
            else:
                log.warning("%s not started: the environment variable %s is not set", platform.title(), env_name)
        if not plans:
            print(
                f"membot: no platform to run: set {settings.telegram.token_env} and/or "
                f"{settings.discord.token_env} (or use `membot chat` in the terminal)"
            )
            return 2
        return await _run(settings, plans)
    finally:
        if lock is not None:
            lock.release()


async def _run(settings: Settings, plans: list[tuple[str, str]]) -> int:
    from bot.app import App

    app = await App.create(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    adapters: list[Any] = []
    try:
        await app.start()
        starters = [asyncio.create_task(_keep_starting(platform, app, token, stop, adapters),
                                        name=f"start-{platform}") for platform, token in plans]
        stopped = asyncio.create_task(stop.wait())
        waiting: set[asyncio.Task[Any]] = {stopped, *starters}
        try:
            while stopped in waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopped}:
                    task.result()  # a platform that cannot start for good (a rejected token) stops membot
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        return 0
    finally:
        for adapter in reversed(adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("error while stopping an adapter")
        await app.close()


RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)  # seconds; then every 300 s


def unreachable(exc: BaseException) -> bool:
    """A network failure at start (no route, refused, DNS, timeout): worth waiting for. A rejected token or a
    configuration error is not."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    # By name: platform libraries (python-telegram-bot, httpx, aiohttp) are imported by the adapters only.
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("telegram") and cls.__name__ == "NetworkError":  # TimedOut is one too
            return True
        if cls.__module__.startswith(("httpx", "aiohttp")) and ("Connect" in cls.__name__ or "Timeout" in cls.__name__):
            return True
    return False


async def _keep_starting(platform: str, app: object, token: str, stop: asyncio.Event, started: list[Any]) -> None:
    """Start one platform, retrying with back-off while it is unreachable; the others run meanwhile."""
    for attempt in itertools.count():
        adapter = _build_adapter(platform, app, token)
        try:
            await adapter.start()  # type: ignore[attr-defined]
        except Exception as exc:
            if not unreachable(exc):
                raise
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            log.warning("%s is unreachable (%s); still waiting for it, next try in %.0f s", platform.title(),
                        redact(str(exc)) or type(exc).__name__, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                continue
        started.append(adapter)
        log.info("%s started", platform.title())
        return


def _build_adapter(platform: str, app: object, token: str) -> object:
    if platform == "telegram":
        from bot.telegram_adapter import TelegramAdapter

        return TelegramAdapter(app, token)  # type: ignore[arg-type]
    from bot.discord_adapter import DiscordAdapter

    return DiscordAdapter(app, token)  # type: ignore[arg-type]
