"""The issue's "done when", as a person meets it: `membot run` in its own process, talking to the fake Bot API.

TELEGRAM_BOT_TOKEN is set and telegram.base_url points at the fake server; the bot answers a DM, a non-admin is
refused the admin commands, an admin runs /compress_now (the memory jobs), and the next session is grounded in
the memory written from the first one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

from bot.dispatcher import REFUSAL
from tests.fakes.telegram_api import FakeTelegramServer
from tests.telegram.conftest import ADMIN, USER, say

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, server: FakeTelegramServer) -> Path:
    path = tmp_path / "membot.toml"
    path.write_text(
        f"""
[storage]
path = "{tmp_path / 'membot.sqlite3'}"

[model]
backend = "fake"

[jobs]
interval = "1h"

[logging]
level = "INFO"

[telegram]
base_url = "{server.base_url}"
base_file_url = "{server.base_file_url}"
admin_ids = [{ADMIN}]
poll_timeout = 5
""",
        encoding="utf-8",
    )
    return path


def _query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


async def test_membot_run_answers_remembers_and_guards_admin_commands(
    fake_telegram: FakeTelegramServer, tmp_path: Path
) -> None:
    server = fake_telegram
    config = _config(tmp_path, server)
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_BOT_TOKEN", "MEMBOT_CONFIG")}
    env["TELEGRAM_BOT_TOKEN"] = server.bot_token
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--config", str(config), "run",
            cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )
    try:
        await server.wait_for_call("getUpdates", timeout=60)

        async def dm(user: int, text: str) -> str:
            send = (lambda: server.send_command(user, user, text)) if text.startswith("/") else (
                lambda: server.send_private_text(user, text, first_name="Ann"))
            return (await say(server, send, user)).params["text"]

        assert await dm(USER, "I keep bees on my roof in Lyon.") == "echo: I keep bees on my roof in Lyon."
        assert (await dm(USER, "/end")).startswith("Conversation ended")
        for command in ("/stats", "/compress_now", f"/forget_user {ADMIN}"):
            assert await dm(USER, command) == REFUSAL

        db = tmp_path / "membot.sqlite3"
        assert _query(db, "SELECT COUNT(*) FROM compressive_memories") == [(0,)]
        assert (await dm(ADMIN, "/compress_now")).startswith("Memory jobs ran:")
        (memory,) = _query(db, "SELECT profile || ' ' || events FROM compressive_memories")
        assert "bees" in memory[0] and "Lyon" in memory[0]
        assert "Users: 1" in await dm(ADMIN, "/stats")

        assert await dm(USER, "Do you remember my hobby?") == "echo: Do you remember my hobby?"
        assert _query(db, "SELECT COUNT(*) FROM sessions") == [(2,)]
        remembered = await dm(USER, "/memory")
        assert "Profile:" in remembered and "bees" in remembered
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    stderr = log_path.read_text(encoding="utf-8", errors="replace")
    assert code == 0, stderr
    assert "Telegram started" in stderr and "@membot_test_bot is polling" in stderr
    assert "Discord not started: the environment variable DISCORD_BOT_TOKEN is not set" in stderr
    assert server.bot_token not in stderr  # the token never reaches the logs
