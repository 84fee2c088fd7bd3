"""The terminal adapter: `membot chat`. Same dispatcher, sessions and memory as Discord and Telegram.

Interactive on a terminal; with piped stdin it reads one message a line and writes only replies to
stdout, so it can be scripted.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from bot.dispatcher import Dispatcher
from bot.incoming import IncomingMessage

PLATFORM = "console"
CHAT_HELP = "In-chat commands: /end, /memory, /forget, /export, /help, /quit"


class ConsoleChat:
    def __init__(
        self, dispatcher: Dispatcher, user: str, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.user = user
        if stdin is None and hasattr(sys.stdin, "reconfigure"):
            # Bytes that are not UTF-8 (a binary pipe, another locale) become U+FFFD instead of ending the chat.
            sys.stdin.reconfigure(errors="replace")
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = self.stdin.isatty() if interactive is None else interactive

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
        line = await asyncio.to_thread(self.stdin.readline)
        return None if line == "" else line.rstrip("\r\n")

    def say(self, text: str) -> None:
        prefix = f"{self.dispatcher.settings.bot_name}> " if self.interactive else ""
        self.stdout.write(prefix + text + "\n")
        self.stdout.flush()

    async def run(self) -> int:
        if self.interactive:
            self.say(f"Hi {self.user}! {CHAT_HELP}")
        while True:
            line = await self._readline("you> ")
            if line is None:
                return 0
            if not line.strip():
                continue
            if line.strip().lower() in ("/quit", "/exit"):
                return 0
            reply = await self.dispatcher.handle(self.message(line))
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
                self.say(reply.text)
