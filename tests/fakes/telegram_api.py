"""In-process fake of the Telegram Bot API (api.telegram.org) for tests and harnesses.

Why: the real python-telegram-bot ``Application`` must be exercised end to end (HTTP,
JSON/multipart encoding, long polling, error mapping) without network access. This server
speaks the same wire protocol, so PTB runs unmodified against it:

    async with FakeTelegramServer(bot_token="123:ABC") as server:
        app = (ApplicationBuilder().token(server.bot_token).base_url(server.base_url)
               .base_file_url(server.base_file_url).build())

PTB builds request URLs as ``base_url + token + "/" + method`` (see ``telegram._bot.
_parse_base_url``), hence ``base_url`` ends in ``/bot`` exactly like the real default.

It is deliberately strict where real Telegram is strict and bots commonly break in
production: unconfirmed updates are re-delivered until confirmed via ``offset``, a second
``getUpdates`` terminates the first with 409, ``parse_mode`` text is parsed (HTML,
MarkdownV2, Markdown) and rejected like Telegram does, messages longer than 4096
characters are rejected, editing to identical content gives "message is not modified".

Run standalone (for benchmarks / crash-recovery harnesses driven from another process)::

    python -m tests.fakes.telegram_api --port 0

prints one JSON line (base_url, base_file_url, control_url, ...) and serves until SIGTERM.
The control API lives under ``/_control/`` on the same port (see ``_handle_control``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import html
import inspect
import itertools
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import BodyPartReader, web

__all__ = [
    "ApiCall",
    "FakeTelegramServer",
    "TelegramApiError",
    "UploadedFile",
    "auto_entities",
    "parse_formatted_text",
    "utf16_len",
]

JSONDict = dict[str, Any]
CallPredicate = Callable[["ApiCall"], bool]
MethodHandler = Callable[["ApiCall"], Any]

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
ANONYMOUS_ADMIN_BOT_ID = 1087968824

# Update types Telegram delivers when allowed_updates was never set (or set to []).
_DEFAULT_ALLOWED_UPDATES = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
    }
)

# Parameters whose form-encoded value is a plain string even if it looks like JSON
# (PTB sends str parameters unencoded, everything else json.dumps'ed).
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "callback_query_id",
        "inline_query_id",
        "inline_message_id",
        "business_connection_id",
        "message_effect_id",
        "url",
        "description",
        "short_description",
        "name",
        "title",
        "emoji",
        "query",
        "action",
        "secret_token",
        "language_code",
        "custom_title",
        "question",
        "explanation",
        "address",
        "first_name",
        "last_name",
        "vcard",
        "phone_number",
        "payload",
        "provider_token",
        "currency",
        "start_parameter",
        "next_offset",
        "switch_pm_text",
        "switch_pm_parameter",
        "file_id",
        "sticker_set_name",
        "gift_id",
        "ip_address",
        "certificate",
    }
)

_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

_MEDIA_METHODS = {
    "senddocument": "document",
    "sendphoto": "photo",
    "sendaudio": "audio",
    "sendvoice": "voice",
    "sendvideo": "video",
    "sendanimation": "animation",
    "sendsticker": "sticker",
    "sendvideonote": "video_note",
}

_DEFAULT_MIME = {
    "document": "application/octet-stream",
    "photo": "image/jpeg",
    "audio": "audio/mpeg",
    "voice": "audio/ogg",
    "video": "video/mp4",
    "animation": "video/mp4",
    "sticker": "image/webp",
    "video_note": "video/mp4",
}


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    """One multipart file part, kept so tests can assert on the exact bytes sent."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclasses.dataclass
class ApiCall:
    """One Bot API request as the server saw it.

    ``params`` holds decoded values (ints, dicts, lists; str for text-like fields; bytes
    for uploaded files). ``raw_params`` holds what was on the wire. ``response``/``error``
    are filled once the server answered (``done``); the call is recorded on arrival so a
    test can observe slow/delayed requests while they are in flight.
    """

    seq: int
    method: str
    params: JSONDict
    raw_params: JSONDict
    files: dict[str, UploadedFile]
    time: float
    http_method: str
    token: str
    response: Any = None
    error: JSONDict | None = None
    done: bool = False

    @property
    def ok(self) -> bool:
        """True once answered successfully."""
        return self.done and self.error is None

    def to_json(self) -> JSONDict:
        """JSON-safe form for the control API (bytes become base64)."""
        return {
            "seq": self.seq,
            "method": self.method,
            "params": _jsonable(self.params),
            "files": {
                name: {
                    "filename": f.filename,
                    "content_type": f.content_type,
                    "size": len(f.data),
                    "data_b64": base64.b64encode(f.data).decode("ascii"),
                }
                for name, f in self.files.items()
            },
            "time": self.time,
            "http_method": self.http_method,
            "response": _jsonable(self.response),
            "error": self.error,
            "done": self.done,
        }


class TelegramApiError(Exception):
    """An error answer in Telegram's exact shape; raise it from custom method handlers."""

    def __init__(
        self,
        error_code: int,
        description: str,
        parameters: JSONDict | None = None,
    ) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def payload(self) -> JSONDict:
        """Body Telegram sends: ok/error_code/description[/parameters]."""
        body: JSONDict = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad_request(text: str) -> TelegramApiError:
    return TelegramApiError(400, f"Bad Request: {text}")


@dataclasses.dataclass
class _Fault:
    error_code: int
    description: str
    parameters: JSONDict | None
    remaining: int
    body: str | None
    disconnect: bool


@dataclasses.dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    filename: str | None
    mime_type: str | None
    data: bytes


# --------------------------------------------------------------------------- text utils


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram uses for entity offsets."""
    return len(text.encode("utf-16-le")) // 2


_ENTITY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bot_command", re.compile(r"(?<![\w/@])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w/@])")),
    ("mention", re.compile(r"(?<![\w@/])@[A-Za-z0-9_]{5,32}(?![\w@])")),
    ("hashtag", re.compile(r"(?<![\w#])#(?=\w*[^\W\d])\w+")),
    ("url", re.compile(r"(?<![\w@])https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'}]")),
)


def auto_entities(text: str) -> list[JSONDict]:
    """Detect the entities Telegram adds to incoming text (commands, @mentions, ...).

    Offsets/lengths are UTF-16 code units, as PTB's ``Message.parse_entity`` expects.
    """
    found: list[tuple[int, int, str]] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern in _ENTITY_PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            taken.append((start, end))
            found.append((start, end, kind))
    found.sort()
    return [
        {
            "type": kind,
            "offset": utf16_len(text[:start]),
            "length": utf16_len(text[start:end]),
        }
        for start, end, kind in found
    ]


class _EntityParseError(Exception):
    pass


class _TextBuilder:
    """Accumulates plain text while tracking the UTF-16 position for entity offsets."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.entities: list[JSONDict] = []

    def emit(self, chunk: str) -> None:
        self.parts.append(chunk)
        self.pos += utf16_len(chunk)

    def add_entity(self, kind: str, start: int, **extra: Any) -> None:
        if self.pos > start:
            entity: JSONDict = {"type": kind, "offset": start, "length": self.pos - start}
            entity.update({k: v for k, v in extra.items() if v is not None})
            self.entities.append(entity)

    def result(self) -> tuple[str, list[JSONDict]]:
        self.entities.sort(key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.parts), self.entities


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
}


