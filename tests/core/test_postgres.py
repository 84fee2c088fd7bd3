"""What PostgreSQL must do that one SQLite writer got for free: several stores (standing for processes) on
one database, starting together, storing the same person's messages and claiming the same jobs at once;
and the move from SQLite (`membot db copy`). The shared storage suite (modules marked `backends`) runs on
both backends besides."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app import App
from bot.config import load_settings
from bot.incoming import IncomingMessage
from memory.jobqueue import JobKind, JobQueue, enqueue
from memory.postgres_schema import SCHEMA_VERSION, TABLES
from memory.retrieval import search_user_messages
from memory.sessions import SessionManager
from memory.store import Store
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]


async def test_stores_starting_together_migrate_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(postgres_url) for _ in range(6)))
    try:
        versions = await stores[0].fetchall("SELECT version FROM membot_schema ORDER BY version")
        assert [int(v[0]) for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_one_person_writing_through_several_processes_gets_one_open_session(postgres_url: str) -> None:
    """Without the person's advisory lock two stores both find no open session and both open one: the
    second fails on the one-open-session index, and its message is lost."""
    stores = await asyncio.gather(*(Store.open(postgres_url) for _ in range(4)))
    try:
        managers = [SessionManager(s, inactivity_timeout=600) for s in stores]

        async def say(i: int) -> int:
            r = await managers[i % 4].record_user_message(
                platform="telegram", user_id="7", display_name="Ann", chat_id="7", chat_kind="dm", text=f"m{i}")
            return r.session_id

        sessions = await asyncio.gather(*(say(i) for i in range(40)))
        assert len(set(sessions)) == 1
        assert await stores[0].scalar("SELECT COUNT(*) FROM messages") == 40
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_two_processes_never_claim_the_same_job(postgres_url: str) -> None:
    """Without `FOR UPDATE SKIP LOCKED` two stores select the same due jobs and both mark them theirs."""
    stores = await asyncio.gather(*(Store.open(postgres_url) for _ in range(6)))
    try:
        sm = SessionManager(stores[0])
        r = await sm.record_user_message(platform="t", user_id="1", display_name="A", chat_id="c",
                                         chat_kind="dm", text="hi")
        async with stores[0].write() as tx:
            for n in range(300):
                await enqueue(tx, JobKind.SESSION_MEMORY, f"x{n}", r.user_pk, 0.0)
        queues = [JobQueue(s, owner=f"p{i}") for i, s in enumerate(stores)]
        claimed: list[int] = []
        while True:
            batches = await asyncio.gather(*(q.claim(JobKind.SESSION_MEMORY, 5) for q in queues for _ in range(3)))
            if not any(batches):
                break
            claimed += [j for b in batches for j in b]
        assert len(claimed) == len(set(claimed)) == 300
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_only_one_process_runs_an_exclusive_task_at_a_time(postgres_url: str) -> None:
    a, b = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        async with a.exclusive("jobs") as first:
            async with b.exclusive("jobs") as second:
                assert first and not second
        async with b.exclusive("jobs") as again:
            assert again
    finally:
        await a.close()
        await b.close()


async def test_search_finds_the_persons_own_words_only(postgres_url: str) -> None:
    async with Store.at(postgres_url) as store:
        sm = SessionManager(store)
        ann = await sm.record_user_message(platform="t", user_id="1", display_name="Ann", chat_id="1",
                                           chat_kind="dm", text="My sister Mia climbs mountains")
        await sm.record_user_message(platform="t", user_id="2", display_name="Bob", chat_id="2",
                                     chat_kind="dm", text="My sister Zoe climbs too")
        found = await search_user_messages(store, ann.user_pk, "sisters climbing?")
        assert [e.text for e in found] == ["My sister Mia climbs mountains"]
        # The index holds keyed hashes, not words.
        terms = await store.scalar("SELECT terms::text FROM messages WHERE id = ?", (ann.message_id,))
        assert "sister" not in terms and "mia" not in terms


@pytest.mark.backends
async def test_forget_leaves_no_row_of_the_person_in_any_table(settings, clock: ManualClock) -> None:
    app = await App.create(settings, backend=FakeBackend(), clock=clock)
    await app.start(schedule=False)
    try:
        for user, text in (("11", "I am Ann, my PIN is ZQX1"), ("22", "I am Bob, my PIN is ZQX2")):
            await app.dispatcher.handle(IncomingMessage(platform="telegram", user_id=user, display_name=user,
                                                        chat_id=user, chat_kind="dm", text=text))
            await app.dispatcher.end_session("telegram", user)
        await app.jobs.run_until_idle()
        ann = await app.sessions.find_user("telegram", "11")
        bob = await app.sessions.find_user("telegram", "22")
        await app.dispatcher.forget("telegram", "11")
        for table in TABLES:
            if table in ("users", "kv", "inbox", "chats"):
                continue
            assert await app.store.scalar(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (ann,)) == 0, table
        assert await app.store.scalar("SELECT COUNT(*) FROM users WHERE id = ?", (ann,)) == 0
        assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE text LIKE '%ZQX1%'") == 0
        assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE user_id = ?", (bob,)) > 0
    finally:
        await app.close()


async def test_a_persons_next_message_in_another_process_waits_for_the_reply_ahead(postgres_url: str) -> None:
    """Two apps (standing for two processes) on one database: a person's second message reaches the other
    process while the first is still being answered. It is answered after the first reply is stored, with
    that reply in its prompt. Without the turn lock the second reply is written at once, blind to the first.
    Another person is not held up meanwhile."""
    settings = load_settings(None, overrides={"storage.url": postgres_url, "model.backend": "fake",
                                              "sessions.inactivity_timeout": 600})
    slow, other = FakeBackend(delay=0.8), FakeBackend()
    apps = [await App.create(settings, backend=b, clock=ManualClock(1_000_000.0)) for b in (slow, other)]
    for app in apps:
        await app.start(schedule=False)

    def say(user: str, text: str) -> IncomingMessage:
        return IncomingMessage(platform="telegram", user_id=user, display_name="Ann", chat_id=user,
                               chat_kind="dm", text=text)

    try:
        first = asyncio.create_task(apps[0].dispatcher.handle(say("31", "first zqfirst")))
        await asyncio.sleep(0.2)  # the first is stored and its reply being written
        second = asyncio.create_task(apps[1].dispatcher.handle(say("31", "second zqsecond")))
        someone_else = await asyncio.wait_for(apps[1].dispatcher.handle(say("32", "not held up")), 0.6)
        assert someone_else.text == "echo: not held up" and not first.done()
        assert (await first).text == "echo: first zqfirst"
        assert (await second).text == "echo: second zqsecond"
        prompts = ["\n".join(content for _, content in p.messages or []) for p in other.prompts]
        assert "echo: first zqfirst" in next(p for p in prompts if "zqsecond" in p)
        rows = await apps[0].store.fetchall("SELECT text FROM messages WHERE author = 'bot' ORDER BY id")
        assert [r[0] for r in rows if "zq" in r[0]] == ["echo: first zqfirst", "echo: second zqsecond"]
    finally:
        for app in apps:
            await app.close()


async def test_many_people_answered_at_once_hold_one_connection_for_their_turns(postgres_url: str) -> None:
    """Every turn lasts as long as its reply is written. Held on a connection each, 30 people answered at once
    would take 30 of the server's connections (100 by default, for every process) or, from a pool of 10,
    leave the 11th waiting for a stranger's reply. All of a process's turns are held by one connection."""
    store = await Store.open(postgres_url)
    try:
        async with contextlib.AsyncExitStack() as turns:
            async with asyncio.timeout(10):
                for person in range(30):
                    await turns.enter_async_context(store.turn(f"telegram:{person}:{person}"))
            held = await store.scalar("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            connections = await store.scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()")
        assert held == 30 and connections <= 3  # the storage pool's (here 1 or 2) and the turns' one
        assert await store.scalar("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await store.close()


def _membot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


async def test_db_copy_moves_a_sqlite_memory_to_postgresql_whole(tmp_path: Path, postgres_url: str) -> None:
    db = tmp_path / "membot.sqlite3"
    clock = ManualClock()
    settings = load_settings(None, overrides={"storage.path": str(db), "model.backend": "fake"})
    app = await App.create(settings, backend=FakeBackend(), clock=clock)
    await app.start(schedule=False)
    try:
        for n in range(30):
            user = str(n % 3)
            await app.dispatcher.handle(IncomingMessage(platform="telegram", user_id=user, display_name=f"P{user}",
                                                        chat_id=user, chat_kind="dm",
                                                        text=f"note {n}: my sister likes kayaks é ✓"))
        await app.dispatcher.end_session("telegram", "0")
        await app.jobs.run_until_idle()
        pk = await app.sessions.find_user("telegram", "1")
        before = [e.message_id for e in await search_user_messages(app.store, pk, "kayaks", limit=50)]
    finally:
        await app.close()
    config = tmp_path / "membot.toml"
    config.write_text(f'[storage]\npath = "{db}"\n[model]\nbackend = "fake"\n')
    done = _membot(config, "db", "copy", "--to", postgres_url)
    assert done.returncode == 0, done.stderr
    assert "checksum" in done.stdout and "matches" in done.stdout

    again = _membot(config, "db", "copy", "--to", postgres_url)  # never into a database with a memory
    assert again.returncode == 1 and "already holds a memory" in again.stderr

    moved = load_settings(None, overrides={"storage.url": postgres_url, "model.backend": "fake"})
    app = await App.create(moved, backend=FakeBackend(), clock=clock)
    await app.start(schedule=False)
    try:
        assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE author = 'user'") == 30
        assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 1
        after = [e.message_id for e in await search_user_messages(app.store, pk, "kayaks", limit=50)]
        assert sorted(after) == sorted(before) and len(after) >= 10
        reply = await app.dispatcher.handle(IncomingMessage(platform="telegram", user_id="1", display_name="P1",
                                                            chat_id="1", chat_kind="dm", text="still there?"))
        assert reply is not None  # new rows continue after the copied ids
    finally:
        await app.close()


def test_db_migrate_on_both_backends(tmp_path: Path, postgres_url: str) -> None:
    for where in (f'path = "{tmp_path / "m.sqlite3"}"', f'url = "{postgres_url}"'):
        config = tmp_path / "membot.toml"
        config.write_text(f'[storage]\n{where}\n[model]\nbackend = "fake"\n')
        done = _membot(config, "db", "migrate")
        assert done.returncode == 0 and "schema up to date" in done.stdout, done.stderr


def test_a_password_in_the_url_is_refused() -> None:
    from bot.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="password_env"):
        load_settings(None, overrides={"storage.url": "postgresql://membot:hunter2@db/membot"})
