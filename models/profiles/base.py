"""The inputs and outputs every prompt profile shares, and the defensive parsing helpers.

A profile turns the three COMEDY tasks into model input and reads the output back; it never touches the
store, so the same profile serves the bot, the jobs and the benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from models.base import Engine, GenParams, Prompt, TokenizerInfo


class Task(StrEnum):
    REPLY = "reply"
    SESSION_MEMORY = "session_memory"
    COMPRESS = "compress"


@dataclass(frozen=True)
class SessionInput:
    """One closed session, ready for task 1."""

    user_name: str
    bot_name: str
    date: str
    turns: tuple[tuple[str, str], ...]  # (speaker name, text)


@dataclass(frozen=True)
class CompressionInput:
    """Task 2's material: the previous compressive memory and the new dated session memories."""

    user_name: str
    bot_name: str
    previous_profile: str = ""
    previous_relationship: str = ""
    previous_events: str = ""
    new_memories: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (date, facts)
    max_events: int = 60

    def notes_text(self) -> str:
        lines: list[str] = []
        if self.previous_profile:
            lines.append(f"- {self.previous_profile}")
        if self.previous_relationship:
            lines.append(f"- {self.previous_relationship}")
        for date, facts in self.new_memories:
            lines.extend(f"- ({date}) {fact}" for fact in facts)
        return "\n".join(lines)

    def merged_events(self) -> str:
        """Dated events: the previous ones plus one line per new session, newest kept when over the cap."""
        lines = [line for line in self.previous_events.splitlines() if line.strip()]
        for date, facts in self.new_memories:
            if facts:
                lines.append(f"{date}: " + " ".join(_sentence(f) for f in facts))
        return "\n".join(lines[-self.max_events :])


@dataclass(frozen=True)
class CompressionOutput:
    profile: str
    relationship: str
    events: str


@dataclass(frozen=True)
class ReplyInput:
    """Task 3's material, already cut to the token budget by memory.context."""

    bot_name: str
    persona: str
    user_name: str
    memory: str
    evidence: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]  # (author 'user'|'bot', text), oldest first, last is the user's
    past_sessions: tuple[tuple[tuple[str, str], ...], ...] = field(default_factory=tuple)


class Profile(Protocol):
    name: str
    tasks: frozenset[Task]

    def session_memory_prompt(self, item: SessionInput) -> Prompt: ...

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None: ...

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]: ...

    def parse_compression(self, raws: Sequence[str], item: CompressionInput) -> CompressionOutput | None: ...

    def reply_prompt(self, item: ReplyInput) -> Prompt: ...

    def reply_params(
        self, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
    ) -> GenParams: ...

    def memory_params(self, max_new_tokens: int, attempt: int) -> GenParams: ...

    def clean_reply(self, raw: str) -> str: ...

    def bind(self, info: TokenizerInfo) -> None:
        """The engine's tokenizer facts, for profiles that fit prompts to the model's own token counts."""


MEMORY_TASKS = frozenset({Task.SESSION_MEMORY, Task.COMPRESS})


def can_write_memories(profile: Profile) -> bool:
    """Whether a profile can do both memory jobs (task 1 and task 2)."""
    return MEMORY_TASKS <= frozenset(profile.tasks)


def bind_profile(profile: Profile, engine: Engine) -> Profile:
    """Give the profile the engine's tokenizer facts (a profile that counts nothing ignores them)."""
    profile.bind(engine.tokenizer_info())
    return profile


def first_line(text: str) -> str:
    """The first non-empty line, stripped; "" when there is none."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from about as is are was were be been being
    am do does did have has had i me my mine you your yours he him his she her hers it its we us our they them
    their this that these those what which who whom whose when where why how not no yes very just also too
    can could will would shall should may might must there here up down out over under again further once
    all any both each few more most other some such only own same than s t don now user bot said says tell
    told like really know think going get got one""".split()
)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")


def content_words(text: str) -> set[str]:
    return {w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in STOPWORDS and len(w) > 1}


def grounded_lines(raw: str, source: str, *, min_overlap: int = 1, max_lines: int = 30) -> list[str]:
    """Lines of model output that share content words with the source, de-duplicated, bullets removed.

    A small model pads its answer with invented lines and loops; keeping only lines anchored in what was
    actually said removes most of that without any second model call.
    """
    vocabulary = content_words(source)
    seen: set[str] = set()
    kept: list[str] = []
    for line in raw.splitlines():
        line = _BULLET.sub("", line).strip().strip('"').strip()
        if len(line) < 4 or line.endswith(":"):
            continue
        key = " ".join(sorted(content_words(line)))
        if not key or key in seen:
            continue
        if len(content_words(line) & vocabulary) < min_overlap:
            continue
        seen.add(key)
        kept.append(line)
        if len(kept) >= max_lines:
            break
    return kept


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
