"""A deterministic fake backend for unit tests: fast, no weights, answers by the prompt's task.

It echoes what it was given in the shape each task expects, so a test can follow a fact from a user's
message through the session memory and the compressive memory into the next reply's prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from models.base import (
    BackendError,
    Capabilities,
    Generation,
    GenParams,
    Prompt,
    TokenizerInfo,
    stop_if_cancelled,
)


class FakeBackend:
    name = "fake"
    device = "cpu"
    capabilities = Capabilities(streaming=True)

    def __init__(self, responder: Callable[[Prompt], str] | None = None, delay: float = 0.0) -> None:
        self.responder = responder or default_response
        self.delay = delay
        self.stream_delay = 0.0
        self.calls: list[tuple[list[Prompt], GenParams]] = []
        self.fail_next = 0
        self.fail_always = False
        self._lock = threading.Lock()

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams, *, on_text: Callable[[str], None] | None = None,
        between_steps: Callable[[], None] | None = None, max_rows: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Generation]:
        """Streamed (`on_text`): word by word, `stream_delay` apart, so adapters' throttled edits can be tested.
        `cancelled` is polled through the delays, as a real engine polls it between steps."""
        def wait(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                stop_if_cancelled(cancelled)
                threading.Event().wait(min(left, 0.01))

        with self._lock:
            self.calls.append((list(prompts), params))
            if self.fail_always or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                raise BackendError("fake backend failure")
        wait(self.delay)
        out = []
        for prompt in prompts:
            text = self.responder(prompt)
            out.append(Generation(text=text, new_tokens=self.count_tokens(text)))
        if on_text is not None:
            words = out[0].text.split(" ")
            for i in range(1, len(words) + 1):
                on_text(" ".join(words[:i]))
                wait(self.stream_delay)
        return out

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4) if text else 0

    def tokenizer_info(self) -> TokenizerInfo:
        return TokenizerInfo(count_tokens=self.count_tokens)

    def close(self) -> None:
        pass

    @property
    def prompts(self) -> list[Prompt]:
        return [p for batch, _ in self.calls for p in batch]


def _last_user(prompt: Prompt) -> str:
    if prompt.messages:
        for role, content in reversed(prompt.messages):
            if role == "user":
                return content
    return prompt.text or ""


def default_response(prompt: Prompt) -> str:
    body = _last_user(prompt)
    if prompt.task == "session_memory":
        lines = body.split("\n")[1:]
        transcript = [ln for ln in lines if ": " in ln and ln.strip()]
        return "\n".join(f"- {ln.split(': ', 1)[0]} said {ln.split(': ', 1)[1]}" for ln in transcript) or "-"
    if prompt.task == "compress":
        # Like a real model, its output is bounded: the newest notes, at most 400 characters.
        notes = [ln[2:] for ln in body.splitlines() if ln.startswith("- (")]
        return " ".join(notes)[-400:].strip() or "Nothing known yet."
    return "echo: " + body.strip()
