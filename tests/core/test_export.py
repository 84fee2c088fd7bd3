"""The export's times are ISO 8601 UTC, so a program can read back when everything happened (issue #15, item 7).

Each event happens at its own moment of the manual clock, so a field filled from the wrong column (or in
local time, or rounded to the minute) shows up as a wrong value, not just as a wrong format.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.app import App
from bot.incoming import IncomingMessage
from models.base import Prompt
from models.fake import FakeBackend, default_response
from tests.fakes.clock import ManualClock

pytestmark = pytest.mark.backends


def _msg(text: str) -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id="alice", display_name="Alice", chat_id="dm-alice",
                           chat_kind="dm", text=text)


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _parsed(value: Any) -> datetime:
    """A time field as a program reads it: ISO 8601 with an explicit UTC offset (a naive time is ambiguous)."""
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


async def test_every_time_in_the_export_is_iso_8601_utc_and_the_moment_it_happened(
    app: App, clock: ManualClock, fake_backend: FakeBackend
) -> None:
    # The first session memory comes out unusable, so the export also holds a flagged raw model output.
    spoiled = {"done": False}

    def respond(prompt: Prompt) -> str:
        if prompt.task == "session_memory" and not spoiled["done"]:
            spoiled["done"] = True
            return "%%%% not a memory %%%%"
        return default_response(prompt)

    fake_backend.responder = respond
    d = app.dispatcher
    first = clock.now  # 8 May 2023 13:56 UTC
    await d.handle(_msg("I keep bees on my roof."))
    clock.advance(20)  # well within the fixture's 60 s inactivity timeout: still the same session
    second = clock.now
    await d.handle(_msg("My cat is called Luna."))
    clock.advance(25)
    ended = clock.now
    await d.handle(_msg("/end"))
    clock.advance(45)
    jobs_ran = clock.now
    await app.jobs.run_until_idle()
    clock.advance(300)  # the export itself is later still: no field may take the time of the export
    data = json.loads((await d.handle(_msg("/export"))).document or b"{}")

    assert data["user"]["first_seen"] == "2023-05-08T13:56:00Z"  # the form issue #15 asks for
    assert _parsed(data["user"]["first_seen"]) == _at(first)
    [session] = data["sessions"]
    assert _parsed(session["started"]) == _at(first)
    assert _parsed(session["last_activity"]) == _at(second)
    assert _parsed(session["closed"]) == _at(ended)
    times = [(m["author"], _parsed(m["time"])) for m in session["messages"]]
    assert times == [("user", _at(first)), ("bot", _at(first)), ("user", _at(second)), ("bot", _at(second))]
    assert data["compressive_memory"], "the memory jobs wrote no compressive memory"
    for version in data["compressive_memory"]:
        assert _parsed(version["created"]) == _at(jobs_ran)
    assert data["flagged_model_outputs"], "the spoiled session memory was not kept"
    for output in data["flagged_model_outputs"]:
        assert _parsed(output["created"]) == _at(jobs_ran)
