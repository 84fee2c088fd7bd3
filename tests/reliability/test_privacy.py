"""Privacy: forget deletes everything about a person (down to the bytes of the database files), export gives
everything about them and nothing about anyone else, retention deletes summarised raw messages, and the bot
phones nobody (no telemetry: only the configured platform and model servers are ever contacted).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.config import Settings
from bot.incoming import IncomingMessage
from memory import inbox
from memory.fts import term, words
from models.base import Prompt
from models.fake import FakeBackend, default_response
from tests.fakes.clock import ManualClock
from tests.fakes.openai_server import FakeOpenAIServer
from tests.reliability import netaudit

REPO = Path(__file__).resolve().parents[2]
A, B = "881234567123", "881234567999"  # Telegram user ids (a private chat's id is the person's id)
A_NAME, B_NAME = "Zqxannabelle", "Qjvbartholomew"
GROUP = "-100777000111"
A_CANARIES = ["ZQXDMSECRETA1", "ZQXDMSECRETA2", "ZQXGROUPSECRETA", "ZQXOPENSESSIONA", "ZQXRAWOUTPUTA",
              "ZQXINBOXA"]
B_CANARIES = ["QJVDMSECRETB1", "QJVGROUPSECRETB"]
PER_USER_TABLES = ("messages", "sessions", "session_memories", "compressive_memories", "jobs", "model_outputs")


def _msg(user: str, text: str, *, group: bool = False) -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id=user, display_name=A_NAME if user == A else B_NAME,
                           chat_id=GROUP if group else user, chat_kind="group" if group else "dm", text=text,
                           chat_title="Hiking club" if group else "")


def _responder() -> Any:
    """The fake model, except that A's first session memory comes out unusable (kept raw, flagged, retried)."""
    spoiled = {"done": False}

    def respond(prompt: Prompt) -> str:
        if prompt.task == "session_memory" and "ZQXDMSECRETA1" in prompt.flat() and not spoiled["done"]:
            spoiled["done"] = True
            return "%%%% ZQXRAWOUTPUTA %%%%"
        return default_response(prompt)

    return respond


async def _populate(app: App, clock: ManualClock) -> int:
    """A and B talk in their DMs and in one group; memories are written and compressed; A has an open session,
    a flagged raw model output and an update in the inbox. Returns A's user key."""
    d = app.dispatcher
    await d.handle(_msg(A, "My passport number is ZQXDMSECRETA1 and my PIN is ZQXDMSECRETA2."))
    await d.handle(_msg(A, "In the group I admit ZQXGROUPSECRETA.", group=True))
    await d.handle(_msg(B, "My locker code is QJVDMSECRETB1."))
    await d.handle(_msg(B, "Group news: QJVGROUPSECRETB.", group=True))
    clock.advance(120)
    await app.jobs.run_until_idle()
    await d.handle(_msg(A, "Still talking: ZQXOPENSESSIONA."))
    payload = json.dumps({"update_id": 99, "message": {"text": "unhandled ZQXINBOXA", "from": {"id": int(A)}}})
    await inbox.keep(app.store, "telegram", 99, A, payload)
    await inbox.keep(app.store, "telegram", 100, B, json.dumps({"update_id": 100, "from": B}))
    pk = await app.sessions.find_user("telegram", A)
    assert pk is not None
    for table in PER_USER_TABLES:  # the set-up really put something about A everywhere
        assert await app.store.scalar(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (pk,)), table
    assert await app.store.scalar("SELECT COUNT(*) FROM model_outputs WHERE raw LIKE '%ZQXRAWOUTPUTA%'") == 1
    return pk


def _db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def _forms(word: str) -> list[bytes]:
    """A word as stored in rows and as a term of the FTS index (lower case)."""
    return [word.encode(), word.lower().encode()]


