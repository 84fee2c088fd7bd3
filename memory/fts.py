"""The full-text index's words: each stemmed, then hashed with a key that belongs to one person.

Why per-person terms: with a plain index, `MATCH 'sister' AND user_id = ?` makes SQLite rank every
message of every person that says "sister" and then throw all but one person's away (189 ms p95 at a
million messages). With person-specific terms, a search reads only that person's postings, bm25's
document frequencies become the person's own (a word rare for them weighs more), and a query built for
one person matches another's message only on a 64-bit hash collision (the search also filters on the
owner, as a second lock on the door).

Why a key rather than a readable prefix ("u12wsister", migration 4): forgetting must cost what the
person's data costs, yet FTS5 (SQLite 3.40, no 'secure-delete' option) deletes by adding a tombstone
next to the old posting, and the posting's bytes stay in its segment until a merge rewrites it.
Removing them meant rebuilding the whole index inside the write lock (7.3 s at 300,000 messages, every
other person waiting). With keyed terms, forgetting deletes the person's rows and their key
(`users.fts_key`, overwritten by `secure_delete`): postings left in old segments are hashes that
nothing can turn back into words, and they go at the next merge.

SQLite computes the terms through the `membot_fts_index(key, text)` SQL function, which every
connection that writes messages must register (`register`): the store does it on open. A plain
`sqlite3` shell without it can read everything but cannot insert or delete messages ("no such
function"), which is refused cleanly, never half-done.

The terms must never change for a given key and text: the delete trigger removes what the function computes
now, so a change to `words`, the stemmer or the hash needs a migration that rebuilds the index.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
from typing import Any

from memory.porter import stem

SQL_FUNCTION = "membot_fts_index"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# A very long message still indexes, but only its first words: nobody searches past them.
MAX_INDEXED_WORDS = 2000


def words(text: str) -> list[str]:
    """Lower-cased, diacritics removed, split on anything that is not a letter or digit, stemmed."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return [stem(w) for w in _WORD.findall(folded)[:MAX_INDEXED_WORDS]]


def _hasher(key: bytes) -> Any:
    return hashlib.blake2b(key=key, digest_size=8)


def _term(keyed: Any, word: str) -> str:
    # Copying a keyed hasher skips the key setup; hex rather than base32: encoding was most of the cost
    # (51 µs against 8 µs for a 19-word message).
    h = keyed.copy()
    h.update(word.encode())
    return h.hexdigest()


def term(key: bytes, word: str) -> str:
    """One stemmed word as the index stores it for the key's owner: 64 bits of a keyed BLAKE2b in hex
    (16 letters and digits, one token for the unicode61 tokenizer)."""
    return _term(_hasher(key), word)


def keyed_terms(key: Any, text: Any) -> str:
    """What the index stores for one message (the SQL function's body); nothing without a key."""
    if not key or text is None:
        return ""
    keyed = _hasher(bytes(key))
    return " ".join(_term(keyed, w) for w in words(str(text)))


def keyed_query(key: bytes, content_words: list[str]) -> str | None:
    """An FTS5 OR-query over one person's postings; every term is quoted, so no user text is syntax."""
    terms: list[str] = []
    keyed = _hasher(key)
    for word in content_words:
        for w in words(word):
            t = _term(keyed, w)
            if t not in terms:
                terms.append(t)
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def _legacy_owner_terms(user_pk: Any, text: Any) -> str:
    """Migration 4's terms ("u12wsister"). Only that migration calls it, when an older database is brought
    up to date; migration 5 replaces the index with keyed terms right after."""
    if text is None or user_pk is None:
        return ""
    return " ".join(f"u{int(user_pk)}w{w}" for w in words(str(text)))


_FUNCTIONS = ((SQL_FUNCTION, keyed_terms), ("membot_fts_terms", _legacy_owner_terms))


def register(conn: sqlite3.Connection) -> None:
    """Make the index's SQL functions available on a plain sqlite3 connection."""
    for name, fn in _FUNCTIONS:
        conn.create_function(name, 2, fn, deterministic=True)


async def register_async(conn: Any) -> None:
    """The same on an aiosqlite connection."""
    for name, fn in _FUNCTIONS:
        await conn.create_function(name, 2, fn, deterministic=True)
