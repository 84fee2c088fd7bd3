"""Several `membot run` processes on one PostgreSQL database: Telegram webhook replicas behind one URL.

Three real bot processes serve the same bot in webhook mode, each on its own port; this test plays Telegram
and the load balancer in front of them: every update is posted to the next replica in turn, and posted again
to another one when a replica does not answer 200 (as Telegram redelivers). 50 people write 10 messages
each; midway one replica is SIGKILLed, and started again a little later. Then: every message is stored once
and answered once, and every session closed meanwhile is remembered once, by whichever process ran its job.

One exception is allowed, and checked to be only that: a reply the killed process had sent but not yet noted
as sent (the kill fell between Telegram's answer and the database write) is sent again by the process that
takes over its updates. Telegram has no idempotency key, so between losing a reply and sending it twice
membot chooses the second; the window is one database write.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp

from memory.store import Store
from tests.fakes.telegram_api import FakeTelegramServer
from tests.membot_process import WebhookReplica, post_update
from tests.ports import free_port

TOKEN = "5151515151:AAH-multiprocess-SECRET"
SECRET = "multiprocess-webhook-secret"
PEOPLE, MESSAGES, REPLICAS = 50, 10, 3


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


class Replica(WebhookReplica):
    def __init__(self, tmp: Path, server: FakeTelegramServer, url: str) -> None:
        port = free_port()
        super().__init__(_config(tmp, server, url, port), tmp / f"replica-{port}.log",
                         {"TELEGRAM_BOT_TOKEN": TOKEN, "MEMBOT_TEST_WEBHOOK_SECRET": SECRET}, port)

    async def kill_after(self, delay: float) -> float:
        """SIGKILL after `delay` seconds; returns the time of the kill."""
        await asyncio.sleep(delay)
        killed_at = time.time()
        await self.kill()
        return killed_at


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
            killing: asyncio.Task[float] | None = None
            killed_at = restarted_at = 0.0
            for k in range(MESSAGES):
                if k == 4:  # mid-run, while this round's updates are being delivered and answered
                    killing = asyncio.create_task(replicas[1].kill_after(0.15))
                if k == 7:
                    assert killing is not None
                    killed_at = await killing
                    restarted_at = time.time()
                    await replicas[1].start()
                    await replicas[1].ready(http)
                batch = []
                for person in range(PEOPLE):
                    text = f"person {person} says number {k} zq{person}x{k}"
                    message = server.send_private_text(700_000 + person, text, first_name=f"P{person}")
                    update_id += 1
                    batch.append(post_update(http, [r.port for r in replicas],
                                             {"update_id": update_id, "message": message}, SECRET, update_id))
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
            assert set(sent) == expected, (f"{len(expected - set(sent))} message(s) never answered: "
                                           f"{sorted(expected - set(sent))[:3]}; other replies: {other[:5]}")
            for text, count in sent.items():
                if count > 1:  # only a reply the killed process sent but had not yet noted as sent
                    times = [c.time for c in server.calls_of("sendMessage") if c.ok and c.params["text"] == text]
                    assert count == 2 and times[0] < killed_at < restarted_at < times[1], (
                        f"answered twice: {text!r} at {[round(t - killed_at, 3) for t in times]} s from the kill")

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
