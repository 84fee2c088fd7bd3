"""The `dialret` profile: DialRet-L1's multi-session reply frame (replies only).

The frame is the one DialRet was trained on (dhye1/DialRet `src/prepare_raw_corpus.py`, multi-session
dialogue generation), wrapped as at inference (`get_model_infer_simple.py`): `"<s>\\n" + input + "\\n"`,
tokenized with `add_special_tokens=False`, sampled at temperature 0.2. Turns are `{name}:{text}` (no space),
the current session ends with `{bot}: ###`, and the model answers `{bot}:{text}`; `clean_reply` strips that
name and keeps the first line.

DialRet has no memory module: it reads past sessions verbatim. They come from the "sessions" memory strategy
(`ReplyInput.past_sessions`, newest kept). With the "compressive"/"hybrid" strategies the memory is mapped
into the same slot: the retrieved evidence becomes a leading block of those verbatim past turns, and the
compressive memory a block holding one `Dialogue Session Summary:` line (the phrase DialRet's summary tasks
write).
Whatever does not fit the context budget is cut from the oldest block; the current session is kept whole
when it can be, else its oldest turns go.

DialRet's tasks other than the reply (session summary, relation, time interval) are not memory tasks of this
bot, so the jobs need a `[memory_model]`.
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
    TokenizerInfo,
    first_line,
)

HEADER = (
    "You will be shown a {n} session dialogues between {a} and {b}. Please read and understand given multiple "
    "Dialogue Session, then complete the task under the guidance of Task Introduction.\n\n"
)
SESSION_BLOCK = "```\nDialogue Session #{number}:\n{body}```\n\n"
TASK = (
    "```\nTask Introduction:\nAfter reading the entire Dialogue Sessions, please create an appropriate response."
    "\n```\n\nTask Result:"
)
PREFIX = "<s>\n"  # the training/inference wrapper: q_pre + input + qa_link
SUFFIX = "\n"
SUMMARY_LINE = "Dialogue Session Summary: {text}\n"

# get_model_infer_simple.py: MaxLen 2048, TarLen 128, do_sample=True, temperature=0.2.
DEFAULT_CONTEXT = 2048
RESERVE = 128
TEMPERATURE = 0.2

_DATED = re.compile(r"^\[[^\]]*\]\s*")


def evidence_turns(line: str, speakers: Sequence[str]) -> list[tuple[str, str]]:
    """`[date] Ann: text | Bot: next turn` (memory.context's evidence line) → [(Ann, text), (Bot, next turn)]."""
    rest = _DATED.sub("", line, count=1)
    names = "|".join(re.escape(s) for s in sorted(set(speakers), key=len, reverse=True) if s)
    if not names:
        return [("", rest)]
    turns: list[tuple[str, str]] = []
    for piece in re.split(rf" \| (?=(?:{names}): )", rest):
        match = re.match(rf"^({names}): ?(.*)$", piece, re.S)
        turns.append((match.group(1), match.group(2)) if match else ("", piece))
    return turns


def turn_line(speaker: str, text: str) -> str:
    """One turn on one line. A typed code fence would close the session block and a typed `<s>` would be read
    as BOS, so both are made inert."""
    text = text.replace("```", "''").replace("<s>", "< s>").replace("</s>", "</ s>")
    return f"{speaker}:{' '.join(text.splitlines())}\n"


def build_frame(user: str, bot: str, blocks: Sequence[str], current: Sequence[str]) -> str:
    """The whole input text: header, numbered blocks (bodies), the current session ending `{bot}: ###`."""
    bodies = [*blocks, "".join(current) + f"{bot}: ###\n"]
    sessions = "".join(SESSION_BLOCK.format(number=i, body=body) for i, body in enumerate(bodies, 1))
    return PREFIX + HEADER.format(n=len(bodies), a=user, b=bot) + sessions + TASK + SUFFIX


class DialRetProfile:
    """Replies only; `context_tokens` is the whole input's budget (default: the model's context minus 128)."""

    name = "dialret"
    tasks = frozenset({Task.REPLY})

    def __init__(self, context_tokens: int | None = None, info: TokenizerInfo | None = None) -> None:
        self.info = info or TokenizerInfo()
        self._context_tokens = context_tokens
        self._bot_names: set[str] = set()

    def bind(self, info: TokenizerInfo) -> None:
        self.info = info

    @property
    def context_tokens(self) -> int:
        if self._context_tokens:
            return self._context_tokens
        return (self.info.max_positions or DEFAULT_CONTEXT) - RESERVE

    def _cost(self, text: str) -> int:
        return self.info.count_tokens(text)

    def memory_blocks(self, item: ReplyInput) -> list[str]:
        """Past material, first cut first: the retrieved turns, the compressive memory, the verbatim sessions."""
        names = {"user": item.user_name, "bot": item.bot_name}
        blocks: list[str] = []
        if item.evidence:
            lines = []
            for line in item.evidence:
                lines.extend(turn_line(speaker, text) for speaker, text in evidence_turns(line, (item.user_name, item.bot_name)))
            blocks.append("".join(lines))
        if item.memory.strip():
            blocks.append(SUMMARY_LINE.format(text=" ".join(item.memory.split())))
        for session in item.past_sessions:
            body = "".join(turn_line(names.get(author, author), text) for author, text in session)
            if body:
                blocks.append(body)
        return blocks

    def reply_prompt(self, item: ReplyInput) -> Prompt:
        self._bot_names.add(item.bot_name)
        names = {"user": item.user_name, "bot": item.bot_name}
        user, bot = item.user_name, item.bot_name
        blocks = self.memory_blocks(item)
        current = [turn_line(names.get(author, author), text) for author, text in item.turns]
        limit = self.context_tokens

        def cost(blocks: Sequence[str], current: Sequence[str]) -> int:
            return self._cost(build_frame(user, bot, blocks, current))

        # Oldest material goes first: whole past blocks, then the current session's oldest turns (never the last).
        while blocks and cost(blocks, current) > limit:
            blocks.pop(0)
        while len(current) > 1 and cost(blocks, current) > limit:
            current.pop(0)
        text = build_frame(user, bot, blocks, current)
        # If the newest turn alone is still too long, the backend cuts from the left at this limit.
        return Prompt(text=text, add_special_tokens=False, task=Task.REPLY, max_input_tokens=limit)

    def reply_params(
        self, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
    ) -> GenParams:
        """DialRet's inference setting: sampling at temperature 0.2; the length comes from the config."""
        return GenParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=TEMPERATURE)

    def clean_reply(self, raw: str) -> str:
        text = first_line(raw.replace("</s>", "\n").replace("```", "\n"))
        for name in sorted(self._bot_names, key=len, reverse=True):
            if text.startswith(name + ":"):
                return text[len(name) + 1 :].strip()
        return text

    # memory tasks: not available --------------------------------------------------------------------
    def memory_params(self, max_new_tokens: int, attempt: int) -> GenParams:
        raise NotImplementedError("dialret writes replies only; configure [memory_model]")

    def session_memory_prompt(self, item: SessionInput) -> Prompt:
        raise NotImplementedError("dialret writes replies only; configure [memory_model]")

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None:
        raise NotImplementedError("dialret writes replies only; configure [memory_model]")

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]:
        raise NotImplementedError("dialret writes replies only; configure [memory_model]")

    def parse_compression(self, raws: Sequence[str], item: CompressionInput) -> CompressionOutput | None:
        raise NotImplementedError("dialret writes replies only; configure [memory_model]")
