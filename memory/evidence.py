"""Whether a line about a person is supported by that person's own words: memory is evidence, not prose.

A small model writes fluent lines that are not true: names it made up, the bot's own inventions, its own
pleasantries. A line is stored about someone only when
- it is not in the bot's voice (no first or second person, no question, no greeting);
- every specific term in it (a name, place, number, date or other capitalised word) occurs in the
  person's own words or in a date the system resolved from them;
- most of its content words (a strict majority, compared by stem) occur there too.
The person's and the bot's names appear in such lines as subjects, but never count as support: a line is
not true because it names Alice. The bot's turns are never evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from memory.dates import format_date, resolve_relative
from memory.porter import stem
from models.profiles.base import STOPWORDS

_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*", re.UNICODE)
_CLITIC = re.compile(r"['\u2019](?:s|re|ve|ll|d|m|t)$")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\s*[\"'(\[]*$")
# Words that open a sentence in any fact without naming anything.
_OPENERS = STOPWORDS | frozenset(
    """since after before during while although though because yesterday today tomorrow tonight recently
    currently now later soon once often usually always never sometimes last next every""".split()
)
# Words that phrase a fact without being part of what the person said ("Alice's cat is called Luna").
_GLUE = frozenset("""named called name mentioned mention says said saying shares shared talked talks""".split())
# The bot's voice: first or second person, pleasantries. Facts about a person are in the third person.
_BOT_PRONOUNS = frozenset(
    """i i'm i've i'd i'll me my mine myself we we're we've we'll us our ours ourselves you you're you've
    you'll you'd your yours yourself yourselves""".split()
)
_PLEASANTRIES = frozenset(
    """hi hello hey thanks thank welcome glad sorry dear congratulations congrats wow oh awesome absolutely
    great lovely wonderful amazing""".split()
)
_CJK_PRONOUNS = re.compile(r"[我你您咱]")
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
# Dates as memory.dates writes them: "7 May 2023", "May 2023"; a resolved year stands alone in brackets.
_DATE = re.compile(rf"\b(?:\d{{1,2}} )?(?:{_MONTHS}) \d{{4}}\b")
_YEAR_NOTE = re.compile(r"(?<=\()\d{4}(?=\))")


def _norm(token: str) -> str:
    return _CLITIC.sub("", token.lower().replace("\u2019", "'"))


def tokens(text: str) -> list[str]:
    """Word tokens; a run of CJK characters becomes its character pairs (those scripts have no spaces)."""
    out: list[str] = []
    for token in _TOKEN.findall(text):
        if _CJK.search(token):
            chars = [c for c in token if _CJK.match(c)]
            out += ["".join(chars[i : i + 2]) for i in range(max(len(chars) - 1, 1))]
        else:
            out.append(token)
    return out


def _stem(word: str) -> str:
    return stem(word) if word.isascii() else word


def is_bot_voice(line: str) -> bool:
    """A line in the bot's voice: speaks as "I" or to "you", asks, or greets. Never a fact about someone."""
    text = line.strip()
    if not text or "?" in text or _CJK_PRONOUNS.search(text):
        return True
    words = [w.lower().replace("\u2019", "'") for w in _TOKEN.findall(text)]
    if any(w in _BOT_PRONOUNS for w in words):
        return True
    return bool(words) and words[0] in _PLEASANTRIES


@dataclass(frozen=True)
class Verdict:
    supported: bool
    reason: str = ""


def _unit(text: str) -> frozenset[str]:
    """One turn's (or fact's) words, with their stems, for "said together" checks."""
    words = {_norm(t) for t in tokens(text)}
    return frozenset(words | {_stem(w) for w in words})


