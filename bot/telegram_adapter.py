"""The Telegram adapter: python-telegram-bot v22 in, the platform-free dispatcher in the middle, Bot API calls out.

It only translates. A Telegram update becomes one `IncomingMessage`; the dispatcher's `Reply` becomes
`sendMessage` / `editMessageText` / `sendDocument` calls. What it decides on its own is Telegram etiquette:

- who is answered: in a private chat every message; in a group only a mention of the bot, a reply to one of
  its messages, or a command (a general `/cmd` only if it is one of ours, `/cmd@otherbot` never). Messages from
  bots, channel posts and edits are ignored, so an edit never makes a second turn;
- updates run concurrently (one slow reply never blocks another chat) while each chat's updates run one
  after the other, in the order Telegram sent them (`ChatOrderedProcessor`);
- a typing action at once and every 4 s until the reply is out; replies split under 4,096 characters;
  plain text only (no parse mode, so model output cannot inject formatting); `AIORateLimiter` keeps the
  flood limits and honours `RetryAfter`; optional streaming edits the reply in place at most once a second;
- what only the person should see (`/memory`, `/export`) is sent to their private chat when asked in a group,
  and `/forget` is confirmed with an inline button that only the person who asked can press.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from aiohttp import web
from telegram import (
    BotCommand,
    BotCommandScopeChat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.config import ConfigError, TelegramSettings
from bot.dispatcher import ADMIN_COMMANDS, USER_COMMANDS
from bot.incoming import IncomingMessage, Reply
from bot.text import defuse_usernames, redact_in_logs, split_message
from memory import inbox
from memory.store import Store

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

# Opt in to PTB's v23 behaviour (time periods as timedelta): nothing here reads them as numbers, and it
# silences the deprecation warning PTB 22 raises inside every RetryAfter.
os.environ.setdefault("PTB_TIMEDELTA", "true")

PLATFORM = "telegram"
MAX_TEXT = 4096  # Telegram's limit for one message
TYPING_INTERVAL = 4.0  # Telegram shows "typing…" for ~5 s
EDIT_INTERVAL = 1.0  # streaming: at most one editMessageText a second
SEND_RETRY_DELAYS = (0.5, 2.0)  # a send that failed in transit is tried again after these pauses
ALLOWED_UPDATES = ("message", "callback_query")
START_DESCRIPTION = "hello, and what I remember about you"
# Commands whose answer is about one person: in a group it goes to their private chat instead.
PRIVATE_COMMANDS = frozenset({"memory", "export"})
KNOWN_COMMANDS = frozenset({"start", *USER_COMMANDS, *ADMIN_COMMANDS})
SENT_PRIVATELY = "I sent you the answer in our private chat."
OPEN_PRIVATE_CHAT = "That is only for your eyes: open a private chat with me (@{bot}), press Start and send /{cmd} there."
NOT_YOUR_BUTTON = "Only the person who asked can answer this."
KEPT = "Okay, I kept everything."

_LINK_PREVIEWS_OFF = LinkPreviewOptions(is_disabled=True)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def telegram_chunks(text: str) -> list[str]:
    """Split at paragraph/line/sentence/word boundaries; Telegram counts UTF-16 units, so re-split if needed.

    Every text the bot sends from a reply goes through here, so @usernames are defused here too."""
    text = defuse_usernames(text)
    limit = MAX_TEXT
    while True:
        parts = split_message(text, limit)
        if all(_utf16_len(part) <= MAX_TEXT for part in parts):
            return parts
        limit = limit * 3 // 4


def _entity_texts(message: Message, text: str) -> list[tuple[MessageEntity, str]]:
    """Each entity with the text it covers. Like PTB's `parse_entities`, but a lone surrogate (which PTB's
    UTF-16 encoding rejects) cannot make the message unreadable: it counts as the one UTF-16 unit it is."""
    entities = message.entities if message.text is not None else message.caption_entities
    units = text.encode("utf-16-le", "surrogatepass")
    return [(e, units[2 * e.offset: 2 * (e.offset + e.length)].decode("utf-16-le", "replace")) for e in entities]


def command_name(text: str) -> tuple[str, str] | None:
    """`/Cmd@bot args` -> ("cmd", "bot"); None when the text is not a command."""
    if not text.startswith("/"):
        return None
    head = text.split(maxsplit=1)[0][1:]
    name, _, target = head.partition("@")
    return (name.lower(), target) if name else None


def _chat_key(update: object) -> int | None:
    chat = update.effective_chat if isinstance(update, Update) else None
    return chat.id if chat is not None else None


class ChatOrderedProcessor(BaseUpdateProcessor):
    """Concurrent updates, except that two updates of the same chat run one after the other, in order.

    PTB starts one task per update in the order Telegram delivered them; each task takes its chat's lock
    (FIFO) before the handlers run, so a chat's second message waits for its first while other chats go on.
    `on_done(update)` runs when an update has been handled (the adapter clears it from the inbox).
    """

    def __init__(self, max_concurrent_updates: int = 256,
                 on_done: Callable[[object], Awaitable[None]] | None = None) -> None:
        super().__init__(max_concurrent_updates)
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        self.on_done = on_done

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        try:
            await self._in_chat_order(update, coroutine)
        finally:
            if self.on_done is not None:
                await self.on_done(update)

    async def _in_chat_order(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = _chat_key(update)
        if key is None:
            await coroutine
            return
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                await coroutine
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


class InboxQueue(asyncio.Queue):  # type: ignore[type-arg]
    """PTB's update queue, except that an update is committed to the inbox (memory/inbox.py) before it is
    queued. PTB tells Telegram it has the updates (the next getUpdates' offset, or the webhook's 200) only
    after queueing them, so a crash can no longer lose a message Telegram will not send again."""

    def __init__(self, store: Store, owner: str | None = None) -> None:
        super().__init__()
        self.store = store
        self.owner = owner  # this process, as the inbox rows name it (memory/inbox.py)
        self.replayed: set[int] = set()

    async def replay(self, update: Update) -> None:
        """Queue an update kept by an earlier run; if Telegram sends it again too, that copy is skipped."""
        self.replayed.add(update.update_id)
        await super().put(update)

    async def put(self, item: object) -> None:
        if isinstance(item, Update):
            problem = inconsistency(item)
            if problem:
                log.warning("Telegram: dropped update %d: %s", item.update_id, problem)
                return
            if item.update_id in self.replayed:
                self.replayed.discard(item.update_id)
                return
            user = item.effective_user
            try:
                await inbox.keep(self.store, PLATFORM, item.update_id, str(user.id) if user else None,
                                 item.to_json(), owner=self.owner)
            except Exception as exc:  # e.g. disk full: still handle it, as PTB alone would
                log.error("Telegram: could not keep update %d before confirming it: %s", item.update_id, exc)
        await super().put(item)


def inconsistency(update: Update) -> str | None:
    """Why an update cannot be genuine, or None. In a private chat the chat is the person: a message or button
    press there "from" someone else is forged (e.g. posted to an unprotected webhook to read another person's
    /export), so it is dropped before it is stored or handled."""
    message = update.message or update.edited_message
    if message is not None and message.chat.type == "private":
        sender = message.from_user
        if sender is None or sender.id != message.chat.id:
            return f"a private chat {message.chat.id} message from {sender.id if sender else 'nobody'}"
    query = update.callback_query
    if query is not None and query.message is not None and query.message.chat.type == "private":
        if query.from_user.id != query.message.chat.id:
            return f"a button in private chat {query.message.chat.id} pressed by {query.from_user.id}"
    return None


class RateLimiter(AIORateLimiter):
    """AIORateLimiter, but typing actions only count against the global limit, not a group's 20 a minute:
    a long reply would otherwise spend the group's budget on "typing…" and delay the reply itself.

    AIORateLimiter picks its limits from the request's `chat_id` alone (`data` is only inspected; the request
    itself goes out unchanged): none means no limit at all, a negative one a group's. So a typing action is
    shown to it as going to a private chat."""

    async def process_request(self, callback: Any, args: Any, kwargs: dict[str, Any], endpoint: str,
                              data: dict[str, Any], rate_limit_args: int | None) -> Any:
        if endpoint == "sendChatAction":
            data = {**data, "chat_id": _SOME_PRIVATE_CHAT}
        return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)


_SOME_PRIVATE_CHAT = 1  # positive: a private chat's id, counted against the global limit only


class _Target:
    """Where and how the replies to one message go."""

    def __init__(self, message: Message, group: bool) -> None:
        self.chat_id = message.chat_id
        self.thread_id = message.message_thread_id if message.is_topic_message else None
        # In a group, quote the message being answered so the thread is clear.
        self.reply_to = ReplyParameters(message.message_id, allow_sending_without_reply=True) if group else None


class _Stream:
    """Grows the reply in place: the first partial is sent, later ones are edited in at most once a second.

    `partial` never waits on Telegram (the model keeps generating); `finish` puts the final text in.
    """

    def __init__(self, adapter: TelegramAdapter, target: _Target) -> None:
        self.adapter = adapter
        self.target = target
        self.message_id: int | None = None
        self.shown = ""
        self.latest = ""
        self.last_push = 0.0
        self._task: asyncio.Task[None] | None = None

    async def partial(self, text: str) -> None:
        self.latest = text
        if self._task is not None and not self._task.done():
            return
        if self.message_id is None or time.monotonic() - self.last_push >= self.adapter.edit_interval:
            self._task = asyncio.create_task(self._push())

    def _preview(self, text: str) -> str:
        chunks = telegram_chunks(text)
        return chunks[0] if chunks else ""

    async def _push(self) -> None:
        text = self._preview(self.latest)
        if not text or text == self.shown:
            return
        try:
            if self.message_id is None:
                sent = await self.adapter._send_text(self.target, text)
                self.message_id = sent.message_id
            else:
                await self.adapter.bot.edit_message_text(text, chat_id=self.target.chat_id,
                                                         message_id=self.message_id,
                                                         link_preview_options=_LINK_PREVIEWS_OFF)
            self.shown = text
        except TelegramError as exc:
            log.debug("streaming update failed: %s", exc)
        finally:
            self.last_push = time.monotonic()

    async def finish(self, chunks: list[str]) -> bool:
        """Put the final text in; False when nothing was shown yet (the caller sends it normally)."""
        if self._task is not None:
            await self._task
        if self.message_id is None:
            return False
        if not chunks:  # nothing to say after all (e.g. the person was forgotten meanwhile)
            with contextlib.suppress(TelegramError):
                await self.adapter.bot.delete_message(self.target.chat_id, self.message_id)
            return True
        first, rest = chunks[0], chunks[1:]
        if first != self.shown:
            await asyncio.sleep(max(0.0, self.last_push + self.adapter.edit_interval - time.monotonic()))
            try:
                await self.adapter.bot.edit_message_text(first, chat_id=self.target.chat_id,
                                                         message_id=self.message_id,
                                                         link_preview_options=_LINK_PREVIEWS_OFF)
                self.shown = first
            except BadRequest as exc:  # e.g. the message was deleted meanwhile: send the text anew
                log.info("could not edit the streamed reply (%s); sending it again", exc)
                rest = chunks
        for chunk in rest:
            await self.adapter._send_text(self.target, chunk, quote=False)
        return True


class TelegramAdapter:
    """`membot run` builds it with the shared app and the token, then awaits `start()` and `stop()`."""

    def __init__(self, app: App, token: str, *, settings: TelegramSettings | None = None) -> None:
        redact_in_logs(token)  # PTB logs its Bot API URL, httpx each request URL: both hold the token
        self.app = app
        self.dispatcher = app.dispatcher
        self.settings = settings or app.settings.telegram
        self.admin_ids = frozenset(self.settings.admin_ids)
        self.typing_interval = TYPING_INTERVAL
        self.edit_interval = EDIT_INTERVAL
        self.send_retry_delays: tuple[float, ...] = SEND_RETRY_DELAYS
        self._webhook = self._webhook_options() if self.settings.mode == "webhook" else None
        self._web_runner: web.AppRunner | None = None
        builder = (
            ApplicationBuilder()
            .token(token)
            .concurrent_updates(ChatOrderedProcessor(on_done=self._handled))
            .rate_limiter(RateLimiter(max_retries=3))
            .update_queue(InboxQueue(app.store, app.jobs.queue.owner))
        )
        if self.settings.base_url:
            builder = builder.base_url(self.settings.base_url)
        if self.settings.base_file_url:
            builder = builder.base_file_url(self.settings.base_file_url)
        self.application: Application = builder.build()
        self.application.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self._on_message))
        self.application.add_handler(CallbackQueryHandler(self._on_button, pattern=r"^forget:"))
        self.application.add_error_handler(self._on_error)

    @property
    def bot(self) -> Any:
        return self.application.bot

    # -- lifecycle ------------------------------------------------------------------------------

    def _webhook_options(self) -> dict[str, Any]:
        s = self.settings
        problem = s.webhook_problem()
        if problem:
            raise ConfigError(problem)
        assert s.webhook_url and s.webhook_secret_env
        secret = os.environ.get(s.webhook_secret_env, "").strip()
        if not secret:
            raise ConfigError(f"telegram.webhook_secret_env: the environment variable {s.webhook_secret_env} "
                              "is not set")
        redact_in_logs(secret)
        return {
            "listen": s.webhook_listen, "port": s.webhook_port, "webhook_url": s.webhook_url,
            "url_path": urlparse(s.webhook_url).path.strip("/"), "secret_token": secret,
        }

    async def start(self) -> None:
        """getMe, register the command menus, then poll (default) or serve the webhook."""
        try:
            await self.application.initialize()
        except InvalidToken:
            # PTB's message quotes the token; ours names the variable instead.
            raise RuntimeError(
                f"Telegram rejected the bot token in {self.settings.token_env}; copy it again from @BotFather "
                "(/mybots → API Token)"
            ) from None
        try:
            await self.register_commands()
            await self.application.start()
            await self._replay_inbox()
            updater = self.application.updater
            assert updater is not None
            if self._webhook is not None:
                await self._serve_webhook()
                log.info("Telegram: @%s receives updates by webhook at %s (listening on %s:%d)",
                         self.bot.username, self.settings.webhook_url, self._webhook["listen"],
                         self._webhook["port"])
            else:
                await updater.start_polling(
                    poll_interval=0.0, timeout=dtm.timedelta(seconds=self.settings.poll_timeout),
                    allowed_updates=list(ALLOWED_UPDATES),
                )
                log.info("Telegram: @%s is polling for updates", self.bot.username)
        except BaseException:
            await self.stop()
            raise

    async def _serve_webhook(self) -> None:
        """Our own endpoint rather than PTB's: it compares the secret in constant time (PTB's handler uses
        `!=`), then hands the update to the same queue polling fills; Telegram gets its 200 only after the
        update is kept in the inbox. Then Telegram is told the URL and the secret."""
        options = self._webhook
        assert options is not None
        server = web.Application(client_max_size=1 << 20)
        server.router.add_post("/" + options["url_path"], self._on_webhook_post)
        self._web_runner = web.AppRunner(server, access_log=None)
        await self._web_runner.setup()
        await web.TCPSite(self._web_runner, options["listen"], options["port"]).start()
        await self.bot.set_webhook(url=options["webhook_url"], secret_token=options["secret_token"],
                                   allowed_updates=list(ALLOWED_UPDATES))

    async def _on_webhook_post(self, request: web.Request) -> web.Response:
        options = self._webhook
        assert options is not None
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(given.encode(), options["secret_token"].encode()):
            log.warning("Telegram: refused a webhook post without the right secret from %s", request.remote)
            return web.Response(status=403)
        try:
            update = Update.de_json(await request.json(), self.bot)
        except Exception as exc:  # not JSON, not an update: nothing Telegram sends
            log.warning("Telegram: refused a malformed webhook post: %s", exc)
            return web.Response(status=400)
        await self.application.update_queue.put(update)
        return web.Response(status=200)

    async def stop(self) -> None:
        """Stop fetching, let the updates in hand finish (their replies are sent), then close."""
        if self._web_runner is not None:
            await self._web_runner.cleanup()
            self._web_runner = None
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()

    async def _replay_inbox(self) -> None:
        """Updates a crash (or kill) left unhandled go first; messages already stored are not stored again."""
        rows = await inbox.pending(self.app.store, PLATFORM, self.app.jobs.queue.owner)
        for update_id, payload in rows:
            try:
                update = Update.de_json(json.loads(payload), self.bot)
            except Exception as exc:  # unreadable: nothing to do with it
                log.warning("Telegram: dropping unreadable kept update %d: %s", update_id, exc)
                await inbox.done(self.app.store, PLATFORM, update_id)
                continue
            queue = self.application.update_queue
            await (queue.replay(update) if isinstance(queue, InboxQueue) else queue.put(update))
        if rows:
            log.info("Telegram: handling %d update(s) received before the last stop", len(rows))

    async def _handled(self, update: object) -> None:
        if isinstance(update, Update):
            try:
                await inbox.done(self.app.store, PLATFORM, update.update_id)
            except Exception as exc:
                log.warning("Telegram: could not clear handled update %d: %s", update.update_id, exc)

    async def register_commands(self) -> None:
        """The menu: user commands for everyone, plus the admin commands in each admin's private chat."""
        user = [BotCommand("start", START_DESCRIPTION)] + [BotCommand(k, v) for k, v in USER_COMMANDS.items()]
        admin = user + [BotCommand(k, v) for k, v in ADMIN_COMMANDS.items()]
        try:
            await self.bot.set_my_commands(user)
        except TelegramError as exc:
            log.warning("Telegram: could not register the command menu: %s", exc)
        for admin_id in sorted(self.admin_ids):
            try:
                await self.bot.set_my_commands(admin, scope=BotCommandScopeChat(admin_id))
            except TelegramError as exc:  # e.g. the admin never opened a chat with the bot
                log.warning("Telegram: could not register the admin menu for %d: %s", admin_id, exc)

    # -- incoming messages ----------------------------------------------------------------------

    def to_incoming(self, message: Message) -> IncomingMessage | None:
        """The platform-free message, or None when the bot should stay quiet."""
        user, chat = message.from_user, message.chat
        if user is None or user.is_bot or chat.type == ChatType.CHANNEL:
            return None  # other bots, anonymous admins, channels speaking in a group
        text = message.text if message.text is not None else message.caption
        private = chat.type == ChatType.PRIVATE
        if private:
            if text is None and message.effective_attachment is None:
                return None  # service messages
            text = text or ""  # a sticker or photo without caption: the dispatcher says it reads text only
        else:
            if text is None:
                return None
            text = self._addressed(message, text)
            if text is None:
                return None
        return IncomingMessage(
            platform=PLATFORM, user_id=str(user.id), display_name=user.first_name or user.username or str(user.id),
            chat_id=str(chat.id), chat_kind="dm" if private else "group", text=text,
            message_id=str(message.message_id), chat_title=chat.title or "", is_admin=user.id in self.admin_ids,
        )

    def _addressed(self, message: Message, text: str) -> str | None:
        """In a group: the text to answer (the bot's @mention removed), or None if not meant for the bot."""
        username = self.bot.username or ""
        command = command_name(text)
        if command is not None:
            name, target = command
            if target:
                return text if target.lower() == username.lower() else None
            return text if name in KNOWN_COMMANDS else None  # a general /cmd meant for another bot
        mentioned = any(
            (e.type == MessageEntity.MENTION and value.lower() == f"@{username}".lower())
            or (e.type == MessageEntity.TEXT_MENTION and e.user is not None and e.user.id == self.bot.id)
            for e, value in _entity_texts(message, text)
        )
        replied = message.reply_to_message
        to_bot = (replied is not None and replied.from_user is not None and replied.from_user.id == self.bot.id
                  and replied.forum_topic_created is None)
        if not (mentioned or to_bot):
            return None
        if username:
            stripped = re.sub(rf"(?<!\w)@{re.escape(username)}\b", " ", text, flags=re.IGNORECASE)
            stripped = re.sub(r"[ \t]{2,}", " ", stripped).strip()
            return stripped or text
        return text

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        incoming = self.to_incoming(message)
        if incoming is None:
            return
        target = _Target(message, incoming.chat_kind == "group")
        typing = asyncio.create_task(self._keep_typing(target))
        try:
            command = command_name(incoming.text)
            stream = _Stream(self, target) if self.settings.streaming and command is None else None
            await self.dispatcher.handle(
                incoming, on_partial=stream.partial if stream else None,
                deliver=lambda reply: self._deliver(incoming, target, reply, command[0] if command else None,
                                                    stream))
        except Forbidden as exc:
            log.info("Telegram: cannot write to chat %s: %s", message.chat_id, exc)
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing

    async def _keep_typing(self, target: _Target) -> None:
        while True:
            try:
                await self.bot.send_chat_action(target.chat_id, ChatAction.TYPING, message_thread_id=target.thread_id)
            except TelegramError as exc:
                log.debug("typing action failed: %s", exc)
            await asyncio.sleep(self.typing_interval)

    # -- replies --------------------------------------------------------------------------------

    async def _resend(self, send: Callable[[], Awaitable[Any]]) -> Any:
        """A send that failed on the way (Telegram's 5xx, a dropped connection, a timeout) is tried again,
        twice; other errors (blocked, bad request) are final, and 429s are the rate limiter's."""
        for delay in (*self.send_retry_delays, None):
            try:
                return await send()
            except NetworkError as exc:
                if delay is None:
                    raise
                log.info("Telegram: sending failed (%s); trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        return None  # pragma: no cover - the loop returns or raises

    async def _send_text(self, target: _Target, text: str, *, quote: bool = True, **kwargs: Any) -> Message:
        return await self._resend(lambda: self.bot.send_message(
            target.chat_id, text, message_thread_id=target.thread_id,
            reply_parameters=target.reply_to if quote else None, link_preview_options=_LINK_PREVIEWS_OFF,
            **kwargs,
        ))

    async def _deliver(self, incoming: IncomingMessage, target: _Target, reply: Reply, command: str | None,
                       stream: _Stream | None) -> None:
        chunks = [] if reply.silent else telegram_chunks(reply.text)
        if stream is not None and await stream.finish(chunks):
            if stream.message_id is not None and chunks:
                await self.dispatcher.delivered(reply, str(stream.message_id))
            return
        if reply.silent:
            return
        if reply.confirm == "forget":
            owner = incoming.user_id
            keyboard = InlineKeyboardMarkup([[
                InlineKeyboardButton("Yes, delete everything", callback_data=f"forget:yes:{owner}"),
                InlineKeyboardButton("No, keep it", callback_data=f"forget:no:{owner}"),
            ]])
            await self._send_text(target, reply.text, reply_markup=keyboard)
            return
        if incoming.chat_kind == "group" and command in PRIVATE_COMMANDS and reply.kind == "command":
            await self._deliver_privately(incoming, target, reply, command)
            return
        if reply.document is not None:
            await self._resend(lambda: self.bot.send_document(
                target.chat_id, reply.document, filename=reply.filename, caption=reply.text or None,
                message_thread_id=target.thread_id, reply_parameters=target.reply_to,
            ))
            return
        for index, chunk in enumerate(chunks):
            sent = await self._send_text(target, chunk, quote=index == 0)
            if index == 0:
                await self.dispatcher.delivered(reply, str(sent.message_id))

    async def _deliver_privately(self, incoming: IncomingMessage, target: _Target, reply: Reply,
                                 command: str) -> None:
        """Group privacy: a person's memory or data goes to their private chat, never to the group."""
        user_chat = int(incoming.user_id)
        try:
            if reply.document is not None:
                await self.bot.send_document(user_chat, reply.document, filename=reply.filename,
                                             caption=reply.text or None)
            else:
                for chunk in telegram_chunks(reply.text):
                    await self.bot.send_message(user_chat, chunk, link_preview_options=_LINK_PREVIEWS_OFF)
            note = SENT_PRIVATELY
        except (Forbidden, BadRequest) as exc:  # the person never started a private chat with the bot
            log.debug("could not answer /%s privately: %s", command, exc)
            note = OPEN_PRIVATE_CHAT.format(bot=self.bot.username, cmd=command)
        await self._send_text(target, note)

    # -- buttons and errors ---------------------------------------------------------------------

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """`forget:yes:<user id>` / `forget:no:<user id>`: only that user's press counts."""
        query = update.callback_query
        if query is None:
            return
        _, answer, owner = [*(query.data or "").split(":"), "", ""][:3]
        if answer not in ("yes", "no") or not owner:
            await query.answer()
            return
        if str(query.from_user.id) != owner:
            await query.answer(NOT_YOUR_BUTTON, show_alert=True)
            return
        result = await self.dispatcher.forget(PLATFORM, owner) if answer == "yes" else KEPT
        await query.answer()
        try:
            await query.edit_message_text(result)  # also removes the buttons
        except BadRequest as exc:
            log.debug("could not edit the confirmation: %s", exc)
            if query.message is not None:
                await self.bot.send_message(query.message.chat.id, result)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram: error while handling an update: %s", context.error, exc_info=context.error)

