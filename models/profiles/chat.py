"""The default `chat` profile: the model's own chat template with English prompts for the three tasks.

The prompts are short and concrete because the embedded model has only 135M parameters: it follows
"one fact per line" far better than a multi-part format, so compression asks for each part separately.
Output is always checked against the source (grounding), since small models invent freely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from models.base import GenParams, Prompt, TokenizerInfo
from models.profiles.base import (
    CompressionInput,
    CompressionOutput,
    ReplyInput,
    SessionInput,
    Task,
    grounded_lines,
)

# One worked example per task: a 135M model copies a demonstrated format far better than it follows
# an instruction. The example person (Bob) is filtered out of the output by the grounding check.
_EXAMPLE_CONVERSATION = (
    "Bob: I'm Bob, I teach math in Oslo.\n{bot}: Hi Bob! Do you like teaching?\n"
    "Bob: Yes. My sister Ana visited me last week and we went skiing."
)
_EXAMPLE_FACTS = (
    "- Bob teaches math.\n- Bob lives in Oslo.\n- Bob likes teaching.\n"
    "- Bob's sister Ana visited him last week.\n- Bob and Ana went skiing."
)
_EXAMPLE_NOTES = (
    "- Bob teaches math.\n- Bob lives in Oslo.\n- Bob likes teaching.\n"
    "- (3 March 2024) Bob's sister Ana visited him and they went skiing."
)
_EXAMPLE_PROFILE = (
    "Bob is a math teacher in Oslo who likes teaching. He has a sister, Ana, and they enjoy skiing together."
)
_EXAMPLE_RELATIONSHIP = "Bob chats with {bot} openly about his work and family; they are friendly acquaintances."

_LABEL = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*(?:\*\*)?(?:profile|relationship|events?)\s*(?:\*\*)?\s*:\s*", re.I)


class ChatProfile:
    """English prompts through the chat template; every task is available."""

    name = "chat"
    tasks = frozenset({Task.REPLY, Task.SESSION_MEMORY, Task.COMPRESS})

    def bind(self, info: TokenizerInfo) -> None:
        """Nothing to fit: the context builder sizes chat prompts, and the chat template is the engine's."""

    def session_memory_prompt(self, item: SessionInput) -> Prompt:
        transcript = "\n".join(f"{speaker}: {text}" for speaker, text in item.turns)
        example = _EXAMPLE_CONVERSATION.replace("{bot}", item.bot_name)
        return Prompt(
            messages=(
                ("system", "You write short facts about a person from a conversation."),
                ("user", f"Conversation:\n{example}\n\nFacts about Bob:"),
                ("assistant", _EXAMPLE_FACTS),
                ("user", f"Conversation:\n{transcript}\n\nFacts about {item.user_name}:"),
            ),
            task=Task.SESSION_MEMORY,
        )

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None:
        source = " ".join(text for _, text in item.turns)
        facts = grounded_lines(raw, source, min_overlap=1)
        return facts or None

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]:
        notes = item.notes_text()
        bot = item.bot_name
        profile = Prompt(
            messages=(
                ("system", "You write a short profile of a person from notes, using only the notes."),
                ("user", f"Notes:\n{_EXAMPLE_NOTES}\n\nProfile of Bob:"),
                ("assistant", _EXAMPLE_PROFILE),
                ("user", f"Notes:\n{notes}\n\nProfile of {item.user_name}:"),
            ),
            task=Task.COMPRESS,
        )
        relationship = Prompt(
            messages=(
                ("system", "You describe in one sentence how a person and a chatbot get along, using only the notes."),
                ("user", f"Notes:\n{_EXAMPLE_NOTES}\n\nHow do Bob and {bot} get along?"),
                ("assistant", _EXAMPLE_RELATIONSHIP.replace("{bot}", bot)),
                ("user", f"Notes:\n{notes}\n\nHow do {item.user_name} and {bot} get along?"),
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
