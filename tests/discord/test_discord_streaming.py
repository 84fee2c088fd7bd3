"""Streaming replies on Discord: the reply grows in place by edits at most once a second, continuing in a
new message at the 2,000-character limit (as llmcord does), and ends exactly as the final reply.
"""

from __future__ import annotations

import itertools
import time

from bot.app import App
from bot.config import Settings
from bot.discord_adapter import EDIT_INTERVAL, MESSAGE_LIMIT, DiscordAdapter, split_discord
from models.fake import FakeBackend
from tests.discord.helpers import MESSAGE, MESSAGES, assert_no_pings, mention
from tests.fakes.clock import ManualClock
from tests.fakes.discord_payloads import DiscordHarness, RecordedRequest, RestReply


def _timed(h: DiscordHarness) -> list[tuple[float, RecordedRequest]]:
    """Record when each REST call reached the fake."""
    log: list[tuple[float, RecordedRequest]] = []
    handle = h.backend.handle

    def timed(req: RecordedRequest) -> RestReply:
        log.append((time.monotonic(), req))
        return handle(req)

    h.backend.handle = timed  # type: ignore[method-assign]
    return log


async def _streaming_app(settings: Settings, clock: ManualClock, answer: str, delay: float) -> App:
    settings.discord.streaming = True
    backend = FakeBackend(responder=lambda p: answer)
    backend.stream_delay = delay
    app = await App.create(settings, backend=backend, clock=clock)
    await app.start(schedule=False)
    return app


def _updates(log: list[tuple[float, RecordedRequest]]) -> list[tuple[float, RecordedRequest]]:
    return [(t, r) for t, r in log if r.matches("POST", MESSAGES) or r.matches("PATCH", MESSAGE)]


async def test_reply_grows_by_edits_at_most_once_a_second(settings: Settings, clock: ManualClock) -> None:
    answer = " ".join(f"word{i}" for i in range(50))
    app = await _streaming_app(settings, clock, answer, delay=0.05)  # about 2.5 s of generation
    try:
        adapter = DiscordAdapter(app, "fake-token")
        assert adapter.edit_interval == EDIT_INTERVAL == 1.0
        async with DiscordHarness(adapter.client) as h:
            log = _timed(h)
            payload = mention("talk to me")
            await h.dispatch_message(payload)
            updates = _updates(log)
            (first_time, first), *edits = updates
            assert first.method == "POST" and first.json["message_reference"]["message_id"] == int(payload["id"])
            assert answer.startswith(first.json["content"]) and first.json["content"] != answer  # a partial
            assert len(edits) >= 2 and all(r.method == "PATCH" for _, r in edits)
            assert {r.path for _, r in edits} == {f"/channels/{first.path.split('/')[2]}/messages/{first.response['id']}"}
            times = [first_time] + [t for t, _ in edits]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= EDIT_INTERVAL - 0.02, gaps  # never more than one edit a second
            assert edits[-1][1].json["content"] == answer  # ends as the final reply
            assert h.backend.messages[int(first.response["id"])]["content"] == answer
            assert assert_no_pings(h.http_calls) == len(updates)
        assert await app.store.scalar("SELECT text FROM messages WHERE author = 'bot'") == answer
    finally:
        await app.close()


async def test_streaming_continues_in_a_new_message_at_the_limit(settings: Settings, clock: ManualClock) -> None:
    answer = " ".join(f"token{i:04d}" for i in range(400))  # 4,399 characters: three messages
    app = await _streaming_app(settings, clock, answer, delay=0.002)
    try:
        adapter = DiscordAdapter(app, "fake-token")
        adapter.edit_interval = 0.2  # a faster cadence keeps this test short; the rule is the same
        async with DiscordHarness(adapter.client) as h:
            log = _timed(h)
            await h.dispatch_message(mention("a long one please"))
            updates = _updates(log)
            posts = [r for _, r in updates if r.method == "POST"]
            final = split_discord(answer)
            assert len(final) == 3 and len(posts) == 3
            shown = [h.backend.messages[int(p.response["id"])]["content"] for p in posts]
            assert shown == final and all(len(s) <= MESSAGE_LIMIT for s in shown)
            for before, after in itertools.pairwise(posts):  # each continues the previous one
                assert after.json["message_reference"]["message_id"] == int(before.response["id"])
            edit_times = [t for t, r in updates if r.method == "PATCH"]
            update_times = [t for t, _ in updates]
            for t in edit_times:  # an edit always waits out the interval after the previous update
                previous = max(u for u in update_times if u < t)
                assert t - previous >= adapter.edit_interval - 0.02
            assert_no_pings(h.http_calls)
    finally:
        await app.close()


async def test_without_streaming_one_message_is_sent(app: App, settings: Settings) -> None:
    assert settings.discord.streaming is False
    async with DiscordHarness(DiscordAdapter(app, "fake-token").client) as h:
        await h.dispatch_message(mention("hello"))
        assert [r.method for r in h.calls(None, MESSAGES)] == ["POST"] and h.calls("PATCH") == []
