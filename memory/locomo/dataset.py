"""Loader for the LoCoMo long-conversation QA benchmark (snap-research/LoCoMo ``data/locomo10.json``).

Why typed records: memory strategies, the QA runner and the scorer all need the same view of a
conversation (ordered sessions with real timestamps, turns with image captions folded into the
text, questions with string answers), and the raw JSON has traps that are easy to get wrong in
each place separately:

* sessions must be taken from the ``session_<n>`` keys in numeric order (``session_10`` after
  ``session_9``), not from the ``session_<n>_date_time`` keys - conv-26 has date keys for
  sessions that have no turns;
* some answers are integers (LoCoMo's scorer applies ``str``);
* adversarial (category 5) questions usually carry ``adversarial_answer`` and no ``answer``;
* image turns carry the picture only as ``blip_caption`` (a few have no ``img_url``);
* a few evidence ids are malformed (e.g. "D8:6; D9:17").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "Conversation",
    "Question",
    "Session",
    "Turn",
    "load_locomo",
    "parse_conversation",
    "parse_locomo_datetime",
]

_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"D\d+:\d+")
_DATE = re.compile(
    r"^\s*(\d{1,2}):(\d{2})\s*([ap])\.?m\.?\s+on\s+(\d{1,2})\s+([A-Za-z]+)\.?,?\s+(\d{4})\s*$",
    re.IGNORECASE,
)
_MONTHS = {
    name: i
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}

CATEGORY_NAMES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
"""LoCoMo's category numbering (task_eval/evaluation.py::CATEGORY_MAPPING)."""


@dataclass(frozen=True)
class Turn:
    """One utterance. For image turns ``text`` already ends with " [shares a photo: <caption>]"
    so text-only memory sees the picture; the raw pieces are kept in ``raw_text``/``caption``."""

    speaker: str
    dia_id: str
    text: str
    raw_text: str = ""
    caption: str | None = None
    img_url: str | None = None


@dataclass(frozen=True)
class Session:
    """One dated chat session; ``index`` is the n of ``session_<n>`` (1-based, gaps possible)."""

    index: int
    date_time: str
    when: datetime
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Question:
    """One QA item. ``answer`` is a string (ints converted) or None (most category-5 items)."""

    question: str
    answer: str | None
    adversarial_answer: str | None
    evidence: list[str]
    category: int

    @property
    def evidence_ids(self) -> list[str]:
        """Evidence dialog ids with malformed entries repaired ("D8:6; D9:17" -> two ids)."""
        return [m.group(0) for e in self.evidence for m in _DIA_ID.finditer(e)]

    @property
    def category_name(self) -> str:
        return CATEGORY_NAMES.get(self.category, f"unknown-{self.category}")


@dataclass(frozen=True)
class Conversation:
    """One LoCoMo sample: two speakers, sessions in order, and the questions about them."""

    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[Session]
    questions: list[Question]

    @property
    def turns(self) -> list[Turn]:
        """All turns of all sessions in conversation order."""
        return [t for s in self.sessions for t in s.turns]


def parse_locomo_datetime(value: str) -> datetime:
    """Parse LoCoMo's session stamp, e.g. "1:56 pm on 8 May, 2023", as an aware UTC datetime.

    Parsed by hand rather than with ``strptime`` so the result does not depend on the locale.
    The dataset gives no time zone; UTC is a convention that keeps comparisons well defined.
    """
    m = _DATE.match(value)
    if not m:
        raise ValueError(f"unrecognised LoCoMo date_time {value!r}")
    hour, minute, ampm, day, month_name, year = m.groups()
    month = _MONTHS.get(month_name.lower())
    if month is None:
        raise ValueError(f"unknown month in LoCoMo date_time {value!r}")
    h = int(hour) % 12 + (12 if ampm.lower() == "p" else 0)
    return datetime(int(year), month, int(day), h, int(minute), tzinfo=UTC)


def _turn(raw: dict[str, Any]) -> Turn:
    text = str(raw.get("text", ""))
    caption = raw.get("blip_caption") or None
    full = f"{text} [shares a photo: {caption}]" if caption else text
    return Turn(
        speaker=str(raw["speaker"]),
        dia_id=str(raw["dia_id"]),
        text=full,
        raw_text=text,
        caption=caption,
        img_url=_first_url(raw.get("img_url")),
    )


def _first_url(value: Any) -> str | None:
    if isinstance(value, list):
        return str(value[0]) if value else None
    return str(value) if value else None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _question(raw: dict[str, Any]) -> Question:
    return Question(
        question=str(raw["question"]),
        answer=_optional_str(raw.get("answer")),
        adversarial_answer=_optional_str(raw.get("adversarial_answer")),
        evidence=[str(e) for e in raw.get("evidence", [])],
        category=int(raw["category"]),
    )


def parse_conversation(sample: dict[str, Any]) -> Conversation:
    """Turn one raw LoCoMo sample into a :class:`Conversation` (empty sessions skipped)."""
    conv = sample["conversation"]
    numbered = sorted((int(m.group(1)), key) for key in conv if (m := _SESSION_KEY.match(key)))
    sessions: list[Session] = []
    for index, key in numbered:
        turns = conv[key]
        if not turns:
            continue
        date_key = f"{key}_date_time"
        if date_key not in conv:
            raise ValueError(f"{sample.get('sample_id')}: {key} has turns but no {date_key}")
        date_time = str(conv[date_key])
        sessions.append(
            Session(
                index=index,
                date_time=date_time,
                when=parse_locomo_datetime(date_time),
                turns=[_turn(t) for t in turns],
            )
        )
    return Conversation(
        sample_id=str(sample["sample_id"]),
        speaker_a=str(conv["speaker_a"]),
        speaker_b=str(conv["speaker_b"]),
        sessions=sessions,
        questions=[_question(q) for q in sample.get("qa", [])],
    )


def load_locomo(path: str | Path, conversations: list[str] | None = None) -> list[Conversation]:
    """Load a LoCoMo JSON file (the dev split or the full ``locomo10.json``), in file order.

    ``conversations`` restricts to those sample ids; an id not in the file raises ``ValueError``
    so a typo cannot silently shrink a benchmark run.
    """
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if conversations is not None:
        wanted = set(conversations)
        missing = wanted - {str(s["sample_id"]) for s in raw}
        if missing:
            raise ValueError(f"sample ids not in {path}: {sorted(missing)}")
        raw = [s for s in raw if str(s["sample_id"]) in wanted]
    return [parse_conversation(s) for s in raw]
