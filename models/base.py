"""What every model backend offers: generate a batch of prompts, count tokens.

Backends are synchronous on purpose: the model worker calls them from its own inference thread, so a
backend never needs to care about the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int


class BackendError(Exception):
    """The model could not answer (server down, out of memory...); callers apologise or retry later."""


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str

    def generate(self, prompts: Sequence[Prompt], params: GenParams) -> list[Generation]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...
