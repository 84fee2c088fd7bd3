"""A clock tests move by hand, so inactivity timeouts are tested without sleeping."""

from __future__ import annotations


class ManualClock:
    def __init__(self, start: float = 1_683_554_160.0) -> None:  # 8 May 2023 13:56 UTC
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
