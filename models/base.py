"""What every model engine offers: generate a batch of prompts (streamed, or a job batch), count tokens.

Backends are synchronous on purpose: the model worker calls them from its own inference thread, so a
backend never needs to care about the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class Prompt:
    """A model input: chat messages (rendered with the model's chat template) or raw text.

    `task` names the memory task it serves; backends ignore it, except the fake one, which answers by it.
    """

    messages: tuple[Message, ...] | None = None
    text: str | None = None
    add_special_tokens: bool = True
    task: str = "reply"
    max_input_tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a Prompt holds either messages or text")

    def flat(self) -> str:
        """The prompt as plain text, for logs, token estimates and the isolation tests."""
        if self.text is not None:
            return self.text
        return "\n".join(f"{role}: {content}" for role, content in self.messages or ())


@dataclass(frozen=True)
class GenParams:
    """Every setting of one generation, for every engine.

    `min_new_tokens`: no end of text before this many tokens (GODEL's card: min_length=8).
    `retry_empty`: when sampling, sample again up to this many times an output that came back empty
    (DialoGPT's card).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    min_new_tokens: int = 0
    retry_empty: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token count that errs high: ~4 characters per token for ASCII text, one token per
    other character (a CJK character is one to two tokens in LLaMA-style vocabularies), never fewer than
    the number of words. Used when a profile is not bound to the model's tokenizer (e.g. a model server)."""
    if not text:
        return 0
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return max(math.ceil(ascii_chars / 4) + (len(text) - ascii_chars), len(text.split()))


@dataclass(frozen=True)
class TokenizerInfo:
    """What a profile may know about its model: a token counter, the EOS token's text and the context size.

    `exact` says whether `count_tokens` is the model's own tokenizer or an estimate.
    """

    count_tokens: Callable[[str], int] = estimate_tokens
    eos_token: str | None = None
    max_positions: int | None = None
    exact: bool = False


@dataclass(frozen=True)
class Capabilities:
    """What an engine does with `generate`'s optional arguments; the model worker reads this, not attributes.

    `streaming`: `on_text` receives the text as it grows (otherwise the worker hands over the final text).
    `between_steps`: `between_steps` is called between decode steps, so replies are served inside a job batch.
    `continuous_batching`: `max_rows` rows decode at once and a finished row's place goes to the next prompt,
    so the worker may hand over several batches' worth of job prompts in one call.
    """

    streaming: bool = False
    between_steps: bool = False
    continuous_batching: bool = False


class BackendError(Exception):
    """The model could not answer (server down, out of memory...); callers apologise or retry later."""


class Cancelled(BackendError):
    """The request was withdrawn while it ran (its caller gave up, or the model worker is closing).

    A BackendError, so code that retries or hands back work on a model failure does the same here."""


def stop_if_cancelled(cancelled: Callable[[], bool] | None) -> None:
    """Raise Cancelled once `cancelled` says so: what every engine does between its steps, chunks or waits."""
    if cancelled is not None and cancelled():
        raise Cancelled("the request was withdrawn")


@runtime_checkable
class Engine(Protocol):
    """One model behind one call: the embedded/transformers engine, a model server, or the test fake.

    `generate` takes a batch of prompts and returns one Generation each. `on_text` (one prompt only) streams;
    `between_steps` and `max_rows` serve job batches (see Capabilities). `cancelled` is polled while the batch
    runs (between decode steps locally, between streamed chunks or requests for a model server); once it
    returns True the engine stops and raises Cancelled, so a withdrawn request frees the model within a step.
    The model worker owns the queue, the batching and the withdrawing of requests.
    """

    name: str
    device: str
    capabilities: Capabilities

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams, *, on_text: Callable[[str], None] | None = None,
        between_steps: Callable[[], None] | None = None, max_rows: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Generation]: ...

    def count_tokens(self, text: str) -> int: ...

    def tokenizer_info(self) -> TokenizerInfo: ...

    def close(self) -> None: ...
