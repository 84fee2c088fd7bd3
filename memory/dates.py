"""Dates as people and the memory prompts write them ("8 May 2023"), always from stored UTC times."""

from __future__ import annotations

from datetime import UTC, datetime


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def format_date(ts: float) -> str:
    d = to_datetime(ts)
    return f"{d.day} {d:%B %Y}"


def format_datetime(ts: float) -> str:
    d = to_datetime(ts)
    return f"{d.day} {d:%B %Y}, {d:%H:%M} UTC"


_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def resolve_relative(text: str, ts: float) -> str:
    """Add the absolute date after relative phrases ("yesterday" -> "yesterday (7 May 2023)").

    Conversations say "last Saturday"; questions months later ask "when?". Writing the date the phrase
    meant, from the session's own date, keeps the answer findable long after the session.
    """
    import re
    from datetime import timedelta

    base = to_datetime(ts)

    def day(d: datetime) -> str:
        return f"{d.day} {d:%B %Y}"

    rules: list[tuple[str, object]] = [
        (r"\bday before yesterday\b", lambda m: day(base - timedelta(days=2))),
        (r"\byesterday\b", lambda m: day(base - timedelta(days=1))),
        (r"\btomorrow\b", lambda m: day(base + timedelta(days=1))),
        (r"\b(today|tonight|this morning|this afternoon|this evening)\b", lambda m: day(base)),
        (r"\blast week\b", lambda m: f"the week before {day(base)}"),
        (r"\bnext week\b", lambda m: f"the week after {day(base)}"),
        (r"\blast weekend\b", lambda m: f"the weekend before {day(base)}"),
        (r"\bthis weekend\b", lambda m: f"the weekend of {day(base + timedelta(days=(5 - base.weekday()) % 7))}"),
        (r"\blast month\b", lambda m: f"{(base.replace(day=1) - timedelta(days=1)):%B %Y}"),
        (r"\bnext month\b", lambda m: f"{(base.replace(day=28) + timedelta(days=4)):%B %Y}"),
        (r"\blast year\b", lambda m: str(base.year - 1)),
        (r"\bnext year\b", lambda m: str(base.year + 1)),
        (r"\bthis year\b", lambda m: str(base.year)),
        (
            r"\b(\d+|a|one|two|three|four|five|six)\s+(day|week|month|year)s?\s+ago\b",
            lambda m: _ago(base, m.group(1), m.group(2)),
        ),
        (
            r"\blast (" + "|".join(_WEEKDAYS) + r")\b",
            lambda m: day(base - timedelta(days=((base.weekday() - _WEEKDAYS.index(m.group(1).lower())) % 7) or 7)),
        ),
    ]
    out = text
    for pattern, make in rules:
        out = re.sub(
            pattern,
            lambda m, make=make: f"{m.group(0)} ({make(m)})",  # type: ignore[misc,operator]
            out,
            flags=re.IGNORECASE,
        )
    return out


def _ago(base: datetime, amount: str, unit: str) -> str:
    from datetime import timedelta

    words = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    n = int(amount) if amount.isdigit() else words.get(amount.lower(), 1)
    if unit == "day":
        d = base - timedelta(days=n)
        return f"{d.day} {d:%B %Y}"
    if unit == "week":
        d = base - timedelta(weeks=n)
        return f"the week of {d.day} {d:%B %Y}"
    if unit == "month":
        month = (base.month - n - 1) % 12 + 1
        year = base.year + (base.month - n - 1) // 12
        return f"{datetime(year, month, 1):%B %Y}"
    return str(base.year - n)
