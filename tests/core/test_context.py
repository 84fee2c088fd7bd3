"""Task 3: the reply input, per strategy, always within the token budget, and never another person's."""

from __future__ import annotations

import pytest

from bot.app import App
from bot.incoming import IncomingMessage
from memory.context import ContextBuilder
from models.fake import FakeBackend
from tests.fakes.clock import ManualClock

pytestmark = pytest.mark.backends


def _msg(text: str, user: str = "alice", chat: str = "dm-alice", kind: str = "dm") -> IncomingMessage:
    return IncomingMessage(platform="telegram", user_id=user, display_name=user.title(), chat_id=chat,
                           chat_kind=kind, text=text)


async def _history(app: App, clock: ManualClock) -> None:
    facts = [
        "I grew up in Porto and moved to Lyon.",
        "My violin teacher is called Mrs Okafor.",
        "I am training for the Berlin marathon in September.",
        "My favourite food is ramen with extra egg.",
    ]
    for fact in facts:
        await app.dispatcher.handle(_msg(fact))
        await app.dispatcher.handle(_msg("Also, the weather was grey and rainy all day long. " * 3))
        clock.advance(120)
        await app.jobs.run_until_idle()


def _count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("strategy", ["none", "recent", "sessions", "compressive", "hybrid"])
@pytest.mark.parametrize("budget", [64, 128, 512])
async def test_every_strategy_stays_within_budget(app: App, clock: ManualClock, strategy: str, budget: int) -> None:
    await _history(app, clock)
    rec = await app.sessions.record_user_message(
        platform="telegram", user_id="alice", display_name="Alice", chat_id="dm-alice", chat_kind="dm",
        text="Who is my violin teacher?",
    )
    builder = ContextBuilder(store=app.store, count_tokens=_count, bot_name="Membot", persona="p",
                             strategy=strategy, budget=budget)
    ctx = await builder.build(user_pk=rec.user_pk, user_name="Alice", session_id=rec.session_id,
                              include_private=True, query="Who is my violin teacher?")
    used = _count(ctx.memory) + sum(_count(e) + 1 for e in ctx.evidence) + sum(_count(t) + 2 for _, t in ctx.turns)
    used += sum(_count(t) + 2 for s in ctx.past_sessions for _, t in s) + 4 * len(ctx.past_sessions)
    assert used <= budget
    assert ctx.turns[-1] == ("user", "Who is my violin teacher?")
    if strategy == "hybrid" and budget >= 128:
        assert any("Okafor" in e for e in ctx.evidence)
    if strategy in ("compressive", "hybrid") and budget >= 128:
        assert ctx.memory.startswith("Profile:")
    if strategy == "none":
        assert not ctx.memory and not ctx.evidence and len(ctx.turns) == 1


async def test_hybrid_evidence_is_dated(app: App, clock: ManualClock) -> None:
    await _history(app, clock)
    rec = await app.sessions.record_user_message(
        platform="telegram", user_id="alice", display_name="Alice", chat_id="dm-alice", chat_kind="dm",
        text="When did I talk about ramen?",
    )
    ctx = await app.dispatcher.context.build(user_pk=rec.user_pk, user_name="Alice", session_id=rec.session_id,
                                             include_private=True, query="ramen")
    assert any(e.startswith("[8 May 2023] Alice: My favourite food is ramen") for e in ctx.evidence)


async def test_group_prompts_hold_no_private_memory(app: App, fake_backend: FakeBackend, clock: ManualClock) -> None:
    await app.dispatcher.handle(_msg("My secret code is PELICAN-42."))
    await app.dispatcher.handle(_msg("I like jazz.", chat="group-1", kind="group"))
    clock.advance(120)
    await app.jobs.run_until_idle()
    fake_backend.calls.clear()
    await app.dispatcher.handle(_msg("What is my secret code?", chat="group-1", kind="group"))
    reply_prompts = [p for p in fake_backend.prompts if p.task == "reply"]
    assert reply_prompts and "PELICAN" not in reply_prompts[-1].flat()
    assert "jazz" in reply_prompts[-1].flat()
    fake_backend.calls.clear()
    await app.dispatcher.handle(_msg("What is my secret code?"))
    assert "PELICAN-42" in fake_backend.prompts[-1].flat()


async def test_another_persons_memory_never_appears(app: App, fake_backend: FakeBackend, clock: ManualClock) -> None:
    await app.dispatcher.handle(_msg("My passport number is ZX-9911.", user="alice", chat="g", kind="group"))
    clock.advance(120)
    await app.jobs.run_until_idle()
    fake_backend.calls.clear()
    await app.dispatcher.handle(_msg("What is Alice's passport number? passport", user="bob", chat="g", kind="group"))
    assert all("ZX-9911" not in p.flat() for p in fake_backend.prompts)


@pytest.mark.parametrize("text", [
    "长" * 2400,  # a long run of Chinese characters: no spaces at all
    "https://example.org/" + "a1b2c3" * 400,  # a 2,420-character URL
    "😀" * 4000,  # a line of emoji
])
async def test_the_newest_message_always_reaches_the_model_cut_if_it_must(
    app: App, fake_backend: FakeBackend, text: str
) -> None:
    """A first run without spaces longer than the budget used to be cut to "": the model answered nothing."""
    reply = await app.dispatcher.handle(_msg(text))
    assert reply.kind == "reply"
    prompt = fake_backend.prompts[-1]
    last_role, last_text = prompt.messages[-1]
    assert last_role == "user" and last_text and text.startswith(last_text)
    assert fake_backend.count_tokens(last_text) <= app.settings.memory.reply_context_tokens


@pytest.mark.parametrize(("text", "budget", "expected"), [
    ("one two three four", 2, "one two"),
    ("abcdefghijklmnop", 2, "abcdefghijk"),  # no space: cut by characters, never to nothing
    ("abcdefghijklmnop rest", 2, "abcdefghijk"),
    ("short", 10, "short"),
    ("anything", 0, ""),
])
def test_cut_to_keeps_the_longest_beginning(text: str, budget: int, expected: str) -> None:
    from memory.context import _cut_to

    assert _cut_to(text, budget, lambda t: len(t) // 4) == expected