@dataclass(frozen=True)
class Evidence:
    """What one person said: each of their turns (or, for the compressive memory, each of their facts) as a
    unit of words, and the dates the system resolved from what they said."""

    units: tuple[frozenset[str], ...]
    names: frozenset[str]
    dates: frozenset[str] = frozenset()
    bot: str = ""  # the bot's name (lower case): a line about the bot is no fact about the person

    @classmethod
    def from_turns(cls, turns: Iterable[tuple[str, float]], *, names: Iterable[str] = (), bot: str = "") -> Evidence:
        """`turns`: (text, when said). The dates that a turn's relative phrases meant, resolved from its own
        time, count as said, and so does the day it was said ("dated as today"); a day or year number
        alone does not."""
        texts: list[str] = []
        dates: set[str] = set()
        for text, when in turns:
            texts.append(text)
            dates.add(format_date(when))
            resolved = resolve_relative(text, when)
            dates.update(_DATE.findall(resolved) + _YEAR_NOTE.findall(resolved))
        base = cls.from_texts(texts, names=names, bot=bot)
        return Evidence(base.units, base.names, frozenset(dates), base.bot)

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, names: Iterable[str] = (), bot: str = "") -> Evidence:
        """`names`: the person's and the bot's names, which never count as support; `bot`: the bot's name."""
        name_words = {_norm(t) for name in (*names, bot) for t in tokens(name)}
        return cls(tuple(_unit(t) for t in texts), frozenset(name_words), frozenset(), bot.lower())

    def adding(self, texts: Iterable[str]) -> Evidence:
        """This evidence and more texts (e.g. the person's earlier facts)."""
        return Evidence(self.units + tuple(_unit(t) for t in texts), self.names, self.dates, self.bot)

    @property
    def _all(self) -> frozenset[str]:
        return frozenset().union(*self.units) if self.units else frozenset()

    @staticmethod
    def _in(word: str, unit: frozenset[str]) -> bool:
        return word in unit or _stem(word) in unit

    def _together(self, unit: frozenset[str], specific: list[str], content: list[str], whole: bool) -> bool:
        if not all(self._in(w, unit) for w in specific):
            return False
        inside = sum(1 for w in content if self._in(w, unit))
        return inside == len(content) if whole else inside * 2 > len(content)

    def check(self, line: str, *, together: bool = True, whole: bool = False) -> Verdict:
        """Whether `line` may be stored as a fact about the person, and if not, why.

        `together`: one unit (a turn) must hold all the line's specific terms and most of its content words,
        so that a job from one message and a city from another cannot make a new claim; `whole`: that unit
        holds every content word (the compressive memory's model-written sentences may only restate one
        fact). Lines the system built itself from one statement (memory.facts) are checked without it.
        """
        if is_bot_voice(line):
            return Verdict(False, "in the bot's voice")
        if self.bot and _norm(next(iter(_TOKEN.findall(line)), "")) == self.bot.split()[0]:
            return Verdict(False, "about the bot, not the person")
        everything = self._all
        for date in _DATE.findall(line) + _YEAR_NOTE.findall(line):
            if date not in self.dates and not any(all(self._in(_norm(t), u) for t in tokens(date)) for u in self.units):
                return Verdict(False, f"{date!r} is not a date the person gave")
        rest = _YEAR_NOTE.sub(" ", _DATE.sub(" ", line))
        content: list[str] = []
        specific: list[str] = []
        for match in _TOKEN.finditer(rest):
            raw = match.group(0)
            word = _norm(raw)
            if word in self.names:
                continue
            pieces = [_norm(p) for p in tokens(raw)]
            at_start = bool(_SENTENCE_START.search(rest[: match.start()]))
            if any(ch.isdigit() for ch in raw) or (
                raw[:1].isupper() and not (at_start and word in _OPENERS) and word not in STOPWORDS
            ):
                missing = [p for p in pieces if not self._in(p, everything)]
                if missing:
                    return Verdict(False, f"{raw!r} is not in the person's words")
                specific += pieces
            content += [p for p in pieces if p not in STOPWORDS and p not in _GLUE]
        if not content:
            return Verdict(False, "says nothing about the person")
        supported = sum(1 for w in content if self._in(w, everything))
        if supported * 2 <= len(content):
            return Verdict(False, f"only {supported} of {len(content)} content words are the person's")
        if together and not any(self._together(u, specific, content, whole) for u in self.units):
            return Verdict(False, "its words were never said together")
        return Verdict(True)
