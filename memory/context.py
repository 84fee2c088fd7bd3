"""COMEDY task 3's input: what the reply model sees, cut to a token budget, per memory strategy.

Strategies (all under the same budget, counted with the reply model's tokenizer):
- none: the current session only;
- recent: the most recent turns that fit, across sessions (what DialoGPT-style bots do);
- sessions: whole past sessions, newest first (DialRet-style long context);
- compressive: the person's compressive memory (COMEDY);
- hybrid (default): compressive memory plus verbatim turns from past sessions found by FTS5 for the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memory.dates import format_date, resolve_relative
from memory.facts import sentences
from memory.retrieval import search_user_messages
from memory.store import Store
from models.profiles.base import ReplyInput, content_words

CountTokens = Callable[[str], int]
STRATEGIES = ("none", "recent", "sessions", "compressive", "hybrid")


@dataclass(frozen=True)
class CompressiveMemory:
    version: int
    profile: str
    relationship: str
    events: str
    scope: str

    def render(self, max_tokens: int, count: CountTokens, query: str = "") -> str:
        """As many of the memory's lines as fit: profile sentences and dated events that share words with
        the message first, then the newest; printed in their own order. Empty parts are left out, and a
        profile longer than the budget gives way to what the message asks about."""
        parts = {
            "p": sentences(self.profile),
            "r": sentences(self.relationship),
            "e": [e for e in self.events.splitlines() if e.strip()],
        }
        wanted = content_words(query)
        rank = {"p": 0, "r": 1, "e": 2}
        candidates = [(kind, i, text) for kind, lines in parts.items() for i, text in enumerate(lines)]
        # Relevance first; then the profile in its own order, the relationship, the events newest first.
        order = sorted(
            candidates,
            key=lambda c: (-len(content_words(c[2]) & wanted), rank[c[0]], -c[1] if c[0] == "e" else c[1]),
        )
        used = count("Profile:\nRelationship:\nEvents:") + 3
        chosen: set[tuple[str, int]] = set()
        for kind, i, text in order:
            cost = count(text) + 1
            if used + cost > max_tokens:
                continue
            chosen.add((kind, i))
            used += cost
        kept = {kind: [t for i, t in enumerate(lines) if (kind, i) in chosen] for kind, lines in parts.items()}
        lines = []
        if kept["p"]:
            lines.append("Profile: " + " ".join(kept["p"]))
        if kept["r"]:
            lines.append("Relationship: " + " ".join(kept["r"]))
        if kept["e"]:
            lines.append("Events:\n" + "\n".join(kept["e"]))
        return "\n".join(lines)


async def latest_compressive(store: Store, user_pk: int, scope: str) -> CompressiveMemory | None:
    row = await store.fetchone(
        "SELECT version, profile, relationship, events, scope FROM compressive_memories "
        "WHERE user_id = ? AND scope = ? ORDER BY version DESC LIMIT 1",
        (user_pk, scope),
    )
    if row is None:
        return None
    return CompressiveMemory(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]))


def _cut_to(text: str, max_tokens: int, count: CountTokens) -> str:
    """The longest beginning of `text` within `max_tokens`: at a space when the first word fits, else by
    characters (a run with no spaces, such as 360 Chinese characters, a long URL or a line of emoji, must not
    become nothing). Empty only when the budget is."""
    if max_tokens <= 0:
        return ""
    if count(text) <= max_tokens:
        return text
    words = text.split()
    lo = _longest_fit(len(words), lambda n: count(" ".join(words[:n])) <= max_tokens)
    if lo:
        return " ".join(words[:lo])
    chars = _longest_fit(len(text), lambda n: count(text[:n]) <= max_tokens)
    return text[: max(chars, 1)]


def _longest_fit(size: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 0..size with fits(n), for a monotone `fits` (binary search: counting is not free)."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class ContextBuilder:
    store: Store
    count_tokens: CountTokens
    bot_name: str
    persona: str
    strategy: str = "hybrid"
    budget: int = 1024
    retrieval_k: int = 8
    # The compressive memory's share of the hybrid budget; the rest goes to verbatim passages. On LoCoMo
    # with the embedded model 0.15 found the most answers (0.40: 0.33 at 1,024 tokens; 0.25: 0.35; 0.15:
    # 0.356; docs/locomo.md): a small model's memory holds few answers, its dated events some.
    memory_share: float = 0.15
    neighbours: bool = True
    passage_tokens: int = 80
    ignore_names: bool = True

    async def build(
        self, *, user_pk: int, user_name: str, session_id: int, include_private: bool, query: str,
        up_to: int | None = None,
    ) -> ReplyInput:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown memory strategy {self.strategy!r}")
        count = self.count_tokens
        current = await self._session_turns(session_id, up_to)
        budget = self.budget
        memory = ""
        evidence: list[str] = []
        past: list[tuple[tuple[str, str], ...]] = []

        # The newest user message always goes in, cut if it alone is over budget.
        turns: list[tuple[str, str]] = []
        if current:
            last_author, last_text = current[-1]
            last_text = _cut_to(last_text, max(budget // 2, 16), count)
            turns.append((last_author, last_text))
            budget -= count(last_text) + 2
        older_current = current[:-1]
        turn_reserve = min(sum(count(t) + 2 for _, t in older_current), int(self.budget * 0.25))

        if self.strategy in ("compressive", "hybrid"):
            scope = "all" if include_private else "public"
            cm = await latest_compressive(self.store, user_pk, scope)
            if cm is not None:
                share = (budget - turn_reserve) if self.strategy == "compressive" else int(
                    (budget - turn_reserve) * self.memory_share
                )
                memory = cm.render(max(share, 0), count, query)
                budget -= count(memory)
        if self.strategy == "hybrid" and self.retrieval_k > 0:
            # Bigger budgets hold more passages: at least retrieval_k, about one per 48 tokens of budget.
            wanted = max(self.retrieval_k, self.budget // 48)
            found = await search_user_messages(
                self.store, user_pk, query, limit=wanted * 2,
                exclude_session=session_id, include_private=include_private,
                ignore_names=(user_name, self.bot_name) if self.ignore_names else (),
            )
            names = {"user": user_name, "bot": self.bot_name}
            used_ids: set[int] = set()
            for item in found:
                if item.message_id in used_ids:
                    continue
                # Relative dates get the absolute date they meant, from the turn's own date.
                text = _cut_to(resolve_relative(item.text, item.created), self.passage_tokens, count)
                line = f"[{format_date(item.created)}] {names[item.author]}: {text}"
                ids = [item.message_id]
                if self.neighbours:
                    # The answer to a hit is often the other speaker's next turn.
                    nxt = await self.store.fetchone(
                        "SELECT id, author, text, created FROM messages WHERE session_id = ? AND id > ? "
                        "ORDER BY id LIMIT 1",
                        (item.session_id, item.message_id),
                    )
                    if nxt is not None and nxt[1] != item.author and int(nxt[0]) not in used_ids:
                        ids.append(int(nxt[0]))
                        reply = _cut_to(resolve_relative(str(nxt[2]), float(nxt[3])), self.passage_tokens, count)
                        line += f" | {names[str(nxt[1])]}: {reply}"
                cost = count(line) + 1
                if cost > budget - turn_reserve:
                    continue  # too long for what is left; its turns stay free for a shorter passage
                used_ids.update(ids)
                evidence.append(line)
                budget -= cost
                if len(evidence) >= wanted:
                    break
        if self.strategy == "recent":
            older_current = await self._recent_turns(user_pk, session_id, include_private) + older_current
        if self.strategy == "sessions":
            budget, past = await self._past_sessions(user_pk, session_id, include_private, budget, turn_reserve)

        kept: list[tuple[str, str]] = []
        for author, text in reversed(older_current):
            cost = count(text) + 2
            if cost > budget:
                break
            kept.append((author, text))
            budget -= cost
        turns = list(reversed(kept)) + turns
        return ReplyInput(
            bot_name=self.bot_name,
            persona=self.persona,
            user_name=user_name,
            memory=memory,
            evidence=tuple(evidence),
            turns=tuple(turns),
            past_sessions=tuple(past),
        )

    async def _session_turns(self, session_id: int, up_to: int | None = None) -> list[tuple[str, str]]:
        """`up_to`: the message being answered; later ones (another process stored them meanwhile, while
        this one answers a redelivered message) are not part of its conversation yet."""
        rows = await self.store.fetchall(
            "SELECT author, text FROM messages WHERE session_id = ? AND id <= ? ORDER BY id",
            (session_id, up_to if up_to else 1 << 62),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    async def _recent_turns(self, user_pk: int, session_id: int, include_private: bool) -> list[tuple[str, str]]:
        rows = await self.store.fetchall(
            "SELECT m.author, m.text FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE m.user_id = ? AND m.session_id != ? AND (? = 1 OR s.private = 0) ORDER BY m.id DESC LIMIT 2000",
            (user_pk, session_id, int(include_private)),
        )
        return [(str(r[0]), str(r[1])) for r in reversed(rows)]

    async def _past_sessions(
        self, user_pk: int, session_id: int, include_private: bool, budget: int, reserve: int
    ) -> tuple[int, list[tuple[tuple[str, str], ...]]]:
        sessions = await self.store.fetchall(
            "SELECT id FROM sessions WHERE user_id = ? AND id != ? AND (? = 1 OR private = 0) ORDER BY started DESC",
            (user_pk, session_id, int(include_private)),
        )
        chosen: list[tuple[tuple[str, str], ...]] = []
        for row in sessions:
            turns = await self._session_turns(int(row[0]))
            cost = sum(self.count_tokens(t) + 2 for _, t in turns) + 4
            if cost > budget - reserve:
                break
            chosen.append(tuple(turns))
            budget -= cost
        return budget, list(reversed(chosen))
