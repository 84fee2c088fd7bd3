"""Several processes on one SQLite file (issue #16): found by starting a second process beside the first.

- Concurrent starts on a new database raced on the migrations ("table users already exists", exit 1, in 5
  of 15 tries): the version is now read under the write lock.
- `membot jobs run` beside another one reset the first one's running jobs at its start and wrote a second
  compressive version from the same sessions: jobs now carry leases, and one version per person, scope and
  set of sessions is a constraint.
- A second `membot run` on the same file is refused with one line, while `membot memory show` and
  `membot jobs run` still work beside it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memory.schema import SCHEMA_VERSION
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEMBOT_CONFIG", "DISCORD_BOT_TOKEN", "TELEGRAM_BOT_TOKEN")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _config(tmp: Path, *, delay: float = 0.0, telegram_port: int | None = None) -> Path:
    text = f'[storage]\npath = "{tmp / "membot.sqlite3"}"\n[model]\nbackend = "fake"\n'
    if delay:
        text += f'name = "delay={delay}"\n'
    text += '[sessions]\ninactivity_timeout = 60\n[logging]\nlevel = "INFO"\n'
    if telegram_port is not None:
        text += (f'[telegram]\nbase_url = "http://127.0.0.1:{telegram_port}/bot"\n'
                 f'base_file_url = "http://127.0.0.1:{telegram_port}/file/bot"\n')
    path = tmp / "membot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _membot(cfg: Path, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(cfg), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


def _wait_until(db: Path, sql: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                if conn.execute(sql).fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    raise AssertionError(f"never true: {sql}")


OPEN = "import asyncio, sys\nfrom memory.store import Store\nasync def main():\n    s = await Store.open(sys.argv[1])\n    await s.close()\nasyncio.run(main())\n"


def test_concurrent_starts_on_a_new_database_migrate_once(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(db)], env=_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(15)]
    results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in procs]
    failed = [err for code, err in results if code]
    assert not failed, failed[0]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_jobs_run_beside_another_does_not_redo_its_jobs(tmp_path: Path) -> None:
    cfg = _config(tmp_path, delay=2.0)
    db = tmp_path / "membot.sqlite3"
    for user in ("alice", "bob", "carol"):
        chat = _membot(cfg, "chat", "--user", user, stdin=f"My name is {user} and I keep bees.\n/end\n")
        assert chat.returncode == 0, chat.stderr
    first = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(cfg), "jobs", "run"], env=_env(),
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The first is compressing (the model takes 2 s a batch): the second starts now.
        _wait_until(db, "SELECT COUNT(*) FROM jobs WHERE kind = 'compress' AND state = 'running'")
        second = _membot(cfg, "jobs", "run")
        assert second.returncode == 0, second.stderr
        assert first.wait(120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    with sqlite3.connect(db) as conn:
        doubles = conn.execute("SELECT user_id, scope, source_sessions, COUNT(*) FROM compressive_memories "
                               "GROUP BY user_id, scope, source_sessions HAVING COUNT(*) > 1").fetchall()
        assert doubles == []
        assert conn.execute("SELECT COUNT(*) FROM compressive_memories WHERE scope = 'all'").fetchone()[0] == 3
        assert conn.execute("SELECT COUNT(*) FROM session_memories").fetchone()[0] == 3
        assert conn.execute("SELECT COUNT(*) FROM jobs WHERE state != 'done'").fetchone()[0] == 0


def test_a_second_membot_run_is_refused_and_the_tools_work_beside_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path, telegram_port=free_port())  # nothing listens: the bot keeps waiting for Telegram
    chat = _membot(cfg, "chat", "--user", "alice", stdin="I live in Lyon.\n/end\n")
    assert chat.returncode == 0, chat.stderr
    env = {**_env(), "TELEGRAM_BOT_TOKEN": "123:ABC"}
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        first = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(cfg), "run"], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "Telegram is unreachable" not in log.read_text(errors="replace"):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(cfg), "run"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another `membot run` (pid {first.pid}) is using the database" in lines[0], \
            second.stderr
        assert "123:ABC" not in second.stderr + second.stdout
        jobs = _membot(cfg, "jobs", "run")
        assert jobs.returncode == 0, jobs.stderr
        shown = _membot(cfg, "memory", "show", "--platform", "console", "--user", "alice")
        assert shown.returncode == 0 and "Lyon" in shown.stdout, shown.stderr
        assert first.poll() is None  # the bot went on
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(30)
        except subprocess.TimeoutExpired:
            first.kill()
    # Once it has stopped, the next `membot run` may start (the lock went with the process).
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(cfg), "run"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=8)
