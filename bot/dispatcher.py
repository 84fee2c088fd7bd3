"""The platform-free core every adapter talks to: store the message, build the memory-grounded prompt,
ask the model worker, store and return the reply; plus the user and admin commands.

Order matters: the user's message is committed before the model runs, so a model failure costs the
person a reply, never their message. One lock per person and chat keeps each person's turns in order
while different people are served concurrently (on PostgreSQL across processes too: `Store.turn`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.incoming import IncomingMessage, Reply
from bot.text import clean_incoming, defuse_mentions
from memory.context import ContextBuilder, latest_compressive
from memory.jobs import JobRunner
from memory.privacy import export_user, forget_user, forget_user_in_server
from memory.sessions import SessionManager
from memory.stats import bot_counts, server_counts
from memory.store import Store, StoreError
from models.base import BackendError, Prompt
from models.profiles.base import Profile
from models.worker import ModelWorker, Priority

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I couldn't come up with a reply just now. Your message is saved; please try again in a moment."
STORE_APOLOGY = "Sorry, I can't store messages right now, so I won't answer until that's fixed."
EMPTY = "I can only read text. Send me a message and I'll answer."
REFUSAL = "Sorry, that command is for the bot's admins."

USER_COMMANDS: dict[str, str] = {
    "help": "what I can do",
    "memory": "what I remember about you",
    "forget": "delete everything I know about you",
    "export": "send you all your data as JSON",
    "end": "end our conversation now (I write it into memory)",
}
ADMIN_COMMANDS: dict[str, str] = {
    "stats": "users, sessions, messages, queued jobs, model",
    "compress_now": "run the due memory jobs now",
    "forget_user": "delete everything about a user: /forget_user <id>",
}

PromptHook = Callable[[IncomingMessage, Prompt], None]


@dataclass
class ReplySettings:
    bot_name: str
    max_message_chars: int
    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    private_in_groups: bool
    # When the memory jobs run (jobs.interval, or jobs.cron when set), so /memory can say when a finished
    # conversation will be written.
    jobs_interval: float = 300.0
    jobs_cron: str | None = None


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        sessions: SessionManager,
        context: ContextBuilder,
        worker: ModelWorker,
        profile: Profile,
        jobs: JobRunner,
        settings: ReplySettings,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.context = context
        self.worker = worker
        self.profile = profile
        self.jobs = jobs
        self.settings = settings
        self.prompt_hooks: list[PromptHook] = []
        self._locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._inflight: dict[tuple[str, str], set[asyncio.Task[object]]] = {}

    # -- messages ---------------------------------------------------------------------------------

    async def handle(
        self, msg: IncomingMessage, *, on_partial: Callable[[str], Awaitable[None]] | None = None,
        deliver: Callable[[Reply], Awaitable[None]] | None = None,
    ) -> Reply:
        """Answer one message; never raises for anything a user can send (`deliver` may: it is the adapter's).

        `deliver` sends the reply, within the person's turn: their next message is answered once this reply
        is on screen and noted as delivered. Otherwise a process handling a redelivery of this message could
        find the reply stored but not yet confirmed sent, and send it a second time."""
        text, cut = clean_incoming(msg.text, self.settings.max_message_chars)
        if not text or text.startswith("/"):
            reply = await self.command(msg, text) if text else Reply(EMPTY, kind="notice")
            if deliver is not None:
                await deliver(reply)
            return reply
        key = (msg.platform, msg.user_id, msg.chat_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock, self.store.turn(":".join(key)):  # and across processes on PostgreSQL
            reply = await self._reply(msg, text, cut, on_partial)
            if deliver is not None:
                await deliver(reply)
            return reply

    def _partials(
        self, on_partial: Callable[[str], Awaitable[None]] | None
    ) -> tuple[Callable[[str], None] | None, _PartialPump | None]:
        if on_partial is None:
            return None, None
        pump = _PartialPump(on_partial)
        return pump.feed, pump

    async def _reply(self, msg: IncomingMessage, text: str, cut: bool, on_partial: Callable[[str], Awaitable[None]] | None = None) -> Reply:
        # Names come from the platform as freely as the text does (NUL, lone surrogates...): clean them too.
        name = clean_incoming(msg.display_name, 200)[0]
        try:
            recorded = await self.sessions.record_user_message(
                platform=msg.platform, user_id=msg.user_id, display_name=name,
                chat_id=msg.chat_id, chat_kind=msg.chat_kind, chat_title=clean_incoming(msg.chat_title, 200)[0],
                text=text, platform_message_id=msg.message_id, when=msg.time, server_id=msg.server_id,
            )
        except (StoreError, OSError) as exc:
            log.error("could not store a message: %s", exc)
            return Reply(STORE_APOLOGY, kind="apology")
        if recorded.duplicate and await self.sessions.answered(recorded):
            # Re-delivered after it was answered. One re-delivered because a crash came before its reply
            # (the inbox replays it) is answered now, from the copy already stored. A reply stored but never
            # confirmed sent (the process died in between, or another process's did) is sent now.
            pending = await self.sessions.undelivered_reply(recorded)
            if pending is None:
                return Reply("", kind="none")
            return Reply(pending[1], meta={"session_id": recorded.session_id, "reply_id": pending[0]})
        try:
            context = await self.context.build(
                user_pk=recorded.user_pk, user_name=name or msg.user_id,
                session_id=recorded.session_id,
                include_private=recorded.private or self.settings.private_in_groups, query=text,
                up_to=recorded.message_id,
            )
            prompt = self.profile.reply_prompt(context)
            for hook in self.prompt_hooks:
                hook(msg, prompt)
            params = self.profile.reply_params(
                self.settings.max_new_tokens, self.settings.temperature, self.settings.top_p,
                self.settings.repetition_penalty,
            )
            on_text, pump = self._partials(on_partial)
            task = asyncio.ensure_future(self.worker.generate([prompt], params, Priority.REPLY, on_text))
            inflight = self._inflight.setdefault((msg.platform, msg.user_id), set())
            inflight.add(task)  # type: ignore[arg-type]
            try:
                generation = (await task)[0]
            finally:
                inflight.discard(task)  # type: ignore[arg-type]
                if pump is not None:
                    await pump.stop()
            answer = defuse_mentions(self.profile.clean_reply(generation.text)) or "…"
        except asyncio.CancelledError:
            if asyncio.current_task() and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return Reply("", kind="none")  # the person was forgotten while we generated
        except (BackendError, StoreError, OSError, ValueError) as exc:
            log.warning("reply failed for %s:%s: %s", msg.platform, msg.user_id, exc)
            return Reply(APOLOGY, kind="apology")
        except Exception:
            log.exception("unexpected error while replying")
            return Reply(APOLOGY, kind="apology")
        reply_id = 0
        try:
            reply_id = await self.sessions.record_bot_message(recorded, answer)
        except (StoreError, OSError) as exc:
            log.error("could not store a reply: %s", exc)
        note = f"(Your message was long, so I kept the first {self.settings.max_message_chars} characters.)\n" if cut else ""
        return Reply(note + answer, meta={"session_id": recorded.session_id, "reply_id": reply_id})

    async def delivered(self, reply: Reply, platform_message_id: str) -> None:
        """The adapter sent `reply` (the platform's id of the message it made): a redelivery of the message
        it answers is not answered again. A failure here costs at most a second copy later: logged only."""
        reply_id = int(reply.meta.get("reply_id") or 0) if reply.meta else 0
        if not reply_id:
            return
        try:
            await self.sessions.delivered(reply_id, platform_message_id)
        except (StoreError, OSError) as exc:
            log.warning("could not note a reply as delivered: %s", exc)

    # -- commands ---------------------------------------------------------------------------------

    async def command(self, msg: IncomingMessage, text: str) -> Reply:
        name, _, arg = text[1:].partition(" ")
        name = name.split("@", 1)[0].lower()
        arg = arg.strip()
        try:
            if name in ("help", "start"):
                return Reply(self.help_text(msg.is_admin, greeting=name == "start"), kind="command")
            if name == "memory":
                return Reply(await self.memory_text(msg.platform, msg.user_id), kind="command")
            if name == "forget":
                return Reply(
                    "This deletes everything I know about you: messages, sessions and memories. It cannot be undone.",
                    kind="command", confirm="forget",
                )
            if name == "export":
                data = await self.export(msg.platform, msg.user_id)
                return Reply("Here is everything I have stored about you.", kind="command",
                             document=json.dumps(data, ensure_ascii=False, indent=2).encode(), filename="membot-export.json")
            if name == "end":
                return Reply(await self.end_session(msg.platform, msg.user_id, msg.chat_id), kind="command")
            if name in ADMIN_COMMANDS:
                if not msg.is_admin:
                    return Reply(REFUSAL, kind="refusal")
                if name == "stats":
                    return Reply(await self.stats(), kind="command")
                if name == "compress_now":
                    return Reply(await self.compress_now(), kind="command")
                if name == "forget_user":
                    if not arg:
                        return Reply("Usage: /forget_user <user id>", kind="command")
                    return Reply(await self.forget(msg.platform, arg, by_admin=True), kind="command")
        except (StoreError, OSError) as exc:
            log.error("command /%s failed: %s", name, exc)
            return Reply("Sorry, that didn't work because storage is unavailable. Please try again later.",
                         kind="apology")
        return Reply(f"I don't know /{name}. Try /help.", kind="notice")

    def help_text(self, is_admin: bool, *, greeting: bool = False) -> str:
        lines = []
        if greeting:
            lines.append(
                f"Hi, I'm {self.settings.bot_name}! Chat with me any time. When we pause for a while, I write down "
                "what I learned about you and use it next time. See /memory for what I remember, /forget to "
                "delete it all, /export for a copy."
            )
        lines.append("Commands:")
        lines += [f"/{k} — {v}" for k, v in USER_COMMANDS.items()]
        if is_admin:
            lines.append("Admin commands:")
            lines += [f"/{k} — {v}" for k, v in ADMIN_COMMANDS.items()]
        return "\n".join(lines)

    async def memory_text(self, platform: str, user_id: str) -> str:
        user_pk = await self.sessions.find_user(platform, user_id)
        if user_pk is None:
            return "I don't remember anything about you yet."
        memory = await latest_compressive(self.store, user_pk, "all")
        # A finished conversation waits for the next memory job; the one going on waits for its end first.
        waiting, ongoing = await self.sessions.unremembered(user_pk)
        if memory is None:
            text = "I don't have a memory of you yet"
            if waiting:
                return f"{text}. {_conversations(waiting)} waiting to be remembered: {self._when_written(platform)}."
            end = "/session end" if platform == "discord" else "/end"  # Discord's commands are slash commands
            return text + ": I write one after a conversation ends" + (
                f" (ours ends after {_duration(self.sessions.timeout)} of quiet, or now with {end})."
                if ongoing else "."
            )
        # Only what you said is kept: a part nothing supports stays empty rather than being made up.
        empty = "(nothing yet)"
        text = (
            f"What I remember about you (version {memory.version}):\n\n"
            f"Profile: {memory.profile or empty}\n\nRelationship: {memory.relationship or empty}\n\n"
            f"Events:\n{memory.events or empty}"
        )
        if waiting:
            text += (f"\n\n({_conversations(waiting, 'newer ')} not in this memory yet: "
                     f"{self._when_written(platform)}.)")
        elif ongoing:
            text += "\n\n(Our current conversation goes into this memory after it ends.)"
        return text

    def _when_written(self, platform: str) -> str:
        """When waiting conversations get written; only the terminal's user can run the jobs themselves."""
        s = self.settings
        if platform == "console":
            schedule = (f"memory jobs run on the schedule jobs.cron = {s.jobs_cron!r}" if s.jobs_cron
                        else f"memory jobs run {_every(s.jobs_interval)} (jobs.interval)")
            return f"{schedule}, or run `membot jobs run` to write it now"
        if s.jobs_cron:
            return "that happens at my next scheduled memory run"
        return f"I write my memories {_every(s.jobs_interval)}"

    async def export(self, platform: str, user_id: str) -> dict[str, object]:
        user_pk = await self.sessions.find_user(platform, user_id)
        return {} if user_pk is None else await export_user(self.store, user_pk)

    async def forget(self, platform: str, user_id: str, *, by_admin: bool = False) -> str:
        """`erase` for a chat: a storage failure (a full disk) is answered, never raised, so the chat goes on.

        The deletion is one transaction, so when it fails nothing was deleted, and the answer says so."""
        try:
            return await self.erase(platform, user_id, by_admin=by_admin)
        except (StoreError, OSError) as exc:
            log.error("forget failed: %s", exc)
            return _nothing_deleted(exc)

    async def erase(self, platform: str, user_id: str, *, by_admin: bool = False) -> str:
        """Delete everything about a person; raises StoreError when storage fails (the CLI exits non-zero)."""
        for task in list(self._inflight.pop((platform, user_id), ())):
            task.cancel()
        user_pk = await self.sessions.find_user(platform, user_id)
        if user_pk is None:
            return "There was nothing stored about that user." if by_admin else "I had nothing stored about you."
        counts = await forget_user(self.store, user_pk)
        log.info("forgot a %s user (%d messages)", platform, counts.get("messages", 0))
        later = "" if counts.get("erased", 1) else (
            " Copies of some of it are still in the database's log while another reader finishes; they are "
            "erased at the next memory-job run (within minutes).")
        if by_admin:
            return (f"Deleted everything about user {user_id}: {counts['messages']} message(s), "
                    f"{counts['sessions']} session(s).{later}")
        return f"Done: I deleted everything I knew about you.{later}"

    async def end_session(self, platform: str, user_id: str, chat_id: str | None = None) -> str:
        user_pk = await self.sessions.find_user(platform, user_id)
        chat_pk = await self.sessions.find_chat(platform, chat_id) if chat_id is not None else None
        if user_pk is None or (chat_id is not None and chat_pk is None):
            return "We have no conversation going right now."
        closed = await self.sessions.end_session(user_pk, chat_pk)
        if not closed:
            return "We have no conversation going right now."
        return "Conversation ended. I'll write it into my memory of you shortly."

    async def stats(self) -> str:
        """The whole bot's counts: for its operator only."""
        c = await bot_counts(self.store)
        return (
            f"Users: {c.users}\nOpen sessions: {c.open_sessions}\nMessages: {c.messages}\n"
            f"Queued memory jobs: {c.queued_jobs}\nCompressive memory versions: {c.memory_versions}\n"
            f"Flagged model outputs: {c.flagged_outputs}\nModel: {self.worker.name} on {self.worker.device}\n"
            f"Model queue: {self.worker.queued()}"
        )

    async def server_stats(self, platform: str, server: str) -> str:
        """One server's counts, for its admins: nothing about DMs or other servers, not even totals."""
        c = await server_counts(self.store, platform, server)
        return (
            f"In this server:\nPeople who talked with me: {c.people}\nOpen conversations: {c.open_sessions}\n"
            f"Messages (theirs and mine): {c.messages}\nConversations remembered: {c.remembered_sessions}\n"
            f"Conversations waiting to be remembered: {c.waiting_sessions}\nModel: {self.worker.name}"
        )

    async def forget_in_server(self, platform: str, user_id: str, server: str, *, label: str = "") -> str:
        """A server admin's forget: what the person said in that server only (memory/privacy.py)."""
        who = label or f"user {user_id}"
        user_pk = await self.sessions.find_user(platform, user_id)
        try:
            counts = {"sessions": 0} if user_pk is None else await forget_user_in_server(
                self.store, user_pk, platform, server, self.sessions.clock())
        except (StoreError, OSError) as exc:
            log.error("server forget failed: %s", exc)
            return _nothing_deleted(exc)
        if not counts["sessions"]:
            return f"There was nothing stored about {who} in this server."
        log.info("forgot a %s user's data in one server (%d messages)", platform, counts["messages"])
        later = "" if counts.get("erased", 1) else (
            " Copies of some of it stay in the database's log until the next memory-job run.")
        return (f"Deleted what {who} said in this server: {counts['messages']} message(s), "
                f"{counts['sessions']} conversation(s), and the memories written from them. Their DMs and other "
                f"servers are not touched; only the bot's operator can delete everything about them.{later}")

    async def compress_now(self) -> str:
        report = await self.jobs.run_due()
        return "Memory jobs ran: " + report.summary() + "."


def _nothing_deleted(exc: Exception) -> str:
    """A failed deletion is one rolled-back transaction: say so, with the store's one-sentence reason."""
    reason = str(exc) if isinstance(exc, StoreError) else "storage is unavailable"
    return f"Sorry, nothing was deleted: {reason}. Please try again later."


def _conversations(n: int, adjective: str = "") -> str:
    """'1 conversation is' / '2 newer conversations are': the /memory text reads as a sentence."""
    return f"1 {adjective}conversation is" if n == 1 else f"{n} {adjective}conversations are"


def _duration(seconds: float) -> str:
    """300 -> '5 minutes', 3600 -> '1 hour', 90 -> '90 seconds': how long, in the largest whole unit."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}" + ("" if n == 1 else "s")
    n = round(seconds)
    return f"{n} second" + ("" if n == 1 else "s")


def _every(seconds: float) -> str:
    """'every 5 minutes', 'every hour'."""
    text = _duration(seconds)
    return "every " + (text[2:] if text.startswith("1 ") else text)


class _PartialPump:
    """Carries growing text from the inference thread to an adapter's coroutine, newest text only.

    The adapter decides how often to show it (Telegram and Discord edit at most once a second).
    """

    def __init__(self, on_partial: Callable[[str], Awaitable[None]]) -> None:
        self.on_partial = on_partial
        self.loop = asyncio.get_running_loop()
        self.latest: str | None = None
        self.wake = asyncio.Event()
        self.closing = False
        self.task = asyncio.ensure_future(self._run())

    def feed(self, text: str) -> None:  # called from the inference thread
        self.loop.call_soon_threadsafe(self._set, text)

    def _set(self, text: str) -> None:
        self.latest = text
        self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            text, self.latest = self.latest, None
            if text:
                try:
                    await self.on_partial(defuse_mentions(text))
                except Exception:  # a failed edit must not cost the reply
                    log.warning("streaming update failed", exc_info=True)
            if self.closing and self.latest is None:
                return

    async def stop(self) -> None:
        """Deliver what is pending (an update in flight is awaited, never cut off), then end."""
        await asyncio.sleep(0)  # let feeds already scheduled from the thread land
        self.closing = True
        self.wake.set()
        await self.task
