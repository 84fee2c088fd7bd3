"""A token Telegram rejects is named by its variable, never printed: the process's whole output is swept."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fakes.telegram_api import FakeTelegramServer

REPO = Path(__file__).resolve().parents[2]
SECRET = "AAF-unmistakableSecretPart0123456789abc"


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_a_rejected_token_is_never_printed(tmp_path: Path, level: str) -> None:
    """At DEBUG the operator gets the traceback, but never the token in it."""
    async with FakeTelegramServer(bot_token="123:ABC") as server:  # any other token gets 401 Unauthorized
        config = tmp_path / "membot.toml"
        config.write_text(
            f'[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[model]\nbackend = "fake"\n[logging]\nlevel = "{level}"\n'
            f'[telegram]\nbase_url = "{server.base_url}"\nbase_file_url = "{server.base_file_url}"\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_BOT_TOKEN", "MEMBOT_CONFIG")}
        env["TELEGRAM_BOT_TOKEN"] = f"777000111:{SECRET}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--config", str(config), "run", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = (out + err).decode(errors="replace")
    assert proc.returncode != 0
    assert SECRET not in text and "777000111" not in text, text[-2000:]
    assert "TELEGRAM_BOT_TOKEN" in text  # the person learns which setting to fix
    assert ("Traceback" in text) == (level == "DEBUG")
