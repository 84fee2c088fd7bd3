"""The `godel` profile: GODEL v1.1 (T5 encoder-decoder) grounded replies (replies only).

Input, as on the model card: `{instruction} [CONTEXT] {turn1} EOS {turn2} EOS … {last turn} [KNOWLEDGE] {knowledge}`
where `EOS` is the literal text of the tokenizer's added token, turns carry no speaker names (newest last), and
`[KNOWLEDGE] …` is left out when there is nothing to ground on. The tokenizer appends its `</s>` as on the card
(`add_special_tokens=True`). The card's own code leaves a trailing space after the last turn when there is no
knowledge; this profile writes the documented format, without it.

Memory goes into `[KNOWLEDGE]`: the compressive memory, then the retrieved evidence, then verbatim past
sessions (newest first), on one line. Then the instruction is the card's grounded one; without any, the
card's empathic one. The whole encoder input, `</s>` included, stays within 512 tokens: the instruction and
the newest turn always (the newest turn cut to its last words if it alone is too long), older turns by whole
turns newest first up to half of the room left, the knowledge cut to what remains (its start kept), then
more older turns if there is still room.

Generation follows the card: sampling with top_p 0.9 (and transformers' default top_k 50, which the card's
call inherits), at least 8 decoder positions (`min_length=8`, i.e. 7 new tokens) and at most 128.
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
)

INSTRUCTION_EMPATHIC = "Instruction: given a dialog context, you need to response empathically."
INSTRUCTION_GROUNDED = (
    "Instruction: given a dialog context and related knowledge, you need to response safely based on the knowledge."
)
EOS = "EOS"
MAX_INPUT_TOKENS = 512
# Card: model.generate(input_ids, max_length=128, min_length=8, top_p=0.9, do_sample=True)
MAX_NEW_TOKENS = 127  # max_length counts the decoder start token
MIN_NEW_TOKENS = 7
TOP_P = 0.9
TOP_K = 50  # GenerationConfig's default, in effect in the card's call

_EOS_WORD = re.compile(r"\bEOS\b")


def defuse(text: str) -> str:
    """One line; a typed `EOS` would split a turn and typed markers would fake a section."""
    text = " ".join(text.split())
    text = text.replace(EOS, "Eos").replace("[CONTEXT]", "(CONTEXT)").replace("[KNOWLEDGE]", "(KNOWLEDGE)")
    return text


def build_input(instruction: str, turns: Sequence[str], knowledge: str = "") -> str:
    text = f"{instruction} [CONTEXT] {f' {EOS} '.join(turns)}"
    if knowledge:
        text += f" [KNOWLEDGE] {knowledge}"
    return text


class GodelProfile:
    name = "godel"
    tasks = frozenset({Task.REPLY})

    def __init__(self, max_input_tokens: int = MAX_INPUT_TOKENS, info: TokenizerInfo | None = None) -> None:
        self.max_input_tokens = max_input_tokens
        self.info = info or TokenizerInfo()

    def bind(self, info: TokenizerInfo) -> None:
        self.info = info

    def cost(self, text: str) -> int:
        """Encoder tokens, the appended `</s>` included."""
        return self.info.count_tokens(text) + 1

    def knowledge(self, item: ReplyInput) -> str:
        names = {"user": item.user_name, "bot": item.bot_name}
        parts = [item.memory, *item.evidence]
        for session in reversed(item.past_sessions):
            parts.extend(f"{names.get(author, author)}: {text}" for author, text in session)
        return defuse(" ".join(p for p in parts if p.strip()))

    def _cut_words(self, text: str, fits: object, keep_end: bool = False) -> str:
        words = text.split()
        lo, hi = 0, len(words)
        while lo < hi:  # the most words that fit
            mid = (lo + hi + 1) // 2
            piece = " ".join(words[-mid:] if keep_end else words[:mid])
            if fits(piece):  # type: ignore[operator]
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            return ""
        return " ".join(words[-lo:] if keep_end else words[:lo])

    def fit(self, turns: Sequence[str], knowledge: str) -> tuple[str, list[str], str]:
        """(instruction, turns kept, knowledge kept) within `max_input_tokens`."""
        limit = self.max_input_tokens
        instruction = INSTRUCTION_GROUNDED if knowledge else INSTRUCTION_EMPATHIC
        newest = turns[-1] if turns else ""
        if self.cost(build_input(instruction, [newest])) > limit:
            newest = self._cut_words(
                newest, lambda t: self.cost(build_input(instruction, [t])) <= limit, keep_end=True
            )
        kept = [newest]
        older = list(turns[:-1])

        def add_older(fits: object) -> None:
            while older and fits([older[-1], *kept]):  # type: ignore[operator]
                kept.insert(0, older.pop())

        if knowledge:
            base = self.cost(build_input(instruction, kept))
            share = (limit - base) // 2
            add_older(lambda trial: self.cost(build_input(instruction, trial)) - base <= share)
            if self.cost(build_input(instruction, kept, knowledge)) > limit:
                knowledge = self._cut_words(
                    knowledge, lambda k: self.cost(build_input(instruction, kept, k)) <= limit
                )
            if not knowledge:
                instruction = INSTRUCTION_EMPATHIC
        add_older(lambda trial: self.cost(build_input(instruction, trial, knowledge)) <= limit)
        return instruction, kept, knowledge

    def reply_prompt(self, item: ReplyInput) -> Prompt:
        turns = [defuse(text) for _, text in item.turns]
        instruction, kept, knowledge = self.fit(turns, self.knowledge(item))
        return Prompt(
            text=build_input(instruction, kept, knowledge), add_special_tokens=True, task=Task.REPLY,
            max_input_tokens=self.max_input_tokens,
        )

    def reply_params(
        self, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
    ) -> GenParams:
        """The card's generation settings; the config may only shorten the reply."""
        return GenParams(
            max_new_tokens=min(max_new_tokens, MAX_NEW_TOKENS), do_sample=True, top_p=TOP_P, top_k=TOP_K,
            min_new_tokens=min(MIN_NEW_TOKENS, max_new_tokens),
        )

    def clean_reply(self, raw: str) -> str:
        return " ".join(_EOS_WORD.split(raw, 1)[0].split())

    # memory tasks: not available --------------------------------------------------------------------
    def memory_params(self, max_new_tokens: int, attempt: int) -> GenParams:
        raise NotImplementedError("godel writes replies only; configure [memory_model]")

    def session_memory_prompt(self, item: SessionInput) -> Prompt:
        raise NotImplementedError("godel writes replies only; configure [memory_model]")

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None:
        raise NotImplementedError("godel writes replies only; configure [memory_model]")

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]:
        raise NotImplementedError("godel writes replies only; configure [memory_model]")

    def parse_compression(self, raws: Sequence[str], item: CompressionInput) -> CompressionOutput | None:
        raise NotImplementedError("godel writes replies only; configure [memory_model]")
