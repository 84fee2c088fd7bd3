"""Sessions close after inactivity (fake clock), on request, and after a crash."""

from __future__ import annotations

import pytest

from memory.sessions import SessionManager
from memory.store import Store
from tests.fakes.clock import ManualClock

pytestmark = pytest.mark.backends


async def _say(sm: SessionManager, text: str, user: str = "alice", chat: str = "c1", kind: str = "dm", mid: str | None = None):
    return await sm.record_user_message(
        platform="telegram", user_id=user, display_name=user.title(), chat_id=chat, chat_kind=kind, text=text,
        platform_message_id=mid,
    )


async def test_session_times_out_with_a_fake_clock(storage_target: str) -> None:
    clock = ManualClock()
    async with Store.at(storage_target) as store:
        sm = SessionManager(store, inactivity_timeout=30, clock=clock)
        first = await _say(sm, "hello")
        clock.advance(29)
        same = await _say(sm, "still here")
        assert same.session_id == first.session_id and not same.new_session
        clock.advance(31)
        assert await sm.sweep() == [first.session_id]
        row = await store.fetchone("SELECT state, closed, close_reason FROM sessions WHERE id = ?", (first.session_id,))
        assert row["state"] == "closed" and row["close_reason"] == "inactivity"
        assert row["closed"] == clock.now - 31  # closed at the last activity, not when noticed
        job = await store.fetchone("SELECT kind, state FROM jobs WHERE key = ?", (str(first.session_id),))
        assert (job["kind"], job["state"]) == ("session_memory", "pending")
        later = await _say(sm, "back again")
        assert later.session_id != first.session_id and later.new_session


async def test_a_message_after_the_timeout_opens_a_new_session_without_a_sweep(storage_target: str) -> None:
    clock = ManualClock()
    async with Store.at(storage_target) as store:
        sm = SessionManager(store, inactivity_timeout=30, clock=clock)
        first = await _say(sm, "hello")
        clock.advance(100)
        second = await _say(sm, "hi again")
        assert second.session_id != first.session_id
        assert await store.scalar("SELECT state FROM sessions WHERE id = ?", (first.session_id,)) == "closed"
        assert await store.scalar("SELECT COUNT(*) FROM jobs") == 1


async def test_explicit_end_and_per_chat_sessions(storage_target: str) -> None:
    async with Store.at(storage_target) as store:
        sm = SessionManager(store, inactivity_timeout=300, clock=ManualClock())
        dm = await _say(sm, "in my dm")
        group = await _say(sm, "in the group", chat="g1", kind="group")
        assert dm.session_id != group.session_id and dm.private and not group.private
        assert await sm.end_session(dm.user_pk, dm.chat_pk) == 1
        assert await sm.end_session(dm.user_pk, dm.chat_pk) == 0
        assert await store.scalar("SELECT state FROM sessions WHERE id = ?", (group.session_id,)) == "open"


async def test_redelivered_platform_message_is_stored_once(storage_target: str) -> None:
    async with Store.at(storage_target) as store:
        sm = SessionManager(store, clock=ManualClock())
        first = await _say(sm, "hello", mid="42")
        again = await _say(sm, "hello (edited)", mid="42")
        assert again.duplicate and again.message_id == first.message_id
        assert await store.scalar("SELECT COUNT(*) FROM messages") == 1


async def test_recovery_after_a_crash(storage_target: str) -> None:
    clock = ManualClock()
    path = storage_target
    async with Store.at(path) as store:
        sm = SessionManager(store, inactivity_timeout=30, clock=clock)
        idle = await _say(sm, "left open by a crash")
        await store.set_kv("x", "y")
        async with store.write() as db:  # a job a crash left half-done
            await db.execute(
                "INSERT INTO jobs(kind, key, user_id, state, created, updated) VALUES ('compress', 'k', ?, 'running', 0, 0)",
                (idle.user_pk,),
            )
    clock.advance(3600)
    async with Store.at(path) as store:
        sm = SessionManager(store, inactivity_timeout=30, clock=clock)
        result = await sm.recover()
        assert result == {"closed": 1, "requeued": 1}
        assert await store.scalar("SELECT state FROM sessions WHERE id = ?", (idle.session_id,)) == "closed"
        states = [r[0] for r in await store.fetchall("SELECT state FROM jobs ORDER BY id")]
        assert states == ["pending", "pending"]
