"""The full-text index's words: each stemmed and prefixed with its owner, so one person's search never
touches another person's postings.

Why owner-prefixed terms: with a plain index, `MATCH 'sister' AND user_id = ?` makes SQLite rank every
message of every person that says "sister" and then throw all but one person's away (189 ms p95 at a
million messages). With `u12wsister` in the index, the search reads only person 12's postings, bm25's
document frequencies become that person's own (a word rare for them weighs more), and a query built for
one person cannot match another's message by construction.

SQLite computes the terms through the `membot_fts_terms(user_id, text)` SQL function, which every
connection that writes messages must register (`register`): the store does it on open. A plain
`sqlite3` shell without it can read everything but cannot insert or delete messages ("no such
function"), which is refused cleanly, never half-done.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from typing import Any

from memory.porter import stem

SQL_FUNCTION = "membot_fts_terms"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# A very long message still indexes, but only its first words: nobody searches past them.
MAX_INDEXED_WORDS = 2000


def words(text: str) -> list[str]:
    """Lower-cased, diacritics removed, split on anything that is not a letter or digit, stemmed."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return [stem(w) for w in _WORD.findall(folded)[:MAX_INDEXED_WORDS]]


def owner_prefix(user_pk: int) -> str:
    # "u<digits>w": the first letter after the digits ends the owner, so u1w2x and u12wx never collide.
    return f"u{int(user_pk)}w"


def owner_terms(user_pk: Any, text: Any) -> str:
    """What the index stores for one message (the SQL function's body)."""
    if text is None or user_pk is None:
        return ""
    prefix = owner_prefix(int(user_pk))
    return " ".join(prefix + w for w in words(str(text)))


def owner_query(user_pk: int, content_words: list[str]) -> str | None:
    """An FTS5 OR-query over one person's postings; every term is quoted, so no user text is syntax."""
    prefix = owner_prefix(user_pk)
    terms: list[str] = []
    for word in content_words:
        for w in words(word):
            term = prefix + w
            if term not in terms:
                terms.append(term)
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def register(conn: sqlite3.Connection) -> None:
    """Make the index's SQL function available on a plain sqlite3 connection."""
    conn.create_function(SQL_FUNCTION, 2, owner_terms, deterministic=True)


async def register_async(conn: Any) -> None:
    """The same on an aiosqlite connection."""
    await conn.create_function(SQL_FUNCTION, 2, owner_terms, deterministic=True)
