"""The `dialogpt` profile: DialoGPT's input, the recent turns each followed by the EOS token (replies only).

`"{turn}<|endoftext|>{turn}<|endoftext|>…{user's last turn}<|endoftext|>"`, no speaker labels, no instruction,
no BOS added; the model writes the next turn and ends it with EOS. History is trimmed from the left by whole
turns to `history_tokens` (default 128, the pre-training sequence length; far under the 1,024 positions, since
DialoGPT's replies shrink towards empty as the history grows). The user's newest turn is always kept; alone
over the limit, the backend keeps its last `history_tokens` tokens.

There is no place for memory in this format: the compressive memory, the retrieved evidence and past sessions
are not shown to DialoGPT (the jobs still write them with the `[memory_model]`, for `/memory` and for a later
switch of model). `memory.strategy = "recent"` gives it the last turns of earlier sessions as well.

Decoding: greedy DialoGPT repeats itself, so replies are sampled (top_k 50, top_p 0.9, temperature 0.7,
no_repeat_ngram_size 3), and an empty reply is sampled again (`GenParams.retry_empty`, honoured by the
backends) before `clean_reply` gives up with "".

Padding: DialoGPT has absolute positions, hence the advice to pad on the right. The transformers backend pads
on the left but derives position ids from the attention mask (as `generate()` does), so every row of a batch
sees positions 0..n-1 exactly as it would alone; the tests check batch == single.
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

EOS = "<|endoftext|>"  # GPT-2's, for every DialoGPT size; a bound tokenizer's own EOS text wins
HISTORY_TOKENS = 128
TOP_K = 50
TOP_P = 0.9
TEMPERATURE = 0.7
NO_REPEAT_NGRAM = 3
RETRY_EMPTY = 2

_NOTHING = re.compile(r"^[\W_]*$")


class DialoGPTProfile:
    name = "dialogpt"
    tasks = frozenset({Task.REPLY})

    def __init__(self, history_tokens: int = HISTORY_TOKENS, info: TokenizerInfo | None = None) -> None:
        self.history_tokens = history_tokens
        self.info = info or TokenizerInfo()

    def bind(self, info: TokenizerInfo) -> None:
        self.info = info

    @property
    def eos(self) -> str:
        return self.info.eos_token or EOS

    def history(self, turns: Sequence[tuple[str, str]]) -> list[str]:
        """The newest whole turns, each with its EOS, whose tokens fit `history_tokens` (the newest always)."""
        eos = self.eos
        kept: list[str] = []
        used = 0
        for _, text in reversed(turns):
            piece = " ".join(text.replace(eos, " ").split()) + eos  # a typed EOS must not split a turn
            cost = self.info.count_tokens(piece)
            if kept and used + cost > self.history_tokens:
                break
            kept.append(piece)
            used += cost
        return list(reversed(kept))

    def reply_prompt(self, item: ReplyInput) -> Prompt:
        text = "".join(self.history(item.turns))
        return Prompt(text=text, add_special_tokens=False, task=Task.REPLY, max_input_tokens=self.history_tokens)

    def reply_params(
        self, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
    ) -> GenParams:
        """Sampling that avoids DialoGPT's known repetition; the config gives the length only."""
        return GenParams(
            max_new_tokens=max_new_tokens, do_sample=True, top_k=TOP_K, top_p=TOP_P, temperature=TEMPERATURE,
            no_repeat_ngram_size=NO_REPEAT_NGRAM, retry_empty=RETRY_EMPTY,
        )

    def clean_reply(self, raw: str) -> str:
        text = " ".join(first_line(raw.replace(self.eos, "\n")).split())
        return "" if _NOTHING.match(text) else text

    # memory tasks: not available --------------------------------------------------------------------
    def memory_params(self, max_new_tokens: int, attempt: int) -> GenParams:
        raise NotImplementedError("dialogpt writes replies only; configure [memory_model]")

    def session_memory_prompt(self, item: SessionInput) -> Prompt:
        raise NotImplementedError("dialogpt writes replies only; configure [memory_model]")

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None:
        raise NotImplementedError("dialogpt writes replies only; configure [memory_model]")

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]:
        raise NotImplementedError("dialogpt writes replies only; configure [memory_model]")

    def parse_compression(self, raws: Sequence[str], item: CompressionInput) -> CompressionOutput | None:
        raise NotImplementedError("dialogpt writes replies only; configure [memory_model]")
