"""`membot chat` as a person at a terminal meets it, and as a script drives it (issue #15).

- Ctrl-C at the prompt leaves at once, cleanly (exit 0, no traceback), even with a half-typed line.
- On a terminal a "thinking…" spinner shows on stderr while the reply is made and is erased before it;
  piped, nothing of it appears anywhere.
- Leaving the chat (/quit, Ctrl-D, Ctrl-C, the end of piped input) ends the session, so the next
  `membot jobs run` remembers it without an explicit /end.
- /memory says when a waiting conversation will be written, in words that fit the platform.

The terminal tests run the real command under a pseudo-terminal: the tty's line discipline turns the typed
\\x03 into SIGINT, exactly as a keyboard does.
"""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.app import App
from bot.config import load_settings
from bot.console import GOODBYE, SESSION_ENDED, ConsoleChat
from bot.incoming import IncomingMessage
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, model_name: str | None = None) -> Path:
    path = tmp_path / "membot.toml"
    name = f'name = "{model_name}"\n' if model_name else ""
    path.write_text(
        f'[model]\nbackend = "fake"\n{name}[storage]\npath = "{tmp_path / "db.sqlite3"}"\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}
    env.pop("MEMBOT_CONFIG", None)
    return env


class Terminal:
    """`membot chat` on a pseudo-terminal that is its controlling tty, as in a shell."""

    def __init__(self, config: Path, user: str = "alice") -> None:
        argv = [sys.executable, "-m", "bot.cli", "--config", str(config), "chat", "--user", user]
        env = _env()
        pid, fd = pty.fork()
        if pid == 0:  # the child: stdin, stdout and stderr are the terminal
            try:
                os.chdir(REPO)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.status: int | None = None

    def read_until(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{text!r} never came; the terminal shows {self.text()!r}")
        return self.text()

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.2):  # what it wrote last
                    pass
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        return None

    def _read(self, timeout: float) -> bool:
        if timeout <= 0 or not select.select([self.fd], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "db.sqlite3")


# -- Ctrl-C, Ctrl-D and the spinner on a terminal ----------------------------------------------------


def test_ctrl_c_at_the_prompt_leaves_at_once_and_ends_the_session(tmp_path: Path) -> None:
    term = Terminal(_config(tmp_path))
    try:
        term.read_until("you> ")
        term.type("I live in Lyon.\r")
        term.read_until("echo: I live in Lyon.")
        term.read_until("you> ")
        term.type("and I also ha")  # half a line, no Enter
        term.read_until("and I also ha")
        term.type("\x03")  # Ctrl-C: the tty sends SIGINT
        code = term.wait_exit(10)
    finally:
        term.close()
    out = term.text()
    assert code == 0, f"still running or failed ({code}); the terminal shows {out!r}"
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    tail = out[out.index("and I also ha"):]
    # A newline after the ^C, then one line saying what happened, then a fresh line for the shell.
    assert f"\r\nMembot> {SESSION_ENDED}\r\n" in tail and tail.endswith("\r\n")
    with _db(tmp_path) as db:
        assert [r[0] for r in db.execute("SELECT text FROM messages WHERE author = 'user'")] == ["I live in Lyon."]
        assert db.execute("SELECT state FROM sessions").fetchall() == [("closed",)]
        assert db.execute("SELECT kind, state FROM jobs").fetchall() == [("session_memory", "pending")]


def test_thinking_spinner_on_a_terminal_is_erased_before_the_reply(tmp_path: Path) -> None:
    term = Terminal(_config(tmp_path, "delay=0.6"))  # a model that takes a moment
    try:
        term.read_until("you> ")
        term.type("hello\r")
        term.read_until("echo: hello")
        term.read_until("you> ")
        term.type("\x04")  # Ctrl-D at an empty prompt
        code = term.wait_exit(10)
    finally:
        term.close()
    out = term.text()
    assert code == 0 and "Traceback" not in out
    reply = out.index("Membot> echo: hello")
    spinning = out[out.index("hello\r\n"):reply]
    assert "Membot is thinking" in spinning
    assert spinning.count("is thinking") >= 3, "the spinner turns while the model works"
    assert spinning.endswith("\r\x1b[K"), "the spinner's line is erased before the reply is printed"
    # Ctrl-D leaves like /quit: a fresh line, then the session is ended and said so.
    assert out[reply:].endswith(f"you> \r\nMembot> {SESSION_ENDED}\r\n")


# -- piped: only replies, and the end of input ends the session --------------------------------------


def _membot(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bot.cli", "--config", str(config), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO)


def test_piped_chat_without_end_is_remembered_by_the_next_jobs_run(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "delay=0.3")
    chat = _membot(cfg, "chat", "--user", "alice", stdin="I live in Lyon.\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == "echo: I live in Lyon.\n"  # only the reply: no spinner, no farewell
    assert "thinking" not in chat.stderr and "\x1b" not in chat.stderr
    jobs = _membot(cfg, "jobs", "run")
    assert jobs.returncode == 0 and "wrote 1 session memory" in jobs.stdout, jobs.stdout + jobs.stderr
    show = _membot(cfg, "memory", "show", "--platform", "console", "--user", "alice")
    assert "Lyon" in show.stdout


# -- in process: leaving ends the session, /help says so ----------------------------------------------


async def test_quit_ends_the_session_and_the_jobs_write_it(app: App) -> None:
    out = io.StringIO()
    chat = ConsoleChat(app.dispatcher, "bob", stdin=io.StringIO("I play the violin.\n/quit\n"), stdout=out,
                       stderr=io.StringIO(), interactive=True)
    assert await chat.run() == 0
    # (A terminal would echo "/quit⏎" after the prompt; a StringIO does not.) No extra newline after /quit.
    assert out.getvalue().endswith(f"you> Membot> {SESSION_ENDED}\n")
    assert await app.store.scalar("SELECT state FROM sessions") == "closed"
    report = await app.jobs.run_until_idle()
    assert report.session_memories.written == 1
    assert "violin" in await app.dispatcher.memory_text("console", "bob")


async def test_end_of_input_after_end_has_nothing_left_to_end(app: App) -> None:
    out = io.StringIO()
    chat = ConsoleChat(app.dispatcher, "bob", stdin=io.StringIO("hi\n/end\n"), stdout=out, interactive=True)
    assert await chat.run() == 0
    # Ctrl-D at the prompt: a newline first; no session was open any more, so just goodbye.
    assert out.getvalue().endswith(f"you> \nMembot> {GOODBYE}\n")
    assert await app.store.scalar("SELECT COUNT(*) FROM jobs") == 1


async def test_help_on_the_console_says_leaving_ends_the_conversation(app: App) -> None:
    out = io.StringIO()
    chat = ConsoleChat(app.dispatcher, "bob", stdin=io.StringIO("/help\n"), stdout=out, interactive=False)
    assert await chat.run() == 0
    text = out.getvalue()
    assert "/end" in text and "/quit" in text and "Ctrl-C" in text
    assert "Leaving ends our conversation" in text and "membot jobs run" in text


# -- /memory: when a waiting conversation is written -------------------------------------------------


def _msg(text: str, platform: str, user: str = "alice") -> IncomingMessage:
    kind = "console" if platform == "console" else "dm"
    return IncomingMessage(platform=platform, user_id=user, display_name=user.title(), chat_id=f"{platform}:{user}",
                           chat_kind=kind, text=text, is_admin=platform == "console")  # type: ignore[arg-type]


async def _conversation(app: App, platform: str, text: str) -> None:
    await app.dispatcher.handle(_msg(text, platform))
    assert (await app.dispatcher.handle(_msg("/end", platform))).text.startswith("Conversation ended")


async def _memory(app: App, platform: str) -> str:
    return (await app.dispatcher.handle(_msg("/memory", platform))).text


async def test_memory_after_end_says_when_it_is_written_on_the_console(app: App) -> None:
    await app.dispatcher.handle(_msg("I live in Lyon.", "console"))
    assert await _memory(app, "console") == (
        "I don't have a memory of you yet: I write one after a conversation ends "
        "(ours ends after 1 minute of quiet, or now with /end)."
    )
    await app.dispatcher.handle(_msg("/end", "console"))
    assert await _memory(app, "console") == (
        "I don't have a memory of you yet. 1 conversation is waiting to be remembered: memory jobs run every "
        "5 minutes (jobs.interval), or run `membot jobs run` to write it now."
    )
    await _conversation(app, "console", "I have a cat.")
    assert "2 conversations are waiting to be remembered" in await _memory(app, "console")
    await app.jobs.run_until_idle()
    remembered = await _memory(app, "console")
    assert remembered.startswith("What I remember about you") and "not in this memory" not in remembered
    await _conversation(app, "console", "I play the violin.")
    assert (await _memory(app, "console")).endswith(
        "\n\n(1 newer conversation is not in this memory yet: memory jobs run every 5 minutes (jobs.interval), "
        "or run `membot jobs run` to write it now.)"
    )
    await _conversation(app, "console", "I cook on Sundays.")
    assert "\n\n(2 newer conversations are not in this memory yet: " in await _memory(app, "console")


async def test_memory_elsewhere_says_when_without_the_operators_command(app: App) -> None:
    await _conversation(app, "telegram", "I live in Lyon.")
    text = await _memory(app, "telegram")
    assert text == (
        "I don't have a memory of you yet. 1 conversation is waiting to be remembered: "
        "I write my memories every 5 minutes."
    )
    await app.jobs.run_until_idle()
    await _conversation(app, "telegram", "I have a cat.")
    await _conversation(app, "telegram", "I play the violin.")
    text = await _memory(app, "telegram")
    assert text.endswith("\n\n(2 newer conversations are not in this memory yet: I write my memories every 5 minutes.)")
    assert "membot" not in text


async def test_memory_names_the_configured_schedule(
    fake_backend: FakeBackend, clock: ManualClock, tmp_path: Path
) -> None:
    for overrides, console, elsewhere in (
        ({"jobs.interval": "1h"}, "memory jobs run every hour (jobs.interval)", "I write my memories every hour."),
        ({"jobs.cron": "0 3 * * *"}, "memory jobs run on the schedule jobs.cron = '0 3 * * *'",
         "that happens at my next scheduled memory run."),
    ):
        path = tmp_path / f"{len(overrides)}-{next(iter(overrides))}.sqlite3"
        custom = load_settings(None, overrides={"storage.path": str(path), "model.backend": "fake", **overrides})
        app = await App.create(custom, backend=fake_backend, clock=clock)
        await app.start(schedule=False)
        try:
            await _conversation(app, "console", "I live in Lyon.")
            await _conversation(app, "discord", "I live in Lyon.")
            assert console in await _memory(app, "console")
            assert (await _memory(app, "discord")).endswith(elsewhere)
        finally:
            await app.close()


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_that_is_not_utf8_gets_replacement_characters_not_a_crash(tmp_path: Path, encoding: str) -> None:
    config = tmp_path / "membot.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[model]\nbackend = "fake"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": encoding}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "chat", "--user", "zoe"],
                          input="Héllo 😀 こんにちは\n".encode(), capture_output=True, env=env, cwd=REPO,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.decode(encoding).startswith("echo: H")  # what it cannot print shows as "?"
    assert b"Traceback" not in done.stderr
