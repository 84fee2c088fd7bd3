"""The `membot` command as a shell user meets it: piped chat, jobs, memory commands, exit codes, SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "membot.toml"
    path.write_text(
        f'[model]\nbackend = "fake"\n{extra}\n[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[logging]\nlevel = "WARNING"\n'
    )
    return path


def membot(*args: str, config: Path | None = None, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MEMBOT_CONFIG", None)
    cmd = [sys.executable, "-m", "bot.cli", *(["--config", str(config)] if config else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_scripted_chat_jobs_and_memory(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    chat = membot("chat", "--user", "alice", config=cfg,
                  stdin="I live in Lyon.\nI have a cat called Pixel.\nI play the violin.\n/end\n")
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert lines[:3] == ["echo: I live in Lyon.", "echo: I have a cat called Pixel.", "echo: I play the violin."]
    assert "ended" in lines[3]
    jobs = membot("jobs", "run", config=cfg)
    assert jobs.returncode == 0 and "wrote 1 session memory" in jobs.stdout
    show = membot("memory", "show", "--platform", "console", "--user", "alice", config=cfg)
    assert show.returncode == 0
    assert "Profile:" in show.stdout and "Relationship:" in show.stdout and "Pixel" in show.stdout
    out = tmp_path / "export.json"
    export = membot("memory", "export", "--platform", "console", "--user", "alice", "--out", str(out), config=cfg)
    assert export.returncode == 0 and json.loads(out.read_text())["user"]["id"] == "alice"
    assert membot("memory", "forget", "--platform", "console", "--user", "alice", config=cfg).returncode == 2
    forget = membot("memory", "forget", "--platform", "console", "--user", "alice", "--yes", config=cfg)
    assert forget.returncode == 0 and "Deleted" in forget.stdout
    missing = membot("memory", "show", "--platform", "console", "--user", "alice", config=cfg)
    assert missing.returncode == 1 and "no stored data" in missing.stderr


def test_in_chat_forget_asks_first(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    out = membot("chat", "--user", "bob", config=cfg, stdin="hello\n/forget\nno\n/forget\nyes\n").stdout
    assert "Nothing was deleted." in out and "deleted everything" in out
    assert sqlite3.connect(tmp_path / "db.sqlite3").execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_configuration_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[sessions]\ninactivity_timeout = -5\n")
    result = membot("chat", config=bad)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("membot: configuration error:") and "inactivity_timeout" in result.stderr
    assert "Traceback" not in result.stderr
    assert membot("bogus").returncode == 2


def test_run_without_tokens_says_why(tmp_path: Path) -> None:
    env_free = membot("run", config=_config(tmp_path))
    assert env_free.returncode == 2 and "TELEGRAM_BOT_TOKEN" in env_free.stdout


def _kill_when(proc: subprocess.Popen[str], db: Path, sql: str, target: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:  # never creates it
                if conn.execute(sql).fetchone()[0] >= target:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.mark.parametrize("round_", range(2))
def test_sigkill_during_chat_and_jobs_loses_nothing(tmp_path: Path, round_: int) -> None:
    cfg = _config(tmp_path, 'name = "delay=0.3"')
    db = tmp_path / "db.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    messages = [f"fact number {i} about me" for i in range(6)]
    # Kill while the model is generating the reply to message 3 (messages are stored before generation).
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(cfg), "chat", "--user", "carol"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    assert proc.stdin is not None
    proc.stdin.write("\n".join(messages) + "\n")
    proc.stdin.flush()
    _kill_when(proc, db, "SELECT COUNT(*) FROM messages WHERE author = 'user'", 3 + round_)
    with sqlite3.connect(db) as conn:
        stored = [r[0] for r in conn.execute("SELECT text FROM messages WHERE author = 'user' ORDER BY id")]
    assert stored == messages[: len(stored)] and len(stored) >= 3 + round_
    # End the session, then kill `membot jobs run` while it generates.
    assert membot("chat", "--user", "carol", config=cfg, stdin="/end\n").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(cfg), "jobs", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    _kill_when(proc, db, "SELECT COUNT(*) FROM jobs WHERE state = 'running'", 1)
    again = membot("jobs", "run", config=cfg)
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        closed = conn.execute("SELECT id FROM sessions WHERE state = 'closed'").fetchall()
        for (sid,) in closed:
            assert conn.execute("SELECT COUNT(*) FROM session_memories WHERE session_id = ?", (sid,)).fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE author = 'user'").fetchone()[0] == len(stored)


def _closed_session(tmp_path: Path) -> Path:
    """A config logging at INFO (the default level, where a duplicated summary shows) and one closed session
    from a piped chat, so `membot jobs run` has a session memory and a compression to do."""
    cfg = tmp_path / "info.toml"
    cfg.write_text(f'[model]\nbackend = "fake"\n[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[logging]\nlevel = "INFO"\n')
    chat = membot("chat", "--user", "dana", config=cfg, stdin="I grow tomatoes.\n/end\n")
    assert chat.returncode == 0, chat.stderr
    return cfg


def test_jobs_run_says_its_summary_once_and_no_progress_when_piped(tmp_path: Path) -> None:
    cfg = _closed_session(tmp_path)
    jobs = membot("jobs", "run", config=cfg)
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout.startswith("Memory jobs: ") and "wrote 1 session memory" in jobs.stdout
    assert (jobs.stdout + jobs.stderr).count("wrote 1 session memory") == 1, jobs.stderr
    assert "done" not in jobs.stderr and "\r" not in jobs.stderr


def test_jobs_run_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal, as in an interactive shell: jobs done / total, then the line is cleared."""
    pty = pytest.importorskip("pty")
    cfg = _closed_session(tmp_path)
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MEMBOT_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(cfg), "jobs", "run"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    stdout = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, terminal
    shown = terminal.decode()
    last = "memory jobs: 2/2 done"  # the session memory queued the compression: the total grew from 1 to 2
    assert "\rmemory jobs: 0/1 done\r" in shown and last in shown, repr(shown)
    assert shown.split(last, 1)[1].startswith("\r" + " " * len(last) + "\r"), repr(shown)  # blanked at the end
    assert stdout.count("wrote 1 session memory") == 1 and "wrote 1 session memory" not in shown


class _Terminal(io.StringIO):
    """A stand-in for a terminal: a text stream that says it is one."""

    def isatty(self) -> bool:
        return True


def test_progress_is_redrawn_on_a_terminal_and_silent_elsewhere() -> None:
    from bot.cli import JobsProgress

    tty = _Terminal()
    progress = JobsProgress(tty)
    progress(0, 3)
    progress(2, 3)  # two done; the first session memories queued compressions, so the total grew
    progress(3, 0)
    progress.close()
    frames = tty.getvalue().split("\r")
    assert frames[1:4] == ["memory jobs: 0/3 done", "memory jobs: 2/5 done", "memory jobs: 5/5 done"]
    assert frames[4].strip() == "" and frames[-1] == ""  # blanked, cursor back at the line start
    piped = io.StringIO()
    quiet = JobsProgress(piped)
    quiet(0, 3)
    quiet(3, 0)
    quiet.close()
    assert piped.getvalue() == "" and quiet.done == 3