def _parse_markdown_v2(text: str) -> tuple[str, list[JSONDict]]:
    out = _TextBuilder()
    stack: list[tuple[str, int, int, str | None]] = []  # kind, u16 start, byte off, language
    quote_start: int | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        top = stack[-1][0] if stack else None
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            out.emit(text[i + 1])
            i += 2
            continue
        if top == "code":
            if c == "`":
                kind, start, _, _ = stack.pop()
                out.add_entity(kind, start)
            else:
                out.emit(c)
            i += 1
            continue
        if top == "pre":
            if text.startswith("```", i):
                kind, start, _, language = stack.pop()
                out.add_entity(kind, start, language=language)
                i += 3
            else:
                out.emit(c)
                i += 1
            continue
        if c == "\n" and quote_start is not None and not text.startswith(">", i + 1):
            out.add_entity("blockquote", quote_start)
            quote_start = None
        if c not in _MDV2_RESERVED:
            out.emit(c)
            i += 1
            continue
        if c == ">" and (i == 0 or text[i - 1] == "\n"):
            if quote_start is None:
                quote_start = out.pos
            i += 1
            continue
        # Closing the innermost entity?
        close = 0
        if top == "bold" and c == "*":
            close = 1
        elif top == "italic" and c == "_":
            close = 1
        elif top == "underline" and text.startswith("__", i):
            close = 2
        elif top == "strikethrough" and c == "~":
            close = 1
        elif top == "spoiler" and text.startswith("||", i):
            close = 2
        if close:
            kind, start, _, _ = stack.pop()
            out.add_entity(kind, start)
            i += close
            continue
        if top in ("text_link", "custom_emoji") and c == "]":
            kind, start, offset, _ = stack.pop()
            url = ""
            i += 1
            if i < n and text[i] == "(":
                j = i + 1
                chars: list[str] = []
                while j < n and text[j] != ")":
                    if text[j] == "\\" and j + 1 < n and 0 < ord(text[j + 1]) <= 126:
                        j += 1
                    chars.append(text[j])
                    j += 1
                if j >= n:
                    raise _EntityParseError(f"Can't find end of a URL at byte offset {_byte_offset(text, i)}")
                url = "".join(chars)
                i = j + 1
            if kind == "custom_emoji":
                emoji_id = url.partition("tg://emoji?id=")[2]
                if not emoji_id:
                    raise _EntityParseError(
                        f"Custom emoji entity must contain a tg://emoji URL at byte offset {offset}"
                    )
                out.add_entity(kind, start, custom_emoji_id=emoji_id)
            elif url:
                out.add_entity(kind, start, url=url)
            continue
        # Opening a new entity.
        offset = _byte_offset(text, i)
        if c == "*":
            stack.append(("bold", out.pos, offset, None))
            i += 1
        elif c == "_":
            if text.startswith("__", i):
                stack.append(("underline", out.pos, offset, None))
                i += 2
            else:
                stack.append(("italic", out.pos, offset, None))
                i += 1
        elif c == "~":
            stack.append(("strikethrough", out.pos, offset, None))
            i += 1
        elif c == "|" and text.startswith("||", i):
            stack.append(("spoiler", out.pos, offset, None))
            i += 2
        elif c == "[":
            stack.append(("text_link", out.pos, offset, None))
            i += 1
        elif c == "!" and text.startswith("![", i):
            stack.append(("custom_emoji", out.pos, offset, None))
            i += 2
        elif text.startswith("```", i):
            i += 3
            language = None
            newline = text.find("\n", i)
            fence = text.find("```", i)
            if newline != -1 and (fence == -1 or newline < fence):
                first_line = text[i:newline]
                if first_line and not any(ch.isspace() for ch in first_line):
                    language = first_line
                    i = newline + 1
            stack.append(("pre", out.pos, offset, language))
        elif c == "`":
            stack.append(("code", out.pos, offset, None))
            i += 1
        else:
            raise _EntityParseError(
                f"Character '{c}' is reserved and must be escaped with the preceding '\\'"
            )
    if stack:
        kind, _, offset, _ = stack[-1]
        raise _EntityParseError(f"Can't find end of {_MDV2_NAMES[kind]} entity at byte offset {offset}")
    if quote_start is not None:
        out.add_entity("blockquote", quote_start)
    return out.result()


def _parse_markdown_legacy(text: str) -> tuple[str, list[JSONDict]]:
    out = _TextBuilder()
    i, n = 0, len(text)
    kinds = {"*": "bold", "_": "italic", "`": "code", "[": "text_link"}
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.emit(text[i + 1])
            i += 2
            continue
        if c not in kinds:
            out.emit(c)
            i += 1
            continue
        begin = i
        start = out.pos
        if text.startswith("```", i):
            end_marker, kind, i = "```", "pre", i + 3
        else:
            end_marker, kind, i = ("]" if c == "[" else c), kinds[c], i + 1
        language = None
        if kind == "pre":
            newline = text.find("\n", i)
            fence = text.find("```", i)
            if newline != -1 and fence != -1 and newline < fence:
                first_line = text[i:newline]
                if first_line and not any(ch.isspace() for ch in first_line):
                    language, i = first_line, newline + 1
        end = text.find(end_marker, i)
        if end == -1:
            raise _EntityParseError(
                f"Can't find end of the entity starting at byte offset {_byte_offset(text, begin)}"
            )
        out.emit(text[i:end])
        i = end + len(end_marker)
        if kind == "text_link":
            url = None
            if i < n and text[i] == "(":
                close = text.find(")", i)
                if close != -1:
                    url, i = text[i + 1 : close], close + 1
            if url:
                out.add_entity(kind, start, url=url)
        else:
            out.add_entity(kind, start, language=language)
    return out.result()


_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_HTML_ENTITY_RE = re.compile(r"&(#[0-9]{1,7}|#x[0-9a-fA-F]{1,6}|lt|gt|amp|quot);")
_HTML_ATTR_RE = re.compile(r"\s*([a-zA-Z-]+)\s*(?:=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?")


