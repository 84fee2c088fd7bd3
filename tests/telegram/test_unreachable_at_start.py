"""Telegram unreachable when `membot run` starts: it says which platform it waits for, retries with back-off,
and answers once the Bot API is there; nothing exits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.fakes.telegram_api import FakeTelegramServer
from tests.ports import free_port
from tests.telegram.conftest import USER, say

REPO = Path(__file__).resolve().parents[2]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


async def _wait_for(path: Path, text: str, seconds: float) -> str:
    for _ in range(int(seconds * 10)):
        content = _read(path)
        if text in content:
            return content
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log:\n{_read(path)[-3000:]}")


async def test_an_unreachable_platform_is_waited_for_not_fatal(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    config = tmp_path / "membot.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[model]\nbackend = "fake"\n[logging]\nlevel = "INFO"\n'
        f'[telegram]\nbase_url = "http://127.0.0.1:{port}/bot"\nbase_file_url = "http://127.0.0.1:{port}/file/bot"\n'
        "poll_timeout = 1\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_BOT_TOKEN", "MEMBOT_CONFIG")}
    env["TELEGRAM_BOT_TOKEN"] = "123:ABC"
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--config", str(config), "run", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )
    try:
        waiting = await _wait_for(log, "Telegram is unreachable", 60)
        assert "still waiting for it, next try in" in waiting and proc.returncode is None
        async with FakeTelegramServer(bot_token="123:ABC", port=port) as server:
            await server.wait_for_call("getUpdates", timeout=60)
            reply = await say(server, lambda: server.send_private_text(USER, "hello again"), USER)
            assert reply.params["text"] == "echo: hello again"
            await _wait_for(log, "Telegram started", 10)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, _read(log)[-3000:]
    assert "123:ABC" not in _read(log)
