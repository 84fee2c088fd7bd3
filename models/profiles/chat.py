"""The default `chat` profile: the model's own chat template with English prompts for the three tasks.

The prompts are short and concrete because the embedded model has only 135M parameters: it follows
"one fact per line" far better than a multi-part format, so compression asks for each part separately.
Output is always checked against the source (grounding), since small models invent freely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from models.base import GenParams, Prompt
from models.profiles.base import (
    CompressionInput,
    CompressionOutput,
    ReplyInput,
    SessionInput,
    Task,
    content_words,
    grounded_lines,
)

_LABEL = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*(?:\*\*)?(?:profile|relationship|events?)\s*(?:\*\*)?\s*:\s*", re.I)


class ChatProfile:
    """English prompts through the chat template; every task is available."""

    name = "chat"
    tasks = frozenset({Task.REPLY, Task.SESSION_MEMORY, Task.COMPRESS})

    def session_memory_prompt(self, item: SessionInput) -> Prompt:
        transcript = "\n".join(f"{speaker}: {text}" for speaker, text in item.turns)
        return Prompt(
            messages=(
                ("system", "You take short, accurate notes about people. You never invent anything."),
                (
                    "user",
                    f"Conversation between {item.user_name} and {item.bot_name} on {item.date}:\n"
                    f"{transcript}\n\n"
                    f"Write what we learned about {item.user_name} and what happened in this conversation, "
                    f"one short sentence per line, each line starting with '- '. "
                    f"Name {item.user_name} in every line.",
                ),
            ),
            task=Task.SESSION_MEMORY,
        )

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None:
        source = " ".join(text for _, text in item.turns)
        facts = grounded_lines(raw, source, min_overlap=1)
        return facts or None

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]:
        notes = item.notes_text()
        system = ("system", "You keep a short, accurate memory about one person. You never invent anything.")
        profile = Prompt(
            messages=(
                system,
                (
                    "user",
                    f"Notes about {item.user_name}:\n{notes}\n\n"
                    f"Write a short profile of {item.user_name} in two to four sentences: who they are, "
                    f"their work, family, pets, places, what they like and dislike, health and mood. "
                    f"Use only the notes.",
                ),
            ),
            task=Task.COMPRESS,
        )
        relationship = Prompt(
            messages=(
                system,
                (
                    "user",
                    f"Notes about {item.user_name}:\n{notes}\n\n"
                    f"In one or two sentences, describe how {item.user_name} and {item.bot_name} get along "
                    f"and how close they are. Use only the notes.",
                ),
            ),
            task=Task.COMPRESS,
        )
        return [profile, relationship]

    def parse_compression(self, raws: Sequence[str], item: CompressionInput) -> CompressionOutput | None:
        source = item.notes_text() + " " + item.user_name + " " + item.bot_name
        parts: list[str] = []
        for raw in raws:
            lines = [_LABEL.sub("", line) for line in raw.splitlines()]
            kept = grounded_lines("\n".join(lines), source, min_overlap=1, max_lines=6)
            if not kept:
                return None
            parts.append(" ".join(kept))
        profile, relationship = parts
        return CompressionOutput(profile=profile, relationship=relationship, events=item.merged_events())

    def reply_prompt(self, item: ReplyInput) -> Prompt:
        system = item.persona
        if item.memory:
            system += f"\n\nWhat you remember about {item.user_name}:\n{item.memory}"
        if item.evidence:
            system += f"\n\nFrom earlier conversations with {item.user_name}:\n" + "\n".join(item.evidence)
        for number, session in enumerate(item.past_sessions, 1):
            names = {"user": item.user_name, "bot": item.bot_name}
            system += f"\n\nEarlier conversation {number}:\n" + "\n".join(
                f"{names.get(author, author)}: {text}" for author, text in session
            )
        messages: list[tuple[str, str]] = [("system", system)]
        for author, text in item.turns:
            messages.append(("user" if author == "user" else "assistant", text))
        return Prompt(messages=tuple(messages), task=Task.REPLY)

    def reply_params(self, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float) -> GenParams:
        return GenParams(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
        )

    def memory_params(self, max_new_tokens: int, attempt: int) -> GenParams:
        """Greedy first; later attempts sample, so a retry can give a different (parseable) answer."""
        if attempt == 0:
            return GenParams(max_new_tokens=max_new_tokens, repetition_penalty=1.1)
        return GenParams(
            max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7, top_p=0.9,
            repetition_penalty=1.15, seed=attempt,
        )

    def clean_reply(self, raw: str) -> str:
        return raw.strip()


def facts_overlap(a: str, b: str) -> int:
    """How many content words two texts share; used by tests and the grounding filter."""
    return len(content_words(a) & content_words(b))
