"""The extractive backbone: short third-person facts built from a person's own statements, no model needed.

"My cat is called Luna" becomes "Alice's cat is called Luna."; "yesterday I ran a 10k" becomes "Alice ran a
10k yesterday (3 May 2026)." once the session's dates are resolved. A small model cannot spoil these: they
are the person's words, turned round. The model's session memory may add lines only when they pass the
evidence check (memory.evidence).

Facts also carry *slots* (home, job, workplace, the name of a pet or person): when a newer fact fills a
slot, the older fact for that slot is superseded, so "actually I moved to Paris" replaces "lives in Lyon".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memory.evidence import Evidence, tokens
from memory.porter import stem
from models.profiles.base import STOPWORDS

_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
# Clauses may start again at ";" and at a comma or "and/but/so" followed by a new subject.
_CLAUSE_BREAK = re.compile(
    r"\s*;\s*|,\s*(?:and\s+|but\s+|so\s+)?(?=(?:i|i'm|i've|i'd|i'll|my|her|his|its|their|actually)\b)"
    r"|\s+(?:and|but|so)\s+(?=(?:i|i'm|i've|i'd|i'll|my)\b)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^[^:]{1,24}:\s*(?=(?:i|i'm|i've|my)\b)", re.IGNORECASE)  # "Day 3: I ..." -> "I ..."
_VERBISH = re.compile(
    r"\b(?:i|i'm|i've|i'd|i'll|im|is|are|was|were|am|has|have|had|will|would|can|could|does|did|do|\w+ed)\b",
    re.IGNORECASE,
)
# "Yesterday I ran a 10k" -> "I ran a 10k yesterday": the statement's subject comes first.
_FRONT_TIME = re.compile(
    r"^((?:yesterday|today|tonight|this (?:morning|afternoon|evening|week|weekend|month|year)|"
    r"last (?:\w+)|next (?:\w+)|(?:\w+ ){1,2}(?:days?|weeks?|months?|years?) ago|recently|on \w+day|in \w+))"
    r"[\s,]+(?=(?:i|i'm|i've|my)\b)(.+)$",
    re.IGNORECASE,
)


_LEADING = re.compile(
    r"^(?:(?:actually|well|so|oh|also|and|but|no|nope|wait|anyway|btw|by the way|yeah|yes|ok|okay|hi|hey|"
    r"hello|morning|good morning|yo|oops|sorry|correction|update|fun fact|guess what)\b[\s,!.:-]*)+",
    re.IGNORECASE,
)
_HEDGES = re.compile(
    r"^i(?:'m| am)?\s+(?:not sure|think|guess|wonder|wondering|mean|suppose|bet|know|see|agree|understand|"
    r"remember|forgot|feel like|hope you|was wondering|want to know|would like to know|'d like to know)\b",
    re.IGNORECASE,
)
_MOODS = frozenset(
    """fine good ok okay great well alright sorry glad happy sad tired bored back here sure so very really
    doing not excited curious confused lost thrilled""".split()
)
_ADVERBS = frozenset(
    """just also really usually often never always still recently finally actually sometimes mostly only
    even already now currently""".split()
)
_MODALS = frozenset("can could will would should might must may shall cannot can't won't".split())
_PAST = frozenset(
    """ran went got had did was were made took saw came broke bought began became built caught chose drove
    ate fell felt found flew forgot gave grew heard kept knew left lost met paid put rode sang sat slept
    spent spoke stood swam taught thought told understood woke won wrote sold sent led lent hit cut quit
    set shut let read began drew drank wore tore threw bit hid shook""".split()
)
_IRREGULAR_3S = {"have": "has", "do": "does", "go": "goes", "am": "is", "'m": "is", "be": "is"}
_NEGATIONS = {"don't": "doesn't", "do not": "does not"}
_JOBS = frozenset(
    """nurse doctor teacher baker chef cook engineer developer programmer designer architect lawyer accountant
    student firefighter farmer driver pilot dentist pharmacist scientist researcher professor lecturer
    journalist writer author artist painter musician photographer electrician plumber carpenter mechanic
    librarian cashier waiter waitress barista manager consultant analyst economist translator paramedic
    therapist psychologist vet veterinarian surgeon soldier officer policeman policewoman detective
    secretary receptionist cleaner gardener hairdresser butcher tailor actor actress singer dancer coach
    banker clerk editor midwife nanny carer caregiver""".split()
)


def _clauses(sentence: str) -> list[str]:
    """Split where a new statement starts, but never leave a piece without a verb ("my first one")."""
    pieces: list[str] = []
    start = 0
    for m in _CLAUSE_BREAK.finditer(sentence):
        left, right = sentence[start : m.start()], sentence[m.end() :]
        nxt = _CLAUSE_BREAK.search(right)
        right_piece = right[: nxt.start()] if nxt else right
        if _VERBISH.search(left) and _VERBISH.search(right_piece):
            pieces.append(left)
            start = m.end()
    pieces.append(sentence[start:])
    return pieces


def _third_person_verb(verb: str) -> str:
    low = verb.lower()
    if low in _IRREGULAR_3S:
        return _IRREGULAR_3S[low]
    if low in _MODALS or low in _PAST or low.endswith("ed") or low.endswith("n't"):
        return verb
    if re.search(r"(?:s|sh|ch|x|z|o)$", low):
        return verb + "es"
    if re.search(r"[^aeiou]y$", low):
        return verb[:-1] + "ies"
    return verb + "s"


def _name_object(text: str, name: str) -> str:
    """Remaining first-person words, said of the person: "their" after the person as subject ("Alice ran
    their first 10k"), else by name ("Alice's sister is visiting Alice")."""
    if text.startswith(name + " "):
        text = re.sub(r"\bmy\b", "their", text, flags=re.IGNORECASE)
        text = re.sub(r"\bmyself\b", "themselves", text, flags=re.IGNORECASE)
    # Replacements as functions: a display name may hold a backslash, which re.sub would read as an escape.
    text = re.sub(r"\b(?:my|mine)\b", lambda _: f"{name}'s", text, flags=re.IGNORECASE)
    return re.sub(r"\b(?:me|myself)\b", lambda _: name, text, flags=re.IGNORECASE)


def _subject_i(rest: str, name: str) -> str | None:
    """`rest` follows "I": conjugate its verb for the person's name."""
    words = rest.split()
    if not words:
        return None
    head: list[str] = []
    while words and words[0].lower() in _ADVERBS:
        head.append(words.pop(0))
    if not words:
        return None
    verb = words[0]
    low = verb.lower()
    if low in ("don't", "do") and len(words) > 1 and words[1].lower() == "not":
        words = ["does", "not", *words[2:]]
    elif low in _NEGATIONS:
        words = [_NEGATIONS[low], *words[1:]]
    else:
        words = [_third_person_verb(verb), *words[1:]]
    return " ".join([name, *head, *words])


_AUXILIARIES = [
    (re.compile(rf"^(?:{forms})\s+(.+)$", re.IGNORECASE), verb)
    for forms, verb in (("i've|i have", "has"), ("i'd|i would", "would"), ("i'll|i will", "will"))
]


def _statement(clause: str, name: str) -> str | None:
    """One first-person clause as a third-person fact, or None when it is not a statement about oneself."""
    clause = clause.strip(" ,-").replace("\u2019", "'")
    if not clause or _HEDGES.match(clause):
        return None
    if re.search(r"\b(?:you|your|yours|you're|you've|u|ur)\b", clause, re.IGNORECASE):
        return None  # about the bot, or a request to it
    m = re.match(r"^(?:i'm|i am|im)\s+(.+)$", clause, re.IGNORECASE)
    if m:
        rest = m.group(1)
        first = rest.split()[0].lower().strip(",.!")
        if first in _MOODS and not re.match(r"^(?:really|so|very|not)\s+\w+ing\b", rest, re.IGNORECASE):
            return None
        if re.fullmatch(r"[A-Z][\w'-]*", rest.strip(" .!")):
            return None if rest.strip(" .!").lower() == name.lower() else f"{name} is called {rest.strip(' .!')}"
        return f"{name} is {rest}"
    for pattern, verb in _AUXILIARIES:
        m = pattern.match(clause)
        if m:
            return f"{name} {verb} {m.group(1)}"
    m = re.match(r"^my\s+(.+?)\s+and\s+i\s+(.+)$", clause, re.IGNORECASE)
    if m:
        return f"{name} and their {m.group(1)} {m.group(2)}"
    m = re.match(r"^i\s+(.+)$", clause, re.IGNORECASE)
    if m:
        return _subject_i(m.group(1), name)
    m = re.match(r"^my\s+name\s+is\s+(.+)$", clause, re.IGNORECASE)
    if m:
        called = m.group(1).strip(" .!")
        return None if called.lower() == name.lower() else f"{name} is called {called}"
    m = re.match(r"^my\s+(.+)$", clause, re.IGNORECASE)
    if m:
        return f"{name}'s {m.group(1)}"
    return None


_THING = re.compile(
    r"\b(?:a|an|my|our|new|the)\s+(?:new\s+|little\s+|baby\s+|pet\s+|old\s+|young\s+)?([a-z]+)\b", re.IGNORECASE
)
_REF_NAME = re.compile(r"^(?:her|his|its|their)\s+name\s+is\s+([A-Z][\w'-]*)", re.IGNORECASE)


def _last_thing(texts: Sequence[str]) -> str | None:
    """The last thing introduced in the person's words ("a parrot", "my sister"), for "her name is Lola"."""
    for text in reversed(texts):
        found = [m.group(1).lower() for m in _THING.finditer(text)]
        found = [w for w in found if w not in _JOBS and w not in ("lot", "bit", "few", "couple", "name")]
        if found:
            return found[-1]
    return None


def extract(name: str, messages: Sequence[str], *, earlier: Sequence[str] = ()) -> list[str]:
    """Third-person facts from a person's own messages (oldest first), de-duplicated, in order.

    `earlier`: the person's earlier facts, so that "no, her name is Lola" can name what it corrects.
    """
    facts: list[str] = []
    seen: set[str] = set()
    said: list[str] = []
    for message in messages:
        for sentence in _SENTENCES.split(message.strip()):
            sentence = sentence.strip()
            if not sentence or "?" in sentence:
                continue
            for clause in _clauses(sentence):
                clause = _LEADING.sub("", clause.strip().rstrip(".!").strip())
                clause = _LABEL.sub("", clause)
                front = _FRONT_TIME.match(clause)
                if front:
                    rest, when = front.group(2), front.group(1)
                    when = when[0].lower() + when[1:]
                    head, comma, tail = rest.partition(",")
                    clause = f"{head} {when}{comma}{tail}"
                if not clause:
                    continue
                fact = None
                ref = _REF_NAME.match(clause)
                if ref:
                    thing = _last_thing(said) or _last_thing(_facts_things(earlier))
                    if thing:
                        fact = f"{name}'s {thing} is called {ref.group(1)}"
                else:
                    fact = _statement(clause, name)
                said.append(clause)
                if fact is None:
                    continue
                fact = _name_object(fact, name)
                fact = re.sub(r"\s+", " ", fact).strip(" ,")
                if len(fact.split()) < 3 or len(fact) > 240:
                    continue
                fact = fact[0].upper() + fact[1:] + "."
                key = fact.lower()
                if key not in seen:
                    seen.add(key)
                    facts.append(fact)
    return facts


def _facts_things(facts: Sequence[str]) -> list[str]:
    """Earlier facts, reduced to the things they named ("Kenji's parrot is called Kiwi" -> "a parrot")."""
    out = []
    for fact in facts:
        m = re.search(r"'s\s+([a-z]+)\s+is\s+called\b", fact) or re.search(r"\bhas\s+an?\s+([a-z]+)\s+(?:called|named)", fact)
        if m:
            out.append(f"a {m.group(1)}")
    return out


# ---- slots and supersession -----------------------------------------------------------------------------

def slots_of(fact: str, name: str) -> dict[str, str]:
    """The slots a fact fills, with the span of the fact that fills each (so a part can be dropped)."""
    n = re.escape(name)
    out: dict[str, str] = {}
    low = fact.rstrip(".")
    m = re.search(rf"^{n} (?:\w+ )?(?:lives|is living|moved|has moved|is moving|relocated)(?: back)? (?:to|in) ", low)
    if m:
        out["home"] = low
    m = re.search(rf"^{n} (?:\w+ )?works (?:as|at|in|for) ", low)
    if m:
        job = re.search(r"\bworks as (an? [\w -]+?)(?= in | at | for |$|,)", low)
        place = re.search(r"\bworks(?: as an? [\w -]+?)? ((?:in|at|for) [^,]+?)(?:,|$| now$)", low)
        if job:
            out["job"] = job.group(0)
        if place:
            out["workplace"] = place.group(1)
    m = re.search(rf"^{n} is (?:now )?an? ((?:\w+ ){{0,2}})", low + " ")
    if m and any(w.lower() in _JOBS for w in m.group(1).split()):
        out["job"] = low
    m = re.search(rf"^{n}'s job is ", low)
    if m:
        out["job"] = low
    m = re.search(rf"^{n}'s (?:new |little |old )?([a-z]+(?: [a-z]+)?) (?:is called|is named|name is|'s name is) ", low) or \
        re.search(rf"^{n} has an? (?:new |little |pet )?([a-z]+) (?:called|named) ", low)
    if m:
        out[f"name:{m.group(1).split()[-1]}"] = low
    return out


def current(dated: Sequence[tuple[str, Sequence[str]]], name: str) -> list[tuple[str, list[str]]]:
    """Facts with the superseded ones removed: walking from the newest, a fact whose slots a newer fact
    already filled is dropped, or loses the part that was filled ("works as an architect in Berlin" keeps
    "works as an architect" once a newer fact says where the person works)."""
    filled: set[str] = set()
    kept_rev: list[tuple[str, list[str]]] = []
    for date, facts in reversed(list(dated)):
        kept: list[str] = []
        for fact in reversed(list(facts)):
            slots = slots_of(fact, name)
            stale = [s for s in slots if s in filled]
            if stale:
                if set(stale) == {"workplace"} and "job" in slots and "job" not in filled:
                    fact = f"{name} {slots['job']}."
                    slots = {"job": slots["job"]}
                else:
                    continue
            filled.update(slots)
            kept.append(fact)
        kept_rev.append((date, list(reversed(kept))))
    return [(d, f) for d, f in reversed(kept_rev) if f]


_EVENT = re.compile(r"\(\s*(?:\d|the |[A-Z][a-z]+ \d{4})|\b(?:yesterday|ago|last|next|tomorrow|tonight|today)\b", re.I)


def is_event(fact: str, name: str) -> bool:
    """A dated happening rather than a standing trait: it has a resolved date, or its verb is in the past."""
    if _EVENT.search(fact):
        return True
    if not fact.startswith(name + " "):
        return False
    words = [w.lower() for w in fact[len(name) + 1 :].split()]
    while words and words[0] in _ADVERBS:
        words.pop(0)
    verb = words[0] if words else ""
    return verb in _PAST or (verb.endswith("ed") and verb not in ("named", "need", "used"))


def split_profile_events(dated: Iterable[tuple[str, Sequence[str]]], name: str) -> tuple[list[str], list[str]]:
    """(profile facts, event lines "date: fact fact") from current facts."""
    profile: list[str] = []
    events: list[str] = []
    for date, facts in dated:
        happened: list[str] = []
        for fact in facts:
            if is_event(fact, name):
                happened.append(fact)
            elif fact not in profile:
                profile.append(fact)
        if happened:
            events.append(f"{date}: " + " ".join(happened))
    return profile, events


# ---- what is stored ----------------------------------------------------------------------------------------

_SPLIT_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """The sentences of a profile or relationship text, as stored here and read back by the reply context."""
    return [part for part in _SPLIT_SENTENCES.split(text.strip()) if part.strip()]


def _key_words(text: str) -> set[str]:
    return {stem(w) for w in (t.lower() for t in tokens(text)) if w not in STOPWORDS}


def covered(line: str, facts: Iterable[str], name: str) -> bool:
    """Whether a line says nothing that one of `facts` does not already say (by stems, names aside)."""
    words = _key_words(line) - _key_words(name)
    return any(words <= _key_words(f) for f in facts)


def session_facts(
    name: str,
    backbone: Sequence[str],
    model_lines: Sequence[str],
    evidence: Evidence,
    *,
    earlier: Sequence[str] = (),
    max_lines: int = 30,
) -> list[str]:
    """A session's memory: the backbone, then the model's lines that pass the evidence check and add
    something the backbone does not say. Backbone facts may name what the person's `earlier` facts
    introduced ("her name is Lola": the parrot); the model's lines are checked against this session alone."""
    backbone_evidence = evidence.adding(earlier) if earlier else evidence
    kept = [f for f in backbone if backbone_evidence.check(f, together=False).supported]
    for line in model_lines:
        if len(kept) >= max_lines:
            break
        if evidence.check(line).supported and not covered(line, kept, name):
            kept.append(line)
    return kept


@dataclass(frozen=True)
class Composed:
    profile: str
    relationship: str
    events: str


def compose(
    dated: Sequence[tuple[str, Sequence[str]]],
    *,
    name: str,
    bot_name: str,
    model_profile: str = "",
    model_relationship: str = "",
    max_events: int = 60,
) -> Composed:
    """The compressive memory from all of a person's session memories (oldest first): superseded facts
    removed; standing facts as the profile; dated happenings as events; a model-written profile or
    relationship sentence kept only when the current facts support it. An empty part stays empty."""
    facts = current(dated, name)
    profile, events = split_profile_events(facts, name)
    evidence = Evidence.from_texts([f for _, fs in facts for f in fs], names=(name,), bot=bot_name)
    extra: list[str] = []
    for sentence in sentences(model_profile):
        if evidence.check(sentence, whole=True).supported and not covered(sentence, profile + extra, name):
            extra.append(sentence)
    # A relationship sentence is about the two of them: it names the bot, and the facts support the rest.
    relationship = [s for s in sentences(model_relationship)
                    if bot_name.lower() in s.lower() and evidence.check(s, whole=True).supported]
    return Composed(" ".join(profile + extra), " ".join(relationship), "\n".join(events[-max_events:]))
