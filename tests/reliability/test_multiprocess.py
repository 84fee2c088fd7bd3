"""Several `membot run` processes on one PostgreSQL database: Telegram webhook replicas behind one URL.

Three real bot processes serve the same bot in webhook mode, each on its own port; this test plays Telegram
and the load balancer in front of them: every update is posted to the next replica in turn, and posted again
to another one when a replica does not answer 200 (as Telegram redelivers). 50 people write 10 messages
each; midway one replica is SIGKILLed, and started again a little later. Then: every message is stored once
and answered once, and every session closed meanwhile is remembered once, by whichever process ran its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import aiohttp

from memory.store import Store
from tests.fakes.telegram_api import FakeTelegramServer

REPO = Path(__file__).resolve().parents[2]
TOKEN = "5151515151:AAH-multiprocess-SECRET"
SECRET = "multiprocess-webhook-secret"
PEOPLE, MESSAGES, REPLICAS = 50, 10, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, server: FakeTelegramServer, url: str, port: int) -> Path:
    path = tmp / f"replica-{port}.toml"
    path.write_text(
        f"""
[storage]
url = "{url}"
[model]
backend = "fake"
[sessions]
inactivity_timeout = "3s"
sweep_interval = "1s"
[jobs]
interval = "1s"
[telegram]
base_url = "{server.base_url}"
base_file_url = "{server.base_file_url}"
mode = "webhook"
webhook_url = "https://bot.example.invalid/hook"
webhook_listen = "127.0.0.1"
webhook_port = {port}
webhook_secret_env = "MEMBOT_TEST_WEBHOOK_SECRET"
""", encoding="utf-8")
    return path


class Replica:
    def __init__(self, tmp: Path, server: FakeTelegramServer, url: str) -> None:
        self.port = _free_port()
        self.config = _config(tmp, server, url, self.port)
        self.log = tmp / f"replica-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_BOT_TOKEN", "MEMBOT_CONFIG")}
        env.update(TELEGRAM_BOT_TOKEN=TOKEN, MEMBOT_TEST_WEBHOOK_SECRET=SECRET)
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "--config", str(self.config), "run",
                cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log)

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(f"http://127.0.0.1:{self.port}/hook", data=b"{}") as resp:
                    if resp.status == 403:  # listening (and checking the secret)
                        return
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        raise AssertionError(f"replica on {self.port} never listened: {self.log.read_text()[-3000:]}")

    async def kill_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _deliver(http: aiohttp.ClientSession, replicas: list[Replica], update: dict, first: int) -> None:
    """Telegram's side of a webhook: post until some replica answers 200."""
    for attempt in range(400):
        replica = replicas[(first + attempt) % len(replicas)]
        try:
            async with http.post(f"http://127.0.0.1:{replica.port}/hook", json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"update {update['update_id']} was never accepted")


async def test_three_processes_one_killed_every_message_once(tmp_path: Path, postgres_url: str) -> None:
    async with Store.at(postgres_url):  # the schema, before three processes race to make it
        pass
    async with FakeTelegramServer(bot_token=TOKEN, bot_username="membot_test_bot") as server, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        replicas = [Replica(tmp_path, server, postgres_url) for _ in range(REPLICAS)]
        await asyncio.gather(*(r.start() for r in replicas))
        try:
            await asyncio.gather(*(r.ready(http) for r in replicas))
            update_id = 1000
            texts: list[str] = []
            killing: asyncio.Task[None] | None = None
            for k in range(MESSAGES):
                if k == 4:  # mid-run, while this round's updates are being delivered and answered
                    killing = asyncio.create_task(replicas[1].kill_after(0.15))
                if k == 7:
                    assert killing is not None
                    await killing
                    await replicas[1].start()
                    await replicas[1].ready(http)
                batch = []
                for person in range(PEOPLE):
                    text = f"person {person} says number {k} zq{person}x{k}"
                    message = server.send_private_text(700_000 + person, text, first_name=f"P{person}")
                    update_id += 1
                    batch.append(_deliver(http, replicas, {"update_id": update_id, "message": message},
                                          first=update_id))
                    texts.append(text)
                await asyncio.gather(*batch)
                await asyncio.sleep(0.3)

            expected = {f"echo: {t}" for t in texts}
            for _ in range(600):  # every message answered (the killed one's kept updates by its successor)
                if expected <= set(server.sent_texts()):
                    break
                await asyncio.sleep(0.1)
            sent = Counter(t for t in server.sent_texts() if t in expected)
            other = [t for t in server.sent_texts() if t not in expected]
            if set(sent) != expected:
                async with Store.at(postgres_url) as store:
                    for t in sorted(expected - set(sent))[:3]:
                        rows = await store.fetchall(
                            "SELECT m.id, m.session_id, s.state, (SELECT COUNT(*) FROM messages b WHERE "
                            "b.reply_to = m.id), (SELECT MAX(b.platform_message_id) FROM messages b WHERE b.reply_to = m.id) FROM messages m JOIN sessions s ON s.id = m.session_id "
                            "WHERE m.text = ?", (t[6:],))
                        print("MISSING", t, [tuple(r) for r in rows])
            assert set(sent) == expected, (f"{len(expected - set(sent))} message(s) never answered: "
                                           f"{sorted(expected - set(sent))[:3]}; other replies: {other[:5]}")
            assert [t for t, n in sent.items() if n > 1] == [], "answered twice"

            async with Store.at(postgres_url) as store:
                for _ in range(300):  # sessions close after 3 s; the replicas' jobs remember them
                    left = await store.scalar(
                        "SELECT COUNT(*) FROM sessions s WHERE s.state = 'open' OR NOT EXISTS "
                        "(SELECT 1 FROM session_memories m WHERE m.session_id = s.id)")
                    if left == 0:
                        break
                    await asyncio.sleep(0.2)
                rows = await store.fetchall("SELECT text, COUNT(*) FROM messages WHERE author = 'user' GROUP BY text")
                stored = {str(r[0]): int(r[1]) for r in rows}
                assert set(stored) == set(texts) and set(stored.values()) == {1}
                assert left == 0, "a closed session was not remembered"
                per_session = await store.fetchall(
                    "SELECT session_id, COUNT(*) FROM session_memories GROUP BY session_id HAVING COUNT(*) > 1")
                assert per_session == []
                assert await store.scalar("SELECT COUNT(*) FROM sessions") >= PEOPLE
                assert await store.scalar("SELECT COUNT(*) FROM inbox") == 0
        finally:
            await asyncio.gather(*(r.stop() for r in replicas))
