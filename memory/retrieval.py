"""Verbatim evidence from a person's past sessions, found with the store's full-text index (SQLite FTS5
with bm25, or PostgreSQL tsvector with ts_rank).

Compression drops details; a keyword search over the person's own earlier turns finds them again.
Both indexes hold terms keyed to their owner (memory/fts.py, memory/postgres_schema.py): a search reads one
person's postings only. It is always filtered to one user, and to non-private sessions when the reply goes
to a group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memory.store import Store
from models.profiles.base import STOPWORDS

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Evidence:
    message_id: int
    session_id: int
    author: str
    text: str
    created: float
    score: float


def query_words(text: str, max_terms: int = 16, ignore: frozenset[str] = frozenset()) -> list[str]:
    """The question's content words, in order, stop words (and `ignore`, lower-case) dropped."""
    terms: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group(0)
        if word in STOPWORDS or word in ignore or len(word) < 2 or word in terms:
            continue
        terms.append(word)
        if len(terms) >= max_terms:
            break
    return terms


async def search_user_messages(
    store: Store,
    user_pk: int,
    query_text: str,
    *,
    limit: int = 8,
    exclude_session: int | None = None,
    include_private: bool = True,
    ignore_names: tuple[str, ...] = (),
) -> list[Evidence]:
    """`ignore_names`: the person's and the bot's names, which match greetings ("Hi Ann!") everywhere in a
    person's own history and say nothing about what the message asks."""
    ignore = frozenset(w.lower() for name in ignore_names for w in _TOKEN.findall(name))
    if limit <= 0:
        return []
    words = query_words(query_text, ignore=ignore)
    if not words:
        return []
    # Rank inside the index first (the person's own postings, no table lookups), then join only the best
    # few to their messages and apply the filters. If fewer than `limit` remain (few matches, or the
    # filters, the current session and private chats, dropped many), rank them all: with few matches that
    # is the same cheap query again, and otherwise it finds what lay past the first cut.
    # The keyed terms already confine the match to this person; `m.user_id = ?` stays as a second lock on
    # the door.
    filters, params = "m.user_id = ?", [user_pk]
    if exclude_session is not None:
        filters += " AND m.session_id != ?"
        params.append(exclude_session)
    if not include_private:
        filters += " AND s.private = 0"
    rows = await store.search(user_pk, words, filters, params, limit * 2 + 20, limit)
    return [Evidence(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), float(r[5])) for r in rows]
