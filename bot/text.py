"""Text hygiene shared by every adapter: clean what comes in, defuse what goes out, split long replies."""

from __future__ import annotations

import logging
import re
import threading
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MASS_MENTION = re.compile(r"@(everyone|here)\b", re.IGNORECASE)


def clean_incoming(text: str, max_chars: int) -> tuple[str, bool]:
    """Strip NUL/control characters and lone surrogates (SQLite and JSON choke on them); cap the length.

    Returns the text and whether it was cut.
    """
    if _has_surrogates(text):
        # Re-pair valid surrogate pairs, replace lone ones with U+FFFD (one each).
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = _CONTROL.sub("", text)
    text = unicodedata.normalize("NFC", text).strip()
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def defuse_mentions(text: str) -> str:
    """Break @everyone/@here with a zero-width space; adapters also disable mentions at the API."""
    return _MASS_MENTION.sub(lambda m: "@\u200b" + m.group(1), text)


_USERNAME = re.compile(r"(?<![\w@/.])@([A-Za-z][A-Za-z0-9_]{3,31})\b")


def defuse_usernames(text: str) -> str:
    """Break @username with a word joiner. Telegram turns any "@name" in plain text into a mention that
    notifies that person; a model that repeats a name it saw must not ping people into a chat."""
    return _USERNAME.sub(lambda m: "@\u2060" + m.group(1), text)


def split_message(text: str, limit: int) -> list[str]:
    """Split at paragraph, then line, then sentence, then word boundaries, never over `limit`."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for sep in ("\n\n", "\n", ". ", "! ", "? ", " "):
            idx = window.rfind(sep)
            if idx > limit // 3:
                cut = idx + len(sep)
                break
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return [p for p in parts if p]


# -- secrets in logs ------------------------------------------------------------------------------------

REDACTED = "[redacted]"
_secrets: list[str] = []
_secrets_lock = threading.Lock()
_factory_installed = False


def redact_in_logs(secret: str | None) -> None:
    """Keep `secret` (a bot token, an API key) out of every log record from now on, whoever logs it.

    Libraries log URLs that embed bot tokens (python-telegram-bot its Bot API URL at DEBUG, httpx every
    request at INFO); a log record factory rewrites any record whose text or exception holds a registered
    secret before a handler sees it.
    """
    global _factory_installed, _secrets
    if not secret or len(secret) < 6:
        return
    with _secrets_lock:
        if secret not in _secrets:  # a new list, never changed in place: records are scrubbed from any thread
            _secrets = sorted([*_secrets, secret], key=len, reverse=True)  # a token before a part of it
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def _scrub(record: logging.LogRecord) -> None:
    secrets = _secrets
    if not secrets:
        return
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it when it is emitted
        return
    if any(s in message for s in secrets):
        record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        if any(s in text for s in secrets):
            record.exc_text = redact(text)
