"""The terminal adapter: `membot chat`. Same dispatcher, sessions and memory as Discord and Telegram.

Interactive on a terminal; with piped stdin it reads one message a line and writes only replies to
stdout, so it can be scripted.

Leaving the chat (/quit, Ctrl-D, Ctrl-C, or the end of piped input) ends the conversation, as /end does:
a terminal user who leaves expects the next `membot jobs run` to remember what they said, not a session
that stays open for half an hour and silently continues in the next chat.

Input is read by a helper thread, one line per request, and handed to the event loop. Reading it with
`asyncio.to_thread(readline)` instead left Ctrl-C stuck until Enter: the interrupt only landed when the
thread returned, and the typed line was lost. Here Ctrl-C is an event-loop signal handler that stops the
chat at once; the thread, still blocked on the terminal, is a daemon and holds no lock Python needs at exit
(it reads the file descriptor itself, not through `sys.stdin`'s buffer).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import io
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TextIO

from bot.dispatcher import Dispatcher
from bot.incoming import IncomingMessage, Reply
from memory.store import StoreError

log = logging.getLogger(__name__)

PLATFORM = "console"
CHAT_HELP = (
    "In-chat commands: /end, /memory, /forget, /export, /help, /quit. "
    "Leaving (/quit, Ctrl-D or Ctrl-C) ends our conversation, so I remember it."
)
QUIT_HELP = (
    "/quit — leave the chat (Ctrl-D or Ctrl-C too). Leaving ends our conversation, as /end does: I remember it "
    "after the next memory job (`membot jobs run` writes it now)."
)
SESSION_ENDED = "Session ended: I'll remember it after the next memory job (`membot jobs run` writes it now)."
GOODBYE = "Bye!"
ERASE_LINE = "\r\x1b[K"  # back to column 0, clear to the end of the line


class ConsoleChat:
    """One person's chat on this terminal; `interactive` (stdin is a tty) adds prompts, names and the spinner."""

    def __init__(
        self, dispatcher: Dispatcher, user: str, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
        stderr: TextIO | None = None, interactive: bool | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.user = user
        if stdin is None and hasattr(sys.stdin, "reconfigure"):
            # Bytes that are not UTF-8 (a binary pipe, another locale) become U+FFFD instead of ending the chat.
            sys.stdin.reconfigure(errors="replace")
        if stdout is None and hasattr(sys.stdout, "reconfigure"):
            # A terminal or pipe that is not UTF-8 (C locale, PYTHONIOENCODING=ascii) shows "?" for what it
            # cannot print; the message is stored already and the chat goes on.
            sys.stdout.reconfigure(errors="replace")
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        # The spinner is for a person watching a terminal; a script reading our output never sees it.
        self.show_thinking = self.interactive and _isatty(self.stderr)
        self._lines = _LineReader(self.stdin)
        self._at_prompt = False  # the cursor sits after a prompt: leaving then needs a newline first

    def message(self, text: str) -> IncomingMessage:
        # The terminal's owner runs the bot, so they get the admin commands.
        return IncomingMessage(
            platform=PLATFORM, user_id=self.user, display_name=self.user, chat_id=f"console:{self.user}",
            chat_kind="console", text=text, is_admin=True,
        )

    async def _readline(self, prompt: str = "") -> str | None:
        if self.interactive and prompt:
            self.stdout.write(prompt)
            self.stdout.flush()
        self._at_prompt = True
        line = await self._lines.next()
        self._at_prompt = line is None  # Enter moved the cursor to a fresh line; Ctrl-D did not
        return line

    def say(self, text: str) -> None:
        prefix = f"{self.dispatcher.settings.bot_name}> " if self.interactive else ""
        self.stdout.write(prefix + text + "\n")
        self.stdout.flush()

    async def run(self) -> int:
        """Chat until /quit, the end of input or Ctrl-C (on a terminal); then end the session. Returns 0."""
        chat = asyncio.ensure_future(self._chat())
        interrupted = False

        def on_ctrl_c() -> None:
            nonlocal interrupted
            interrupted = True
            chat.cancel()

        restore = _catch_ctrl_c(on_ctrl_c) if self.interactive else _nothing
        try:
            try:
                await chat
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not interrupted or (current is not None and current.cancelling()):
                    raise  # cancelled from outside: not ours to swallow
            # At a prompt the cursor follows what was typed; during a reply the terminal echoed "^C" at the
            # start of a line, which only the spinner's erasing removes.
            newline = self._at_prompt or (interrupted and not self.show_thinking)
            # Still catching Ctrl-C here, so a second press while the session is being closed changes nothing.
            await self._leave(newline=newline)
        finally:
            restore()
            self._lines.close()
        return 0

    async def _chat(self) -> None:
        if self.interactive:
            self.say(f"Hi {self.user}! {CHAT_HELP}")
        while True:
            line = await self._readline("you> ")
            if line is None:
                return
            if not line.strip():
                continue
            command = line.strip().lower()
            if command in ("/quit", "/exit"):
                return
            reply = await self._thinking(self.dispatcher.handle(self.message(line)))
            if reply.confirm == "forget":
                self.say(reply.text + " Type 'yes' to confirm.")
                answer = await self._readline("confirm> ")
                if answer is not None and answer.strip().lower() in ("yes", "y"):
                    self.say(await self.dispatcher.forget(PLATFORM, self.user))
                else:
                    self.say("Nothing was deleted.")
                continue
            if reply.document is not None:
                self.say(reply.text)
                self.stdout.write(reply.document.decode() + "\n")
                continue
            if not reply.silent:
                # /help is the dispatcher's, for every platform; leaving is the terminal's own command.
                is_help = command.split(" ", 1)[0] in ("/help", "/start")
                self.say(reply.text + ("\n" + QUIT_HELP if is_help else ""))

    async def _thinking(self, work: Awaitable[Reply]) -> Reply:
        """Await `work` with a spinner on stderr (terminal only), erased before the reply is printed."""
        if not self.show_thinking:
            return await work
        spinner = asyncio.ensure_future(self._spin())
        try:
            return await work
        finally:
            spinner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spinner
            self._write_err(ERASE_LINE)

    async def _spin(self) -> None:
        frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
        label = f"{self.dispatcher.settings.bot_name} is thinking…"
        if not _encodable(frames + label, self.stderr):
            frames, label = "|/-\\", label.replace("…", "...")
        i = 0
        while True:
            self._write_err(f"\r{frames[i % len(frames)]} {label}")
            i += 1
            await asyncio.sleep(0.1)

    def _write_err(self, text: str) -> None:
        try:
            self.stderr.write(text)
            self.stderr.flush()
        except (OSError, ValueError):  # the terminal went away: the chat itself decides what happens next
            pass

    async def _leave(self, *, newline: bool) -> None:
        """End the open session, as /end does, and say so to a person at the terminal."""
        closed = await self._end_session()
        if self.interactive:
            if newline:  # Ctrl-D or Ctrl-C at a prompt: the shell's prompt must start on a fresh line
                self.stdout.write("\n")
            self.say(SESSION_ENDED if closed else GOODBYE)

    async def _end_session(self) -> int:
        sessions = self.dispatcher.sessions
        try:
            user_pk = await sessions.find_user(PLATFORM, self.user)
            chat_pk = await sessions.find_chat(PLATFORM, self.message("").chat_id)
            if user_pk is None or chat_pk is None:
                return 0
            return await sessions.end_session(user_pk, chat_pk)
        except (StoreError, OSError) as exc:
            log.error("could not end the session on leaving: %s", exc)
            return 0


class _LineReader:
    """Lines from `stream`, read one per request by a daemon thread and handed to the event loop.

    One line per request, so a long pipe is not read into memory ahead of the chat. A stream with a file
    descriptor is read with os.read and decoded here (invalid bytes become U+FFFD, newlines are universal),
    so the blocked thread never holds `sys.stdin`'s lock, which would abort the interpreter at exit.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.wanted = threading.Semaphore(0)
        self.thread: threading.Thread | None = None
        self.queue: asyncio.Queue[str | None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.buffered: deque[str] = deque()
        self.tail = ""
        self.eof = False
        self.closed = False

    def close(self) -> None:
        """Let the thread end if it is waiting for a request (one blocked on the terminal ends with us)."""
        self.closed = True
        self.wanted.release()

    async def next(self) -> str | None:
        """The next line without its line break, or None at the end of input."""
        if self.thread is None:
            self.loop = asyncio.get_running_loop()
            self.queue = asyncio.Queue()
            self.thread = threading.Thread(target=self._run, name="membot-console-input", daemon=True)
            self.thread.start()
        assert self.queue is not None
        self.wanted.release()
        return await self.queue.get()

    def _run(self) -> None:
        read_line = self._fd_line_reader() or self._text_line
        while True:
            self.wanted.acquire()
            if self.closed:
                return
            try:
                line = read_line()
            except (OSError, ValueError) as exc:  # a closed or broken stdin is the end of input
                log.debug("console input ended: %s", exc)
                line = None
            try:
                assert self.loop is not None and self.queue is not None
                self.loop.call_soon_threadsafe(self.queue.put_nowait, line)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                return
            if line is None:
                return

    def _text_line(self) -> str | None:
        line = self.stream.readline()
        return None if line == "" else line.rstrip("\r\n")

    def _fd_line_reader(self) -> Callable[[], str | None] | None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        try:
            base = codecs.getincrementaldecoder(encoding)(errors="replace")
        except LookupError:
            base = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder = io.IncrementalNewlineDecoder(base, translate=True)

        def read_line() -> str | None:
            while not self.buffered and not self.eof:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the terminal hung up
                    chunk = b""
                text = self.tail + decoder.decode(chunk, final=not chunk)
                *lines, self.tail = text.split("\n")
                self.buffered.extend(lines)
                if not chunk:
                    self.eof = True
                    if self.tail:  # a last line without a line break is still a line
                        self.buffered.append(self.tail)
                        self.tail = ""
            return self.buffered.popleft() if self.buffered else None

        return read_line


def _catch_ctrl_c(handler: Callable[[], None]) -> Callable[[], None]:
    """Run `handler` on SIGINT inside the event loop; returns the function that puts things back.

    Where the loop cannot take signals (not the main thread, Windows), Ctrl-C stays a KeyboardInterrupt.
    """
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return _nothing

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    return restore


def _nothing() -> None:
    pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _encodable(text: str, stream: TextIO) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
