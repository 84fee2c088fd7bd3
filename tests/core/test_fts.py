"""The full-text index: stemmed terms keyed to their owner, one person's search never reads another's
messages, forgetting a person leaves nothing readable of their words, and a database from before the index
changed is re-indexed on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from memory.fts import keyed_query, keyed_terms, register, term, words
from memory.retrieval import query_words, search_user_messages
from memory.schema import MIGRATIONS
from memory.sqlite_store import SQLiteStore as Store


def test_terms_are_stemmed_folded_and_keyed() -> None:
    assert words("Sisters LIVED in Zürich!") == ["sister", "live", "in", "zurich"]
    ann, bob = b"a" * 16, b"b" * 16
    assert keyed_terms(ann, "my sisters") == f"{term(ann, 'my')} {term(ann, 'sister')}"
    assert keyed_terms(ann, "sister") != keyed_terms(bob, "sister")  # the same word, two people: two terms
    assert "sister" not in keyed_terms(ann, "sister")  # the index holds no readable word
    assert len(term(ann, "sister")) == 16 and term(ann, "sister").isalnum()  # one unicode61 token
    assert keyed_terms(None, "sister") == ""  # no key, nothing indexed
    assert keyed_query(ann, ["sisters", "live"]) == f'"{term(ann, "sister")}" OR "{term(ann, "live")}"'
    # Quotes and FTS syntax in what a person types stay words.
    assert keyed_query(ann, ['"a" NEAR(b)', "OR"]) == " OR ".join(
        f'"{term(ann, w)}"' for w in ("a", "near", "b", "or"))
    assert keyed_query(ann, []) is None
    # The person's and the bot's names match greetings everywhere in their history: not searched for.
    assert query_words("What did Ann tell Membot about Oslo?", ignore=frozenset({"ann", "membot"})) == ["oslo"]


def _v3_database_with_messages(path: Path) -> None:
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO users(id, platform, platform_user_id, created) VALUES (1, 'c', 'ann', 0), (2, 'c', 'bob', 0)")
    conn.execute("INSERT INTO chats(id, platform, platform_chat_id, kind, created) VALUES (1, 'c', 'x', 'dm', 0)")
    conn.execute("INSERT INTO sessions(id, user_id, chat_id, private, started, last_activity) VALUES (1, 1, 1, 1, 0, 0)")
    conn.execute("INSERT INTO sessions(id, user_id, chat_id, private, started, last_activity) VALUES (2, 2, 1, 1, 0, 0)")
    rows = [
        (1, 1, "user", "My sister lives in Lyon."),
        (1, 1, "bot", "Lyon is lovely!"),
        (2, 2, "user", "My sister lives in Oslo and paints."),
    ]
    conn.executemany(
        "INSERT INTO messages(session_id, user_id, chat_id, author, text, created) VALUES (?, ?, 1, ?, ?, 0)", rows
    )
    conn.commit()
    conn.close()


async def test_old_database_is_reindexed_and_each_person_finds_only_their_own(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    _v3_database_with_messages(path)
    async with Store(path) as store:
        ann = await search_user_messages(store, 1, "Where does my sister live?")
        bob = await search_user_messages(store, 2, "Where does my sister live?")
        assert [e.text for e in ann] == ["My sister lives in Lyon."]
        assert [e.text for e in bob] == ["My sister lives in Oslo and paints."]
        assert await search_user_messages(store, 1, "paints Oslo") == []  # Bob's words, Ann's search
        assert {e.author for e in await search_user_messages(store, 1, "lyon")} == {"user", "bot"}
        # Deleting a person takes their terms out of the index, and the index agrees with the table.
        bob_key = bytes(await store.scalar("SELECT fts_key FROM users WHERE id = 2"))
        ann_key = bytes(await store.scalar("SELECT fts_key FROM users WHERE id = 1"))
        vocab = "SELECT COUNT(*) FROM messages_fts_vocab WHERE term = ?"
        assert await store.scalar(vocab, (term(bob_key, "paint"),)) == 1
        async with store.write() as db:
            await db.execute("DELETE FROM users WHERE id = 2")
            await db.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        for word in ("sister", "paint", "oslo"):
            assert await store.scalar(vocab, (term(bob_key, word),)) == 0
        assert await store.scalar(vocab, (term(ann_key, "lyon"),)) == 1
        assert await store.scalar("SELECT COUNT(*) FROM messages") == 2


async def test_forgetting_costs_the_person_not_the_index(tmp_path: Path) -> None:
    """No rebuild: forgetting one person leaves the other people's index segments as they were (a rebuild
    rewrites them all), and the person's key, the only way to read their leftover postings, is gone."""
    path = tmp_path / "v3.sqlite3"
    _v3_database_with_messages(path)
    async with Store(path) as store:
        key = bytes(await store.scalar("SELECT fts_key FROM users WHERE id = 2"))
        segments = "SELECT id, block FROM messages_fts_data WHERE id > 10 ORDER BY id"
        before = [tuple(r) for r in await store.fetchall(segments)]
        from memory.privacy import forget_user

        await forget_user(store, 2)
        after = [tuple(r) for r in await store.fetchall(segments)]
        assert set(before) <= set(after)  # old segments untouched: the cost is the person's, not the index's
        assert await store.scalar("SELECT COUNT(*) FROM users WHERE fts_key = ?", (key,)) == 0
        assert key not in path.read_bytes() + (tmp_path / "v3.sqlite3-wal").read_bytes()
        assert [e.text for e in await search_user_messages(store, 1, "sister")] == ["My sister lives in Lyon."]


def test_a_shell_without_the_function_refuses_writes_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    _v3_database_with_messages(path)
    conn = sqlite3.connect(path)
    register(conn)
    for number in (4, 5):
        conn.executescript(MIGRATIONS[number - 1])
    conn.commit()
    conn.close()
    bare = sqlite3.connect(path)
    assert bare.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3  # reading needs nothing
    with pytest.raises(sqlite3.OperationalError, match="membot_fts_index"):
        bare.execute("DELETE FROM messages WHERE id = 1")
    bare.rollback()
    assert bare.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3
    bare.close()


async def test_filters_that_drop_the_best_hits_still_leave_enough(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    _v3_database_with_messages(path)
    async with Store(path) as store:
        async with store.write() as db:  # the current session (1) is full of better matches
            await db.executemany(
                "INSERT INTO messages(session_id, user_id, chat_id, author, text, created) VALUES (1, 1, 1, 'user', ?, 0)",
                [("Lyon Lyon Lyon",)] * 60,
            )
            await db.execute("INSERT INTO sessions(id, user_id, chat_id, private, started, last_activity, state) "
                             "VALUES (3, 1, 1, 1, 0, 0, 'closed')")
            await db.execute("INSERT INTO messages(session_id, user_id, chat_id, author, text, created) "
                             "VALUES (3, 1, 1, 'user', 'We met in Lyon in May, a long walk by the river.', 0)")
        found = await search_user_messages(store, 1, "Lyon", limit=2, exclude_session=1)
        assert [e.session_id for e in found] == [3]  # found past the 24 best, all in the excluded session