def _parse_html(text: str) -> tuple[str, list[JSONDict]]:
    out = _TextBuilder()
    stack: list[tuple[str, int, dict[str, str]]] = []  # tag, u16 start, attributes
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "&":
            match = _HTML_ENTITY_RE.match(text, i)
            if match:
                out.emit(html.unescape(match.group(0)))
                i = match.end()
            else:
                out.emit(c)
                i += 1
            continue
        if c != "<":
            out.emit(c)
            i += 1
            continue
        offset = _byte_offset(text, i)
        if text.startswith("</", i):
            close = text.find(">", i)
            if close == -1:
                raise _EntityParseError(f"Unclosed end tag at byte offset {offset}")
            name = text[i + 2 : close].strip().lower()
            if not stack:
                raise _EntityParseError(f"Unexpected end tag at byte offset {offset}")
            tag, start, attrs = stack[-1]
            if name != tag:
                raise _EntityParseError(
                    f'Unmatched end tag at byte offset {offset}, expected "</{tag}>", found "</{name}>"'
                )
            stack.pop()
            _close_html_entity(out, tag, start, attrs, stack)
            i = close + 1
            continue
        j = i + 1
        while j < n and (text[j].isalnum() or text[j] == "-"):
            j += 1
        name = text[i + 1 : j].lower()
        if name not in _HTML_TAGS:
            raise _EntityParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
        close = text.find(">", j)
        if close == -1:
            raise _EntityParseError(f"Unclosed start tag at byte offset {offset}")
        attrs: dict[str, str] = {}
        for attr in _HTML_ATTR_RE.finditer(text[j:close]):
            value = attr.group(2) or ""
            if value[:1] in ("'", '"'):
                value = value[1:-1]
            attrs[attr.group(1).lower()] = html.unescape(value)
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise _EntityParseError('Tag "span" must have class "tg-spoiler"')
        stack.append((name, out.pos, attrs))
        i = close + 1
    if stack:
        raise _EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return out.result()


def _close_html_entity(
    out: _TextBuilder,
    tag: str,
    start: int,
    attrs: dict[str, str],
    stack: list[tuple[str, int, dict[str, str]]],
) -> None:
    kind = _HTML_TAGS[tag]
    if kind == "text_link":
        href = attrs.get("href")
        if href:
            out.add_entity(kind, start, url=href)
    elif kind == "custom_emoji":
        out.add_entity(kind, start, custom_emoji_id=attrs.get("emoji-id"))
    elif kind == "code" and stack and stack[-1][0] == "pre":
        language = attrs.get("class", "").removeprefix("language-") or None
        if language:
            stack[-1][2]["_language"] = language
    elif kind == "pre":
        out.add_entity(kind, start, language=attrs.get("_language"))
    elif kind == "blockquote" and "expandable" in attrs:
        out.add_entity("expandable_blockquote", start)
    else:
        out.add_entity(kind, start)


def parse_formatted_text(text: str, parse_mode: str | None) -> tuple[str, list[JSONDict]]:
    """Turn text+parse_mode into Telegram's (plain text, entities), or raise like Telegram.

    Raises TelegramApiError(400, "Bad Request: can't parse entities: ...") on markup that
    Telegram rejects (e.g. an unescaped '.' in MarkdownV2, ``<br>`` in HTML).
    """
    mode = (parse_mode or "").lower()
    parser = {"markdownv2": _parse_markdown_v2, "markdown": _parse_markdown_legacy, "html": _parse_html}
    if not mode:
        return text, []
    if mode not in parser:
        raise _bad_request(f"unsupported parse_mode {parse_mode!r}")
    try:
        return parser[mode](text)
    except _EntityParseError as exc:
        raise _bad_request(f"can't parse entities: {exc}") from None


