"""Through the real jobs: what the bot or the model invents never becomes a fact about the person."""

from __future__ import annotations

import json

from bot.app import App
from bot.config import Settings
from bot.incoming import IncomingMessage
from models.base import Prompt
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

INVENTED = ("Colette", "Bordeaux", "Max", "Labrador", "romantic", "glad", "dear")


def small_model(prompt: Prompt) -> str:
    """Answers like the 135M model did: inventions in the reply, and in the memory it writes."""
    if prompt.task == "reply":
        return "Oh, I'm glad you're here, dear! You must be Colette, the baker from Bordeaux with a Labrador."
    if prompt.task == "session_memory":
        return ("- Tom is a baker named Colette.\n- Tom has a Labrador named Max.\n- Tom has a dog named Rex.\n"
                "- Tom works at a bakery in Bordeaux.\n- I'm glad you enjoyed our conversation, dear.\n"
                "- I'm glad you enjoyed our conversation, dear.\n- Tom is a baker in Paris.")
    if "get along" in prompt.flat():
        return "Tom and Membot have a romantic relationship. Membot is glad Tom is here."
    return "Tom is a baker named Colette who writes about his favourite artists. Tom has a dog named Rex."


def _msg(text: str) -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id="tom", display_name="Tom", chat_id="dm-tom",
                           chat_kind="dm", text=text)


async def _remember(settings: Settings, clock: ManualClock, *sessions: list[str]) -> dict:
    app = await App.create(settings, backend=FakeBackend(small_model), clock=clock)
    await app.start(schedule=False)
    try:
        for messages in sessions:
            for text in messages:
                await app.dispatcher.handle(_msg(text))
                clock.advance(30)
            await app.dispatcher.handle(_msg("/end"))
            await app.jobs.run_until_idle()
            clock.advance(3 * 86_400)
        reply = await app.dispatcher.handle(_msg("/export"))
        return json.loads(reply.document or b"{}")
    finally:
        await app.close()


def _stored(export: dict) -> tuple[list[str], dict[str, str]]:
    facts = [f for s in export["sessions"] for f in (s["session_memory"] or {}).get("facts", [])]
    latest = [v for v in export["compressive_memory"] if v["scope"] == "all"][-1]
    return facts, {k: latest[k] for k in ("profile", "relationship", "events")}


async def test_a_name_the_bot_invented_never_reaches_the_persons_memory(settings: Settings, clock: ManualClock) -> None:
    export = await _remember(settings, clock, ["I have a dog named Rex and I work as a baker in Paris."])
    facts, memory = _stored(export)
    stored = " ".join(facts) + " " + " ".join(memory.values())
    assert "Colette" in export["sessions"][0]["messages"][1]["text"]  # the bot did say it
    for word in INVENTED:
        assert word not in stored, (word, stored)
    assert any("dog named Rex" in f for f in facts)
    assert any("baker in Paris" in f for f in facts)
    assert "Rex" in memory["profile"] and "Paris" in memory["profile"]


async def test_a_bot_line_never_becomes_an_event(settings: Settings, clock: ManualClock) -> None:
    export = await _remember(settings, clock, ["Yesterday I ran my first 10k race."], ["I adopted a kitten today."])
    _, memory = _stored(export)
    events = memory["events"].splitlines()
    assert len(events) == 2 and all("glad" not in e and "I'm" not in e for e in events)
    assert "Tom ran their first 10k race yesterday (" in events[0]
    assert "Tom adopted a kitten today (" in events[1]


async def test_profile_and_relationship_hold_only_what_is_supported(settings: Settings, clock: ManualClock) -> None:
    export = await _remember(settings, clock, ["I have a dog named Rex."])
    _, memory = _stored(export)
    assert memory["relationship"] == ""  # nothing the person said supports the model's sentence
    assert "writes" not in memory["profile"] and "Rex" in memory["profile"]


async def test_a_correction_supersedes_the_old_fact(settings: Settings, clock: ManualClock) -> None:
    export = await _remember(settings, clock, ["I live in Lyon.", "My cat is called Tom."],
                             ["Actually I moved to Paris.", "No, my cat is called Lola."])
    _, memory = _stored(export)
    text = " ".join(memory.values())
    assert "Paris" in text and "Lola" in text
    assert "Lyon" not in text and "called Tom" not in text
    # The session memories keep what was said when: nothing is rewritten there.
    assert any("Lyon" in f for f in export["sessions"][0]["session_memory"]["facts"])
