"""Dates as people and the memory prompts write them ("8 May 2023"), always from stored UTC times."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def format_date(ts: float) -> str:
    return _day(to_datetime(ts))


def format_datetime(ts: float) -> str:
    d = to_datetime(ts)
    return f"{d.day} {d:%B %Y}, {d:%H:%M} UTC"


_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_NUMBERS = {
    "a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}


def _day(d: datetime) -> str:
    """The same "8 May 2023" form as format_date, for a datetime already in UTC."""
    return f"{d.day} {d:%B %Y}"


def _shift_month(base: datetime, months: int) -> str:
    """The month `months` away from base ("April 2023"), carrying across year ends."""
    index = base.year * 12 + base.month - 1 + months
    return f"{datetime(index // 12, index % 12 + 1, 1):%B %Y}"


def _this_weekend(base: datetime) -> datetime:
    """The Saturday of base's week (Monday..Sunday): base itself on a Saturday, the day before on a Sunday."""
    wd = base.weekday()
    return base - timedelta(days=1) if wd == 6 else base + timedelta(days=5 - wd)


# Fixed phrases and what they mean, given the UTC datetime the text was said. Only phrases whose day
# is known resolve to a day; "last week" and the like resolve to the period, never to a guessed day.
_FIXED: dict[str, Callable[[datetime], str]] = {
    "the day before yesterday": lambda b: _day(b - timedelta(days=2)),
    "day before yesterday": lambda b: _day(b - timedelta(days=2)),
    "the day after tomorrow": lambda b: _day(b + timedelta(days=2)),
    "day after tomorrow": lambda b: _day(b + timedelta(days=2)),
    "yesterday": lambda b: _day(b - timedelta(days=1)),
    "tomorrow": lambda b: _day(b + timedelta(days=1)),
    "today": _day,
    "tonight": _day,
    "this morning": _day,
    "this afternoon": _day,
    "this evening": _day,
    "last weekend": lambda b: f"the weekend before {_day(b)}",
    "this weekend": lambda b: f"the weekend of {_day(_this_weekend(b))}",
    "next weekend": lambda b: f"the weekend after {_day(b)}",
    "last week": lambda b: f"the week before {_day(b)}",
    "this week": lambda b: f"the week of {_day(b)}",
    "next week": lambda b: f"the week after {_day(b)}",
    "last month": lambda b: _shift_month(b, -1),
    "this month": lambda b: _shift_month(b, 0),
    "next month": lambda b: _shift_month(b, 1),
    "last year": lambda b: str(b.year - 1),
    "this year": lambda b: str(b.year),
    "next year": lambda b: str(b.year + 1),
}


def _words(phrase: str) -> str:
    """A phrase as a pattern that also matches runs of spaces or a line break between its words."""
    return r"\s+".join(re.escape(w) for w in phrase.split())


# One combined pattern, longest phrases first, so that at any position only one rule can fire
# ("the day before yesterday" is never also read as "yesterday"). The lookahead skips a phrase that
# already carries a parenthesised note, which makes a second run change nothing.
_FIXED_RE = "|".join(_words(p) for p in sorted(_FIXED, key=len, reverse=True))
_AGO_RE = r"(?P<n>\d{1,3}|" + "|".join(_NUMBERS) + r")\s+(?P<unit>day|week|month|year)s?\s+ago"
_LAST_WEEKDAY_RE = r"last\s+(?P<weekday>" + "|".join(_WEEKDAYS) + ")"
_PATTERN = re.compile(
    rf"\b(?:(?P<fixed>{_FIXED_RE})|{_AGO_RE}|{_LAST_WEEKDAY_RE})\b(?!\s*\()",
    re.IGNORECASE,
)


def _resolve(m: re.Match[str], base: datetime) -> str:
    """What one matched phrase means, as the text to put in the note."""
    if m.group("fixed"):
        return _FIXED[" ".join(m.group("fixed").lower().split())](base)
    if m.group("weekday"):
        target = _WEEKDAYS.index(m.group("weekday").lower())
        return _day(base - timedelta(days=(base.weekday() - target) % 7 or 7))
    amount = m.group("n").lower()
    n = int(amount) if amount.isdigit() else _NUMBERS[amount]
    unit = m.group("unit").lower()
    if unit == "day":
        return _day(base - timedelta(days=n))
    if unit == "week":
        return f"the week of {_day(base - timedelta(weeks=n))}"
    if unit == "month":
        return _shift_month(base, -n)
    return str(base.year - n)


def resolve_relative(text: str, ts: float) -> str:
    """Add the absolute date after relative phrases ("yesterday" -> "yesterday (7 May 2023)").

    Conversations say "last Saturday"; questions months later ask "when?". Writing the date the phrase
    meant, from the session's own date, keeps the answer findable long after the session. Bare weekdays
    ("on Friday") are left alone: they may mean the last one or the next one.
    """
    base = to_datetime(ts)
    return _PATTERN.sub(lambda m: f"{m.group(0)} ({_resolve(m, base)})", text)