async def test_forget_deletes_every_row_and_the_bytes_leave_the_files(
    settings: Settings, clock: ManualClock
) -> None:
    db = settings.storage.resolved_path()
    app = await App.create(settings, backend=FakeBackend(responder=_responder()), clock=clock)
    await app.start(schedule=False)
    try:
        pk = await _populate(app, clock)
        before = _db_bytes(db)
        assert b"ZQXDMSECRETA1" in before  # the check below reads the right files
        b_pk = await app.sessions.find_user("telegram", B)
        b_counts = {t: await app.store.scalar(f"SELECT COUNT(*) FROM {t} WHERE user_id = ?", (b_pk,))
                    for t in PER_USER_TABLES}

        a_key = bytes(await app.store.scalar("SELECT fts_key FROM users WHERE id = ?", (pk,)))
        b_key = bytes(await app.store.scalar("SELECT fts_key FROM users WHERE id = ?", (b_pk,)))
        vocab = "SELECT COUNT(*) FROM messages_fts_vocab WHERE term = ?"
        assert await app.store.scalar(vocab, (term(a_key, words(A_CANARIES[0])[0]),)) == 1  # indexed before
        assert a_key in before
        answer = await app.dispatcher.handle(_msg(A, "/forget"))
        assert answer.confirm == "forget"  # asks first; the adapter calls forget on "yes"
        assert "deleted everything" in await app.dispatcher.forget("telegram", A)

        q = app.store.scalar
        for table in PER_USER_TABLES:
            assert await q(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (pk,)) == 0, table
        assert await q("SELECT COUNT(*) FROM users WHERE platform_user_id = ?", (A,)) == 0
        assert await q("SELECT COUNT(*) FROM chats WHERE platform_chat_id = ?", (A,)) == 0  # A's private chat
        assert await q("SELECT COUNT(*) FROM inbox WHERE user_id = ?", (A,)) == 0
        # The full-text index: no row, no term, consistent with the table, and B is still found.
        for word in A_CANARIES:
            assert await q(vocab, (term(a_key, words(word)[0]),)) == 0
        assert await q("SELECT COUNT(*) FROM messages_fts_docsize") == await q("SELECT COUNT(*) FROM messages")
        async with app.store.write() as conn:
            await conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        b_term = term(b_key, "qjvdmsecretb1")
        assert await q("SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH ?", (f'"{b_term}"',)) == 2  # B's turn and its reply
        for table, count in b_counts.items():
            assert await q(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (b_pk,)) == count, table
        assert await q("SELECT COUNT(*) FROM inbox WHERE user_id = ?", (B,)) == 1
        assert await app.store.integrity_ok()

        # forget checkpoints the WAL; with secure_delete the freed bytes are zeroed: nothing of A is left, and
        # without A's key, what the index keeps of A's postings until its next merge cannot be read.
        after = _db_bytes(db)
        assert a_key not in after
        for word in [*A_CANARIES, A, A_NAME]:
            for form in _forms(word):
                assert form not in after, f"{form!r} is still in the database files"
        assert b"QJVDMSECRETB1" in after and B_NAME.encode() in after  # B's data is where it was
    finally:
        await app.close()
    after_close = _db_bytes(db)
    assert not any(form in after_close for word in A_CANARIES for form in _forms(word))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)] + [str(k) for k in value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


@pytest.mark.backends
async def test_export_holds_everything_about_the_person_and_nothing_else(
    settings: Settings, clock: ManualClock
) -> None:
    app = await App.create(settings, backend=FakeBackend(responder=_responder()), clock=clock)
    await app.start(schedule=False)
    try:
        pk = await _populate(app, clock)
        reply = await app.dispatcher.handle(_msg(A, "/export"))
        data = json.loads(reply.document or b"{}")
        blob = "\n".join(_strings(data))

        # Everything the database holds about A, column by column, is in the export.
        fetch = app.store.fetchall
        wanted: list[str] = [A, A_NAME]
        wanted += [r[0] for r in await fetch("SELECT text FROM messages WHERE user_id = ?", (pk,))]
        for (facts,) in await fetch("SELECT facts FROM session_memories WHERE user_id = ?", (pk,)):
            wanted += json.loads(facts)
        for row in await fetch("SELECT profile, relationship, events FROM compressive_memories WHERE user_id = ?",
                               (pk,)):
            wanted += [str(v) for v in row]
        wanted += [r[0] for r in await fetch("SELECT raw FROM model_outputs WHERE user_id = ?", (pk,))]
        assert len(wanted) > 10
        missing = [w for w in wanted if w and w not in blob]
        assert not missing, missing
        for word in ("ZQXDMSECRETA1", "ZQXGROUPSECRETA", "ZQXOPENSESSIONA", "ZQXRAWOUTPUTA"):
            assert word in blob
        # ... and nothing about B: not their words, their name or their id.
        for word in [*B_CANARIES, B_NAME, B]:
            assert word not in blob, word
        # Group sessions are A's own turns only.
        group = [s for s in data["sessions"] if s["chat_kind"] == "group"]
        assert group and all(m["author"] in ("user", "bot") for s in group for m in s["messages"])
        assert await app.dispatcher.export("telegram", "nobody") == {}
    finally:
        await app.close()


async def test_retention_deletes_old_summarised_messages_only(settings: Settings, clock: ManualClock) -> None:
    settings.memory.retention_days = 30
    db = settings.storage.resolved_path()

    def first_fact_only(prompt: Prompt) -> str:  # the memory keeps the first line of each session only
        out = default_response(prompt)
        return out.split("\n")[0] if prompt.task == "session_memory" else out

    backend = FakeBackend(responder=first_fact_only)
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    try:
        d = app.dispatcher
        await d.handle(_msg(A, "I moved to Lyon."))
        await d.handle(_msg(A, "Old chatter ZQXOLDRAW nobody needs."))
        await d.end_session("telegram", A)
        await app.jobs.run_until_idle()  # summarised: session memory + compressive memory
        await d.handle(_msg(A, "Unsummarised ZQXNOTYETSUMMARISED."))
        await d.end_session("telegram", A)
        backend.fail_always = True  # its memory job waits for the model
        await app.jobs.run_until_idle()
        clock.advance(31 * 86_400)
        await d.handle(_msg(A, "Recent ZQXRECENT."))
        report = await app.jobs.run_due()

        assert report.purged_messages == 4  # the old summarised session: the person's two turns and the replies
        texts = [r[0] for r in await app.store.fetchall("SELECT text FROM messages ORDER BY id")]
        assert not any("ZQXOLDRAW" in t or "Lyon" in t for t in texts)
        assert any("ZQXNOTYETSUMMARISED" in t for t in texts)  # no session memory yet: kept, whatever its age
        assert any("ZQXRECENT" in t for t in texts)
        assert await app.store.scalar("SELECT COUNT(*) FROM session_memories") == 1  # the summary stays
        assert "Lyon" in (await app.store.scalar("SELECT facts FROM session_memories"))
        assert await app.store.scalar("SELECT COUNT(*) FROM compressive_memories") >= 1
        a_key = bytes(await app.store.scalar("SELECT fts_key FROM users WHERE platform_user_id = ?", (A,)))
        old_term = term(a_key, "zqxoldraw")
        assert await app.store.scalar("SELECT COUNT(*) FROM messages_fts_vocab WHERE term = ?", (old_term,)) == 0
        assert old_term.encode() not in _db_bytes(db)  # A keeps their key: the purge merges the postings away
        async with app.store.write() as conn:
            await conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        assert not any(form in _db_bytes(db) for form in _forms("ZQXOLDRAW"))
        assert "deleted 4 message(s) past the retention period" in report.summary()

        backend.fail_always = False  # the waiting session gets its memory; 31 days old, it is then purged
        clock.advance(120)
        again = await app.jobs.run_until_idle()
        assert again.session_memories.written == 2 and again.purged_messages == 2  # + the recent one, kept
        assert await app.store.scalar("SELECT COUNT(*) FROM messages WHERE text LIKE '%ZQXNOTYET%'") == 0
    finally:
        await app.close()


@pytest.mark.backends
async def test_retention_is_off_by_default(app: App, clock: ManualClock) -> None:
    assert app.settings.memory.retention_days is None
    await app.dispatcher.handle(_msg(A, "keep me"))
    await app.dispatcher.end_session("telegram", A)
    await app.jobs.run_until_idle()
    clock.advance(10 * 365 * 86_400)
    assert (await app.jobs.run_due()).purged_messages == 0
    assert await app.store.scalar("SELECT COUNT(*) FROM messages") == 2


# -- no telemetry ---------------------------------------------------------------------------------------

PACKAGES = ("bot", "memory", "models")
# Every URL written in the package source, and why it is there. Anything else is a new outbound host.
ALLOWED_URLS = {"http://127.0.0.1:8000/v1": "an example base_url in the openai backend's error message"}
# Modules allowed to import a network client, and the host they talk to.
NETWORK_MODULES = {
    "bot/telegram_adapter.py": "Telegram Bot API (telegram.base_url, default api.telegram.org)",
    "bot/discord_adapter.py": "Discord API and gateway (discord.api_base_url / gateway_url, default Discord's)",
    "bot/discord_commands.py": "Discord (interaction answers through the adapter's client)",
    "models/openai_backend.py": "the configured model server (model.base_url)",
}
NETWORK_LIBS = {"httpx", "aiohttp", "requests", "urllib3", "websockets", "websocket", "socket", "http",
                "telegram", "discord", "yarl", "huggingface_hub", "grpc", "paho"}
TELEMETRY_LIBS = {"sentry_sdk", "posthog", "mixpanel", "segment", "analytics", "datadog", "ddtrace", "newrelic",
                  "opentelemetry", "rollbar", "bugsnag", "amplitude", "statsd", "prometheus_client", "wandb",
                  "honeybadger", "logtail", "heap"}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_the_source_names_no_other_host_and_imports_no_telemetry() -> None:
    urls = {}
    for path in _sources():
        for url in re.findall(r"(?:https?|wss?)://[^\s\"'`)>\]]+", path.read_text(encoding="utf-8")):
            urls[url] = path.relative_to(REPO).as_posix()
    assert set(urls) <= set(ALLOWED_URLS), {u: p for u, p in urls.items() if u not in ALLOWED_URLS}
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in TELEMETRY_LIBS, f"{rel} imports {name}"
                if top in NETWORK_LIBS and name != "http.HTTPStatus":
                    assert rel in NETWORK_MODULES, f"{rel} imports the network client {name}"


def _membot(args: list[str], stdin: str, env_extra: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEMBOT_CONFIG", "TELEGRAM_BOT_TOKEN",
                                                            "DISCORD_BOT_TOKEN")}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-m", "tests.reliability.netaudit", "--log", str(log), "--", *args],
                          input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_chat_and_jobs_open_no_connection_at_all(tmp_path: Path) -> None:
    config = tmp_path / "membot.toml"
    config.write_text(f'[model]\nbackend = "fake"\n[storage]\npath = "{tmp_path / "db.sqlite3"}"\n')
    log = tmp_path / "net.jsonl"
    chat = _membot(["--config", str(config), "chat", "--user", "ann"], "I like tea.\n/memory\n/end\n", {}, log)
    assert chat.returncode == 0, chat.stderr
    jobs = _membot(["--config", str(config), "jobs", "run"], "", {}, log)
    assert jobs.returncode == 0 and "wrote 1 session memory" in jobs.stdout
    assert netaudit.destinations(log) == []  # not one socket: no update check, no analytics, nothing