# --------------------------------------------------------------------------- helpers


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"__bytes_b64__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_JSON_LIKE = re.compile(r"^\s*(?:[\[{\"]|-?\d|true$|false$|null$)")


def _decode_param(name: str, value: str) -> Any:
    """Undo PTB's form encoding: non-str values were json.dumps'ed, str values were not."""
    if name in _STRING_PARAMS or not _JSON_LIKE.match(value):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _as_int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid integer value {value!r}") from None


def _as_float(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid number value {value!r}") from None


def _update_type(update: JSONDict) -> str:
    return next((key for key in update if key != "update_id"), "")


def _same_method(a: str, b: str) -> bool:
    return b == "*" or a.lower() == b.lower()


def _clean(d: JSONDict) -> JSONDict:
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------- server


class FakeTelegramServer:
    """Fake api.telegram.org bound to 127.0.0.1 on a free port (see module docstring).

    All helper methods are plain (non-async) and must be called from the server's event
    loop; other processes use the HTTP control API instead.
    """

    def __init__(
        self,
        bot_token: str = "123:ABC",
        bot_username: str = "membot_test_bot",
        *,
        bot_first_name: str = "Membot Test",
        host: str = "127.0.0.1",
        port: int = 0,
        first_update_id: int = 1,
        validate_formatting: bool = True,
    ) -> None:
        self.bot_token = bot_token
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        self.host = host
        self.validate_formatting = validate_formatting
        try:
            self.bot_id = int(bot_token.split(":", 1)[0])
        except ValueError:
            raise ValueError(f"bot token must look like '<int>:<secret>', got {bot_token!r}") from None
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._closing = False

        self.calls: list[ApiCall] = []
        self._calls_changed = asyncio.Event()
        self._seq = itertools.count(1)

        self._pending: list[JSONDict] = []
        self._next_update_id = first_update_id
        self._updates_changed = asyncio.Event()
        self._poll_generation = 0
        self._allowed_updates: frozenset[str] = _DEFAULT_ALLOWED_UPDATES
        self.confirmed_update_id = 0  # highest update_id confirmed via offset
        self.webhook: JSONDict | None = None

        self._faults: dict[str, list[_Fault]] = {}
        self._delays: dict[str, float] = {}
        self._handlers: dict[str, MethodHandler] = {}

        self.chats: dict[int, JSONDict] = {}
        self.messages: dict[tuple[int, int], JSONDict] = {}
        self._message_ids: dict[int, int] = {}
        self.files: dict[str, _StoredFile] = {}
        self._file_counter = itertools.count(1)
        self._callback_counter = itertools.count(1)
        self.commands: dict[str, list[JSONDict]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeTelegramServer:
        """Bind and start serving; returns self for chaining."""
        if self._runner is not None:
            return self
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_route("GET", "/file/bot{token}/{path:.+}", self._handle_file)
        app.router.add_route("*", "/_control/{action}", self._handle_control)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = site.port
        self._closing = False
        return self

    async def stop(self) -> None:
        """Release pending long polls (they return []) and close the listener."""
        if self._runner is None:
            return
        self._closing = True
        self._wake_pollers()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeTelegramServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeTelegramServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """Value for ApplicationBuilder.base_url (PTB appends token + '/method')."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """Value for ApplicationBuilder.base_file_url (PTB appends token + '/file_path')."""
        return f"{self.url}/file/bot"

    @property
    def control_url(self) -> str:
        return f"{self.url}/_control"

    @property
    def bot_user(self) -> JSONDict:
        """The bot's User object (as in getMe / message.from)."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    def describe(self) -> JSONDict:
        """Connection info (what the standalone mode prints)."""
        return {
            "base_url": self.base_url,
            "base_file_url": self.base_file_url,
            "control_url": self.control_url,
            "token": self.bot_token,
            "bot_id": self.bot_id,
            "bot_username": self.bot_username,
            "port": self.port,
        }

    # ------------------------------------------------------------------ call inspection

    def calls_of(self, method: str) -> list[ApiCall]:
        """All recorded calls of a method (case-insensitive; '*' = all)."""
        return [c for c in self.calls if _same_method(c.method, method)]

    async def wait_for_call(
        self,
        method: str,
        predicate: CallPredicate | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the API the tests want; asyncio.timeout inside
        *,
        start: int = 0,
        done: bool = False,
    ) -> ApiCall:
        """First call (from index ``start`` of ``calls``) matching method+predicate.

        Returns as soon as it arrives, so ``call.response`` may still be pending; pass
        ``done=True`` to wait for the answer too (e.g. to read the sent message_id). Pass
        ``start=len(server.calls)`` to ignore calls made before an action.
        """
        calls = await self.wait_for_calls(method, 1, predicate, timeout, start=start, done=done)
        return calls[0]

    async def wait_for_calls(
        self,
        method: str,
        count: int,
        predicate: CallPredicate | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the API the tests want; asyncio.timeout inside
        *,
        start: int = 0,
        done: bool = False,
    ) -> list[ApiCall]:
        """Wait until ``count`` matching calls exist; returns the first ``count``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._calls_changed
            matches = [
                c
                for c in self.calls[start:]
                if _same_method(c.method, method)
                and (c.done or not done)
                and (predicate is None or predicate(c))
            ]
            if len(matches) >= count:
                return matches[:count]
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = ", ".join(f"{c.method}{c.params!r:.80}" for c in self.calls[-10:])
                raise TimeoutError(
                    f"{len(matches)}/{count} {method} calls matched within {timeout}s; "
                    f"last calls: {seen or 'none'}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def sent_texts(self, chat_id: int | str | None = None) -> list[str]:
        """Texts of successfully answered sendMessage calls, optionally for one chat."""
        return [
            str(c.params.get("text"))
            for c in self.calls_of("sendMessage")
            if c.ok and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    def clear_calls(self) -> None:
        self.calls.clear()

    # ------------------------------------------------------------------ behaviour control

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        *,
        body: str | None = None,
        disconnect: bool = False,
        parameters: JSONDict | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` ('*' = any) fail like Telegram does.

        429 defaults to retry_after=1 and "Too Many Requests: retry after 1". Other codes
        get Telegram's usual description (e.g. 500 "Internal Server Error", 403
        "Forbidden: bot was blocked by the user"). ``body`` sends that raw body instead of
        JSON (e.g. nginx's HTML 502 page); ``disconnect`` drops the connection unanswered.
        Faults queue up: several fail_next calls fire in order.
        """
        if error_code == 429 and retry_after is None:
            retry_after = 1
        params = dict(parameters or {})
        if retry_after is not None:
            params["retry_after"] = retry_after
        if description is None:
            description = {
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden: bot was blocked by the user",
                404: "Not Found",
                409: "Conflict: terminated by other getUpdates request; "
                "make sure that only one bot instance is running",
                429: f"Too Many Requests: retry after {retry_after}",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(error_code, f"Error {error_code}")
        self._faults.setdefault(method.lower(), []).append(
            _Fault(error_code, description, params or None, max(1, times), body, disconnect)
        )

    def set_delay(self, method: str, seconds: float | None) -> None:
        """Delay every answer to ``method`` ('*' = all) by ``seconds`` (None/0 clears)."""
        if seconds:
            self._delays[method.lower()] = float(seconds)
        else:
            self._delays.pop(method.lower(), None)

    def set_handler(self, method: str, handler: MethodHandler | None) -> None:
        """Override/implement a method: ``handler(call)`` (sync or async) returns the result
        or raises TelegramApiError. None restores the built-in behaviour."""
        if handler is None:
            self._handlers.pop(method.lower(), None)
        else:
            self._handlers[method.lower()] = handler

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    # ------------------------------------------------------------------ updates

    def push_update(self, update: JSONDict) -> JSONDict:
        """Queue a raw update (update_id assigned if missing); returns it.

        Messages inside are remembered so the bot can reply to / edit / delete them.
        """
        update = copy.deepcopy(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        for key in ("message", "edited_message", "channel_post", "edited_channel_post"):
            if isinstance(update.get(key), dict):
                self._remember_message(update[key])
        self._pending.append(update)
        self._wake_pollers()
        return copy.deepcopy(update)

    @property
    def pending_updates(self) -> list[JSONDict]:
        """Queued updates not yet confirmed by the bot (via getUpdates offset)."""
        return copy.deepcopy(self._pending)

    async def wait_until_consumed(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every queued update was confirmed by a later getUpdates offset."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending:
            changed = self._updates_changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._pending)} updates still unconfirmed after {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _wake_pollers(self) -> None:
        self._updates_changed.set()
        self._updates_changed = asyncio.Event()

    def _notify_calls(self) -> None:
        self._calls_changed.set()
        self._calls_changed = asyncio.Event()

    # ------------------------------------------------------------------ update builders

    @staticmethod
    def make_user(
        user_id: int,
        first_name: str | None = None,
        username: str | None = None,
        *,
        last_name: str | None = None,
        is_bot: bool = False,
        language_code: str | None = "en",
    ) -> JSONDict:
        """A User object; defaults to first_name 'User<id>' and username 'user<id>' ("" = none)."""
        return _clean(
            {
                "id": user_id,
                "is_bot": is_bot,
                "first_name": first_name or f"User{user_id}",
                "last_name": last_name,
                "username": (username or None) if username is not None else f"user{user_id}",
                "language_code": None if is_bot else language_code,
            }
        )

    def _private_chat(self, user: JSONDict) -> JSONDict:
        return _clean(
            {
                "id": user["id"],
                "type": "private",
                "first_name": user.get("first_name"),
                "last_name": user.get("last_name"),
                "username": user.get("username"),
            }
        )

    def _group_chat(self, chat_id: int, chat_type: str, title: str | None) -> JSONDict:
        if chat_type not in ("group", "supergroup", "channel"):
            raise ValueError(f"chat_type must be group/supergroup/channel, not {chat_type!r}")
        known = self.chats.get(chat_id)
        if known and known.get("type") == chat_type and title is None:
            return dict(known)
        chat: JSONDict = {"id": chat_id, "type": chat_type, "title": title or f"Test {chat_type} {chat_id}"}
        if chat_type == "supergroup":
            chat["is_forum"] = False
        return chat

    def _next_message_id(self, chat_id: int) -> int:
        self._message_ids[chat_id] = self._message_ids.get(chat_id, 0) + 1
        return self._message_ids[chat_id]

    def _remember_message(self, message: JSONDict) -> None:
        chat = message.get("chat") or {}
        chat_id = chat.get("id")
        if not isinstance(chat_id, int):
            return
        self.chats[chat_id] = dict(chat)
        message_id = int(message["message_id"])
        self._message_ids[chat_id] = max(self._message_ids.get(chat_id, 0), message_id)
        self.messages[(chat_id, message_id)] = copy.deepcopy(message)

    def _build_message(
        self,
        chat: JSONDict,
        sender: JSONDict | None,
        text: str | None,
        *,
        entities: list[JSONDict] | None = None,
        reply_to: JSONDict | None = None,
        message_id: int | None = None,
        **extra: Any,
    ) -> JSONDict:
        message: JSONDict = {
            "message_id": message_id or self._next_message_id(chat["id"]),
            "date": int(time.time()),
            "chat": dict(chat),
        }
        if sender is not None:
            message["from"] = dict(sender)
        if text is not None:
            message["text"] = text
            ents = auto_entities(text) if entities is None else entities
            if ents:
                message["entities"] = ents
        if reply_to is not None:
            nested = copy.deepcopy(reply_to)
            nested.pop("reply_to_message", None)
            message["reply_to_message"] = nested
        message.update({k: v for k, v in extra.items() if v is not None})
        return message

    def _reply_target(self, chat_id: int, reply_to: int | None, reply_to_bot: bool) -> JSONDict | None:
        if reply_to is not None:
            found = self.messages.get((chat_id, reply_to))
            if found is None:
                raise KeyError(f"no message {reply_to} in chat {chat_id} to reply to")
            return found
        if not reply_to_bot:
            return None
        bot_messages = [
            m
            for (cid, _), m in self.messages.items()
            if cid == chat_id and (m.get("from") or {}).get("id") == self.bot_id
        ]
        if bot_messages:
            return max(bot_messages, key=lambda m: m["message_id"])
        chat = self.chats.get(chat_id) or self._chat_for_send(chat_id)
        synthetic = self._build_message(chat, self.bot_user, "(earlier bot message)")
        self._remember_message(synthetic)
        return synthetic

    def _queue_message(self, message: JSONDict, key: str = "message") -> JSONDict:
        self.push_update({key: message})
        return copy.deepcopy(message)

    def send_private_text(
        self,
        user_id: int,
        text: str,
        first_name: str | None = None,
        username: str | None = None,
        *,
        entities: list[JSONDict] | None = None,
        reply_to: int | None = None,
        reply_to_bot: bool = False,
        **extra: Any,
    ) -> JSONDict:
        """A user writes to the bot in a private chat; returns the message dict.

        ``entities=None`` auto-detects commands/mentions/URLs like Telegram; pass [] for none.
        """
        user = self.make_user(user_id, first_name, username)
        chat = self._private_chat(user)
        reply = self._reply_target(user_id, reply_to, reply_to_bot)
        message = self._build_message(chat, user, text, entities=entities, reply_to=reply, **extra)
        return self._queue_message(message)

    def send_group_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        entities: list[JSONDict] | None = None,
        reply_to_bot: bool = False,
        *,
        reply_to: int | None = None,
        mention_bot: bool = False,
        chat_type: str = "supergroup",
        title: str | None = None,
        first_name: str | None = None,
        username: str | None = None,
        is_bot: bool = False,
        message_thread_id: int | None = None,
        **extra: Any,
    ) -> JSONDict:
        """A member writes in a group; returns the message dict.

        ``mention_bot`` prefixes "@<bot_username> " (a mention entity is auto-detected);
        ``reply_to_bot`` makes it a reply to the bot's latest message in that chat.
        Note: real Telegram never delivers other bots' messages (``is_bot``) and, with
        privacy mode on, only commands/mentions/replies; the fake delivers everything.
        """
        if mention_bot:
            text = f"@{self.bot_username} {text}"
        user = self.make_user(user_id, first_name, username, is_bot=is_bot)
        chat = self._group_chat(chat_id, chat_type, title)
        reply = self._reply_target(chat_id, reply_to, reply_to_bot)
        message = self._build_message(
            chat, user, text, entities=entities, reply_to=reply, message_thread_id=message_thread_id, **extra
        )
        return self._queue_message(message)

    def send_bot_text(
        self,
        chat_id: int,
        bot_user_id: int,
        text: str,
        *,
        username: str = "other_test_bot",
        chat_type: str = "supergroup",
        **extra: Any,
    ) -> JSONDict:
        """A message from another bot (from.is_bot=True), to test that it is ignored."""
        return self.send_group_text(
            chat_id,
            bot_user_id,
            text,
            chat_type=chat_type,
            username=username,
            first_name=extra.pop("first_name", "OtherBot"),
            is_bot=True,
            **extra,
        )

    def send_command(
        self,
        chat_id: int,
        user_id: int,
        command_text: str,
        chat_type: str = "private",
        *,
        at_bot: bool = False,
        first_name: str | None = None,
        username: str | None = None,
        title: str | None = None,
    ) -> JSONDict:
        """A user sends "/cmd args" (bot_command entity at offset 0).

        ``at_bot`` rewrites to "/cmd@<bot_username> args" as Telegram clients do in groups.
        """
        if not command_text.startswith("/"):
            raise ValueError("command_text must start with '/'")
        head, sep, rest = command_text.partition(" ")
        if at_bot and "@" not in head:
            head = f"{head}@{self.bot_username}"
        text = head + sep + rest
        entities = [{"type": "bot_command", "offset": 0, "length": utf16_len(head)}]
        entities += [e for e in auto_entities(text) if e["offset"] > 0]
        if chat_type == "private":
            if chat_id != user_id:
                raise ValueError("in a private chat chat_id must equal user_id")
            return self.send_private_text(user_id, text, first_name, username, entities=entities)
        return self.send_group_text(
            chat_id,
            user_id,
            text,
            entities=entities,
            chat_type=chat_type,
            title=title,
            first_name=first_name,
            username=username,
        )

    def send_channel_post(
        self,
        chat_id: int,
        text: str,
        *,
        title: str | None = None,
        username: str | None = None,
        entities: list[JSONDict] | None = None,
    ) -> JSONDict:
        """A post in a channel where the bot is admin (``channel_post`` update)."""
        chat = self._group_chat(chat_id, "channel", title)
        if username:
            chat["username"] = username
        message = self._build_message(chat, None, text, entities=entities, sender_chat=dict(chat))
        return self._queue_message(message, "channel_post")

    def send_private_document(
        self,
        user_id: int,
        filename: str,
        data: bytes,
        *,
        caption: str | None = None,
        mime_type: str = "application/octet-stream",
        first_name: str | None = None,
        username: str | None = None,
    ) -> JSONDict:
        """A user uploads a file to the bot; downloadable via getFile + base_file_url."""
        stored = self._store_file(data, filename, mime_type, "documents")
        user = self.make_user(user_id, first_name, username)
        document = self._file_object(stored, "document")
        message = self._build_message(
            self._private_chat(user), user, None, document=document, caption=caption
        )
        return self._queue_message(message)

    def press_button(
        self,
        chat_id: int,
        user_id: int,
        message_id: int,
        data: str,
        *,
        first_name: str | None = None,
        username: str | None = None,
    ) -> JSONDict:
        """A user presses an inline button under message ``message_id``; returns the
        callback_query dict (its ``id`` is what answerCallbackQuery must echo)."""
        message = self.messages.get((chat_id, message_id))
        if message is None:
            chat = self.chats.get(chat_id) or self._chat_for_send(chat_id)
            message = self._build_message(
                chat, self.bot_user, "(message with buttons)", message_id=message_id
            )
            self._remember_message(message)
        query = {
            "id": f"{self.bot_id}{next(self._callback_counter):08d}",
            "from": self.make_user(user_id, first_name, username),
            "message": copy.deepcopy(message),
            "chat_instance": str(abs(hash((self.bot_id, chat_id))) % 10**18),
            "data": data,
        }
        self.push_update({"callback_query": query})
        return copy.deepcopy(query)

    def edit_message(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        *,
        user_id: int | None = None,
        entities: list[JSONDict] | None = None,
    ) -> JSONDict:
        """A user edits an earlier message (``edited_message`` / ``edited_channel_post``)."""
        original = self.messages.get((chat_id, message_id))
        if original is None:
            if user_id is None:
                raise KeyError(f"unknown message {message_id} in chat {chat_id}; pass user_id")
            user = self.make_user(user_id)
            chat = self.chats.get(chat_id) or (
                self._private_chat(user) if chat_id == user_id else self._chat_for_send(chat_id)
            )
            original = self._build_message(chat, user, text, message_id=message_id)
        edited = copy.deepcopy(original)
        edited["text"] = text
        edited.pop("entities", None)
        ents = auto_entities(text) if entities is None else entities
        if ents:
            edited["entities"] = ents
        edited["edit_date"] = int(time.time())
        key = "edited_channel_post" if edited["chat"].get("type") == "channel" else "edited_message"
        self.push_update({key: edited})
        return copy.deepcopy(edited)

    def get_message(self, chat_id: int, message_id: int) -> JSONDict | None:
        """Current state of a message (after the bot's edits), or None if deleted/unknown."""
        message = self.messages.get((chat_id, message_id))
        return copy.deepcopy(message) if message else None

    # ------------------------------------------------------------------ HTTP: Bot API

    async def _read_params(self, request: web.Request) -> tuple[JSONDict, JSONDict, dict[str, UploadedFile]]:
        raw: JSONDict = dict(request.query)
        params: JSONDict = {k: _decode_param(k, v) for k, v in raw.items()}
        files: dict[str, UploadedFile] = {}
        if not request.can_read_body:
            return params, raw, files
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.json()
            if not isinstance(body, dict):
                raise _bad_request("request body must be a JSON object")
            raw.update(body)
            params.update(body)
        elif ctype.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader) or not part.name:
                    continue
                data = bytes(await part.read())
                if part.filename is not None:
                    upload = UploadedFile(part.name, part.filename, part.headers.get("Content-Type"), data)
                    files[part.name] = upload
                    params[part.name] = data
                    raw[part.name] = data
                else:
                    value = data.decode("utf-8", "replace")
                    raw[part.name] = value
                    params[part.name] = _decode_param(part.name, value)
        else:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, str):
                    raw[key] = value
                    params[key] = _decode_param(key, value)
        return params, raw, files

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        method = request.match_info["method"]
        try:
            params, raw, files = await self._read_params(request)
        except TelegramApiError as exc:
            return web.json_response(exc.payload(), status=exc.error_code)
        except ValueError:
            return web.json_response(_bad_request("can't parse request body").payload(), status=400)
        call = ApiCall(
            seq=next(self._seq),
            method=method,
            params=params,
            raw_params=raw,
            files=files,
            time=time.time(),
            http_method=request.method,
            token=token,
        )
        self.calls.append(call)
        self._notify_calls()
        status, payload = 200, None
        try:
            delay = self._delays.get(method.lower(), self._delays.get("*"))
            if delay:
                await asyncio.sleep(delay)
            if token != self.bot_token:
                raise TelegramApiError(401, "Unauthorized")
            fault = self._take_fault(method)
            if fault is not None:
                if fault.disconnect:
                    call.error = {"disconnect": True}
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response(status=500)
                call.error = TelegramApiError(fault.error_code, fault.description, fault.parameters).payload()
                if fault.body is not None:
                    return web.Response(status=fault.error_code, text=fault.body, content_type="text/html")
                raise TelegramApiError(fault.error_code, fault.description, fault.parameters)
            result = await self._dispatch(call)
            call.response = result
            payload = {"ok": True, "result": result}
        except TelegramApiError as exc:
            call.error = exc.payload()
            status, payload = exc.error_code, exc.payload()
        finally:
            call.done = True
            self._notify_calls()
        return web.json_response(payload, status=status)

    def _take_fault(self, method: str) -> _Fault | None:
        for key in (method.lower(), "*"):
            queue = self._faults.get(key)
            if queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.pop(0)
                return fault
        return None

    async def _dispatch(self, call: ApiCall) -> Any:
        name = call.method.lower()
        custom = self._handlers.get(name)
        if custom is not None:
            result = custom(call)
            return await result if inspect.isawaitable(result) else result
        if name in _MEDIA_METHODS:
            return self._m_send_media(call, _MEDIA_METHODS[name])
        builtin: Callable[[ApiCall], Any] | None = getattr(self, f"_m_{name}", None)
        if builtin is None:
            return True  # unknown method: recorded, answered ok
        result = builtin(call)
        return await result if inspect.isawaitable(result) else result

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.bot_token:
            return web.json_response(TelegramApiError(401, "Unauthorized").payload(), status=401)
        path = request.match_info["path"]
        for stored in self.files.values():
            if stored.file_path == path:
                return web.Response(
                    body=stored.data, content_type=stored.mime_type or "application/octet-stream"
                )
        return web.json_response(TelegramApiError(404, "Not Found").payload(), status=404)

    # ------------------------------------------------------------------ Bot API methods

    def _m_getme(self, call: ApiCall) -> JSONDict:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _m_logout(self, call: ApiCall) -> bool:
        return True

    def _m_close(self, call: ApiCall) -> bool:
        return True

    def _drop_pending(self, call: ApiCall) -> None:
        if call.params.get("drop_pending_updates") in (True, "true", "True", 1):
            if self._pending:
                self.confirmed_update_id = max(self.confirmed_update_id, self._pending[-1]["update_id"])
            self._pending.clear()
            self._wake_pollers()

    def _m_deletewebhook(self, call: ApiCall) -> bool:
        self._drop_pending(call)
        self.webhook = None
        self._wake_pollers()
        return True

    def _m_setwebhook(self, call: ApiCall) -> bool:
        url = call.params.get("url") or ""
        self._drop_pending(call)
        self.webhook = dict(call.params) if url else None
        self._wake_pollers()  # a pending getUpdates gets its 409 now
        return True

    def _m_getwebhookinfo(self, call: ApiCall) -> JSONDict:
        hook = self.webhook or {}
        return _clean(
            {
                "url": hook.get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": len(self._pending),
                "max_connections": hook.get("max_connections"),
                "allowed_updates": hook.get("allowed_updates"),
            }
        )

    async def _m_getupdates(self, call: ApiCall) -> list[JSONDict]:
        """Long polling with Telegram's semantics.

        Updates stay queued until a later call passes offset > update_id (so a bot that
        crashes before confirming gets them again); a newer getUpdates ends an older one
        with 409 Conflict; allowed_updates persists between calls.
        """
        params = call.params
        offset = _as_int(params.get("offset"), 0)
        limit = min(100, max(1, _as_int(params.get("limit"), 100)))
        timeout = max(0.0, _as_float(params.get("timeout"), 0.0))
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(allowed) if allowed else _DEFAULT_ALLOWED_UPDATES
        self._confirm(offset)
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_pollers()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._updates_changed
            if self.webhook is not None:
                raise TelegramApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            if generation != self._poll_generation:
                raise TelegramApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            if self._closing:
                return []
            self._pending = [u for u in self._pending if _update_type(u) in self._allowed_updates]
            if self._pending:
                return copy.deepcopy(self._pending[:limit])
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _confirm(self, offset: int) -> None:
        before = len(self._pending)
        if offset > 0:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
            self.confirmed_update_id = max(self.confirmed_update_id, offset - 1)
        elif offset < 0:
            self._pending = self._pending[offset:]
        if len(self._pending) != before:
            self._wake_pollers()

    def _chat_for_send(self, chat_id: Any) -> JSONDict:
        if chat_id is None or chat_id == "":
            raise _bad_request("chat_id is empty")
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            for chat in self.chats.values():
                if chat.get("username", "").lower() == chat_id[1:].lower():
                    return dict(chat)
            raise _bad_request("chat not found")
        cid = _as_int(chat_id, 0)
        if cid in self.chats:
            return dict(self.chats[cid])
        if cid > 0:
            return {"id": cid, "type": "private", "first_name": f"User{cid}"}
        if str(cid).startswith("-100"):
            return {"id": cid, "type": "supergroup", "title": f"Chat {cid}"}
        return {"id": cid, "type": "group", "title": f"Chat {cid}"}

    def _formatted(self, params: JSONDict, key: str, limit: int) -> tuple[str | None, list[JSONDict] | None]:
        text = params.get(key)
        if text is None:
            return None, None
        text = str(text)
        entity_key = "entities" if key == "text" else "caption_entities"
        entities = params.get(entity_key)
        if isinstance(entities, list):
            plain = text
        elif self.validate_formatting:
            plain, entities = parse_formatted_text(text, params.get("parse_mode"))
        else:
            plain, entities = text, []
        if len(plain) > limit:
            raise _bad_request("message is too long" if key == "text" else "message caption is too long")
        return plain, entities or None

    def _reply_for_send(self, chat_id: int, params: JSONDict) -> JSONDict | None:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            target_chat = reply.get("chat_id", chat_id)
            message_id = reply.get("message_id")
            allow_missing = bool(reply.get("allow_sending_without_reply"))
        elif params.get("reply_to_message_id") is not None:
            target_chat = chat_id
            message_id = params.get("reply_to_message_id")
            allow_missing = bool(params.get("allow_sending_without_reply"))
        else:
            return None
        found = self.messages.get((_as_int(target_chat, chat_id), _as_int(message_id, 0)))
        if found is None and not allow_missing:
            raise _bad_request("message to be replied not found")
        return found

    def _new_bot_message(
        self,
        chat: JSONDict,
        params: JSONDict,
        text: str | None = None,
        entities: list[JSONDict] | None = None,
        **content: Any,
    ) -> JSONDict:
        sender = None if chat.get("type") == "channel" else self.bot_user
        markup = params.get("reply_markup")
        message = self._build_message(
            chat,
            sender,
            text,
            entities=entities,
            reply_to=self._reply_for_send(chat["id"], params),
            message_thread_id=params.get("message_thread_id"),
            reply_markup=markup if isinstance(markup, dict) and "inline_keyboard" in markup else None,
            sender_chat=dict(chat) if sender is None else None,
            **content,
        )
        self._remember_message(message)
        return copy.deepcopy(message)

    def _m_sendmessage(self, call: ApiCall) -> JSONDict:
        chat = self._chat_for_send(call.params.get("chat_id"))
        text, entities = self._formatted(call.params, "text", MAX_TEXT_LENGTH)
        if text is None or not text.strip():
            raise _bad_request("message text is empty")
        return self._new_bot_message(chat, call.params, text=text, entities=entities)

    def _m_sendchataction(self, call: ApiCall) -> bool:
        self._chat_for_send(call.params.get("chat_id"))
        if call.params.get("action") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    def _store_file(
        self, data: bytes, filename: str | None, mime_type: str | None, folder: str
    ) -> _StoredFile:
        number = next(self._file_counter)
        suffix = ""
        if filename and "." in filename:
            suffix = "." + filename.rsplit(".", 1)[1]
        stored = _StoredFile(
            file_id=f"BQACAgIAAxkBAAI{number:06d}",
            file_unique_id=f"AgAD{number:06d}",
            file_path=f"{folder}/file_{number}{suffix}",
            filename=filename,
            mime_type=mime_type,
            data=data,
        )
        self.files[stored.file_id] = stored
        return stored

    @staticmethod
    def _file_object(stored: _StoredFile, kind: str) -> Any:
        base = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
        }
        if kind == "photo":
            return [{**base, "width": 90, "height": 90}]
        if kind in ("video", "animation", "video_note"):
            base.update(width=1, height=1, duration=1, length=1)
            if kind == "video_note":
                base.pop("width")
                base.pop("height")
            else:
                base.pop("length")
        if kind == "sticker":
            base.update(type="regular", width=512, height=512, is_animated=False, is_video=False)
        if kind in ("audio", "voice"):
            base["duration"] = 1
        if kind in ("document", "audio", "video", "animation"):
            base["file_name"] = stored.filename
        if kind != "sticker":
            base["mime_type"] = stored.mime_type
        return _clean(base)

    def _m_send_media(self, call: ApiCall, kind: str) -> JSONDict:
        chat = self._chat_for_send(call.params.get("chat_id"))
        value = call.params.get(kind)
        upload: UploadedFile | None = call.files.get(kind)
        if isinstance(value, str) and value.startswith("attach://"):
            upload = call.files.get(value[len("attach://") :])
        if upload is not None:
            stored = self._store_file(
                upload.data, upload.filename, upload.content_type or _DEFAULT_MIME[kind], f"{kind}s"
            )
        elif isinstance(value, str) and value in self.files:
            stored = self.files[value]
        elif isinstance(value, str) and value.startswith(("http://", "https://")):
            name = value.rstrip("/").rsplit("/", 1)[-1] or "file"
            stored = self._store_file(b"", name, _DEFAULT_MIME[kind], f"{kind}s")
        elif value is None:
            raise _bad_request(f"there is no {kind} in the request")
        else:
            raise _bad_request("wrong file identifier/HTTP URL specified")
        caption, caption_entities = self._formatted(call.params, "caption", MAX_CAPTION_LENGTH)
        return self._new_bot_message(
            chat,
            call.params,
            caption=caption,
            caption_entities=caption_entities,
            **{kind: self._file_object(stored, kind)},
        )

    def _m_getfile(self, call: ApiCall) -> JSONDict:
        stored = self.files.get(str(call.params.get("file_id")))
        if stored is None:
            raise _bad_request("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    @staticmethod
    def _commands_key(params: JSONDict) -> str:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps([scope, params.get("language_code") or ""], sort_keys=True)

    def _m_setmycommands(self, call: ApiCall) -> bool:
        commands = call.params.get("commands")
        if not isinstance(commands, list):
            raise _bad_request('parameter "commands" is required')
        for command in commands:
            name = str(command.get("command", ""))
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad_request(
                    "BOT_COMMAND_DESCRIPTION_INVALID"
                    if command.get("description")
                    else "command description is empty"
                )
        self.commands[self._commands_key(call.params)] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    def _m_getmycommands(self, call: ApiCall) -> list[JSONDict]:
        return copy.deepcopy(self.commands.get(self._commands_key(call.params), []))

    def _m_deletemycommands(self, call: ApiCall) -> bool:
        self.commands.pop(self._commands_key(call.params), None)
        return True

    def _m_answercallbackquery(self, call: ApiCall) -> bool:
        if not call.params.get("callback_query_id"):
            raise _bad_request("query is too old and response timeout expired or query ID is invalid")
        return True

    def _editable_message(self, call: ApiCall) -> tuple[tuple[int, int], JSONDict] | None:
        params = call.params
        if params.get("inline_message_id"):
            return None
        chat_id = self._chat_for_send(params.get("chat_id"))["id"]
        key = (chat_id, _as_int(params.get("message_id"), 0))
        message = self.messages.get(key)
        if message is None:
            raise _bad_request("message to edit not found")
        if (message.get("from") or {}).get("id") != self.bot_id and message["chat"].get("type") != "channel":
            raise _bad_request("message can't be edited")
        return key, message

    def _apply_edit(self, key: tuple[int, int], message: JSONDict, changes: JSONDict) -> JSONDict:
        updated = copy.deepcopy(message)
        for field, value in changes.items():
            if value is None:
                updated.pop(field, None)
            else:
                updated[field] = value
        if all(updated.get(k) == message.get(k) for k in changes):
            raise _bad_request(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message"
            )
        updated["edit_date"] = int(time.time())
        self.messages[key] = updated
        return copy.deepcopy(updated)

    @staticmethod
    def _inline_markup(params: JSONDict) -> JSONDict | None:
        markup = params.get("reply_markup")
        return markup if isinstance(markup, dict) and "inline_keyboard" in markup else None

    def _m_editmessagetext(self, call: ApiCall) -> JSONDict | bool:
        text, entities = self._formatted(call.params, "text", MAX_TEXT_LENGTH)
        if text is None or not text.strip():
            raise _bad_request("message text is empty")
        target = self._editable_message(call)
        if target is None:
            return True
        key, message = target
        if "text" not in message:
            raise _bad_request("there is no text in the message to edit")
        changes = {
            "text": text,
            "entities": entities or auto_entities(text) or None,
            "reply_markup": self._inline_markup(call.params),
        }
        return self._apply_edit(key, message, changes)

    def _m_editmessagecaption(self, call: ApiCall) -> JSONDict | bool:
        caption, entities = self._formatted(call.params, "caption", MAX_CAPTION_LENGTH)
        target = self._editable_message(call)
        if target is None:
            return True
        key, message = target
        changes = {
            "caption": caption,
            "caption_entities": entities,
            "reply_markup": self._inline_markup(call.params),
        }
        return self._apply_edit(key, message, changes)

    def _m_editmessagereplymarkup(self, call: ApiCall) -> JSONDict | bool:
        target = self._editable_message(call)
        if target is None:
            return True
        key, message = target
        return self._apply_edit(key, message, {"reply_markup": self._inline_markup(call.params)})

    def _m_deletemessage(self, call: ApiCall) -> bool:
        chat_id = self._chat_for_send(call.params.get("chat_id"))["id"]
        key = (chat_id, _as_int(call.params.get("message_id"), 0))
        if self.messages.pop(key, None) is None:
            raise _bad_request("message to delete not found")
        return True

    def _m_deletemessages(self, call: ApiCall) -> bool:
        chat_id = self._chat_for_send(call.params.get("chat_id"))["id"]
        for message_id in call.params.get("message_ids") or []:
            self.messages.pop((chat_id, _as_int(message_id, 0)), None)
        return True

    # ------------------------------------------------------------------ HTTP: control API

    _CONTROL_HELPERS = frozenset(
        {
            "send_private_text",
            "send_group_text",
            "send_bot_text",
            "send_command",
            "send_channel_post",
            "press_button",
            "edit_message",
        }
    )

    async def _handle_control(self, request: web.Request) -> web.StreamResponse:
        """Drive/inspect the fake from another process.

        GET  calls?method=&since=N   -> recorded calls (seq > N)
        GET  state                   -> pending updates, webhook, counters
        POST push_update {update}    -> queued update
        POST fail_next {method, error_code, description, retry_after, times, body, disconnect}
        POST set_delay {method, seconds}
        POST wait_for_call {method, timeout, since, params: {subset to match}}
        POST reset                   -> clear calls, faults, delays
        POST send_private_document {user_id, filename, data_b64, caption}
        POST <helper> {kwargs}       -> send_private_text, send_group_text, send_command, ...
        """
        action = request.match_info["action"]
        try:
            body: JSONDict = {}
            if request.method == "POST" and request.can_read_body:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
            result = await self._control(action, request, body)
        except TimeoutError as exc:
            return web.json_response({"ok": False, "description": str(exc)}, status=408)
        except web.HTTPException:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            return web.json_response({"ok": False, "description": f"{type(exc).__name__}: {exc}"}, status=400)
        return web.json_response({"ok": True, "result": _jsonable(result)})

    async def _control(self, action: str, request: web.Request, body: JSONDict) -> Any:
        if action == "calls":
            method = request.query.get("method", "*")
            since = int(request.query.get("since", "0"))
            return [c.to_json() for c in self.calls_of(method) if c.seq > since]
        if action == "state":
            return {
                "pending_updates": len(self._pending),
                "next_update_id": self._next_update_id,
                "confirmed_update_id": self.confirmed_update_id,
                "webhook": self.webhook,
                "calls": len(self.calls),
                "last_seq": self.calls[-1].seq if self.calls else 0,
                **self.describe(),
            }
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        if action == "push_update":
            return self.push_update(body)
        if action == "fail_next":
            self.fail_next(**body)
            return True
        if action == "set_delay":
            self.set_delay(body["method"], body.get("seconds"))
            return True
        if action == "reset":
            self.clear_calls()
            self.clear_faults()
            return True
        if action == "wait_for_call":
            expected: JSONDict = body.get("params") or {}
            since = int(body.get("since", 0))

            def matches(call: ApiCall) -> bool:
                return call.seq > since and all(
                    str(call.params.get(k)) == str(v) for k, v in expected.items()
                )

            call = await self.wait_for_call(body["method"], matches, float(body.get("timeout", 10)))
            return call.to_json()
        if action == "send_private_document":
            data = base64.b64decode(body.pop("data_b64", ""))
            return self.send_private_document(data=data, **body)
        if action in self._CONTROL_HELPERS:
            return getattr(self, action)(**body)
        raise web.HTTPNotFound(text=json.dumps({"ok": False, "description": f"unknown action {action}"}))


# --------------------------------------------------------------------------- standalone


async def _serve(args: argparse.Namespace) -> None:
    server = FakeTelegramServer(
        bot_token=args.token,
        bot_username=args.username,
        host=args.host,
        port=args.port,
        first_update_id=args.first_update_id,
    )
    await server.start()
    print(json.dumps(server.describe()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point for ``python -m tests.fakes.telegram_api``."""
    parser = argparse.ArgumentParser(description="Fake Telegram Bot API server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default="123:ABC")
    parser.add_argument("--username", default="membot_test_bot")
    parser.add_argument("--first-update-id", type=int, default=1)
    args = parser.parse_args(list(argv) if argv is not None else None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
