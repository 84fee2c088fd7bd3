"""`membot run` as a real child process, for the tests (and benchmarks) that run several bot processes on one
database: started with its own config and environment, its stderr appended to a log file, stopped with
SIGTERM (the way an operator stops it) or killed with SIGKILL (the way a crash does)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
CLEARED = ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "MEMBOT_CONFIG")


class MembotRun:
    """One `python -m bot.cli --config CONFIG run`; `env` adds to this process's environment, without the
    platforms' token variables (each test names the ones its processes use). `program` replaces `-m bot.cli`
    with another way to reach the same CLI (a benchmark's launcher that patches something first)."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str],
                 program: Sequence[str] = ("-m", "bot.cli")) -> None:
        self.config = config
        self.log = log
        self.program = tuple(program)
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED} | {"PYTHONPATH": str(REPO), **env}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, *self.program, "--config", str(self.config), "run",
                cwd=REPO, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=log)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class WebhookReplica(MembotRun):
    """`membot run` in Telegram webhook mode, listening on `port` of 127.0.0.1 (its config says so)."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str], port: int,
                 program: Sequence[str] = ("-m", "bot.cli")) -> None:
        super().__init__(config, log, env, program)
        self.port = port

    async def ready(self, http: aiohttp.ClientSession, tries: int = 600) -> None:
        """Wait until it listens: a post without the secret is refused (403) once the webhook is up."""
        for _ in range(tries):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(f"http://127.0.0.1:{self.port}/hook", data=b"{}") as resp:
                    if resp.status == 403:
                        return
            if not self.running:
                raise RuntimeError(f"the replica on {self.port} exited: {self.tail()}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the replica on {self.port} never listened: {self.tail()}")


async def post_update(http: aiohttp.ClientSession, ports: Sequence[int], update: dict[str, Any], secret: str,
                      start: int = 0) -> None:
    """Telegram's side of a webhook behind a load balancer: post `update` to the replicas' ports in turn,
    from `start`, until one answers 200 (Telegram posts again while it gets no 200)."""
    for attempt in range(400):
        port = ports[(start + attempt) % len(ports)]
        try:
            async with http.post(f"http://127.0.0.1:{port}/hook", json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": secret}) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"update {update['update_id']} was never accepted")