def test_with_a_model_server_only_that_server_is_contacted(tmp_path: Path) -> None:
    with FakeOpenAIServer(api_key="sk-netaudit") as server:
        config = tmp_path / "membot.toml"
        config.write_text(
            f'[model]\nbackend = "openai"\nbase_url = "{server.base_url}"\nname = "fake-model"\n'
            f'api_key_env = "NETAUDIT_KEY"\n[storage]\npath = "{tmp_path / "db.sqlite3"}"\n'
        )
        log = tmp_path / "net.jsonl"
        chat = _membot(["--config", str(config), "chat", "--user", "ann"], "Hello\n/end\n",
                       {"NETAUDIT_KEY": "sk-netaudit"}, log)
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.splitlines()[0] == "echo: Hello"
    seen = {(d["host"], int(d["port"])) for d in netaudit.destinations(log) if d["event"] == "connect"}
    assert seen == {("127.0.0.1", server.port)}
    assert not netaudit.foreign(log)



async def test_forget_while_a_reader_holds_a_snapshot_says_so_and_erases_the_bytes_later(
    app: App, settings: Settings, clock: ManualClock
) -> None:
    """`/forget` used to say "Done" although a reader's snapshot kept the checkpoint from folding the log
    (the canary stayed in the files). Now it retries, says honestly that copies remain, and the next
    memory-job run finishes the checkpoint."""
    db = settings.storage.resolved_path()
    canary = "ZQXSNAPSHOTCANARY"
    for i in range(5):
        await app.dispatcher.handle(_msg(A, f"{canary} number {i}"))
    await app.dispatcher.handle(_msg(B, "QJVDMSECRETB1 stays"))
    reader = sqlite3.connect(db, check_same_thread=False)  # e.g. `membot memory export` beside the bot
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages").fetchone()  # holds a snapshot from before the forget
        answer = await app.dispatcher.forget("telegram", A)
        assert answer.startswith("Done: I deleted everything") and "still in the database's log" in answer
        assert app.store.checkpoint_owed
    finally:
        reader.close()
    await app.jobs.run_due()
    assert not app.store.checkpoint_owed
    after = _db_bytes(db)
    assert canary.encode() not in after and canary.lower().encode() not in after
    assert b"QJVDMSECRETB1" in after
