"""The extractive backbone, supersession by corrections, and the composed compressive memory."""

from __future__ import annotations

import pytest

from memory.evidence import Evidence
from memory.facts import compose, current, extract, is_event, session_facts


@pytest.mark.parametrize(("message", "fact"), [
    ("My cat is called Luna.", "Alice's cat is called Luna."),
    ("I work as a nurse.", "Alice works as a nurse."),
    ("I'm a nurse and I live in Lyon.", "Alice lives in Lyon."),
    ("Yesterday I ran a 10k.", "Alice ran a 10k yesterday."),
    ("I have a dog named Rex.", "Alice has a dog named Rex."),
    ("I've been to Japan twice.", "Alice has been to Japan twice."),
    ("I don't like coffee.", "Alice doesn't like coffee."),
    ("I teach chemistry.", "Alice teaches chemistry."),
    ("I study law in Rome.", "Alice studies law in Rome."),
    ("I just got a parrot, her name is Kiwi.", "Alice's parrot is called Kiwi."),
    ("My husband Luis and I have twins.", "Alice and their husband Luis have twins."),
    ("Actually I moved to Paris last month.", "Alice moved to Paris last month."),
    ("Day 3: I visited the museum.", "Alice visited the museum."),
    ("My sister Ana is visiting me next week.", "Alice's sister Ana is visiting Alice next week."),
])
def test_first_person_statements_become_third_person_facts(message: str, fact: str) -> None:
    assert fact in extract("Alice", [message])


@pytest.mark.parametrize("message", [
    "What's my cat's name?",  # a question
    "Can you tell me a joke?",
    "I love talking to you.",  # about the bot
    "I'm fine, thanks.",  # small talk
    "I think so.",  # a hedge
    "Hi!",
    "I'm Alice.",  # her own name again
])
def test_questions_small_talk_and_lines_about_the_bot_are_not_facts(message: str) -> None:
    assert extract("Alice", [message]) == []


def test_a_correction_names_what_an_earlier_session_introduced() -> None:
    earlier = extract("Kenji", ["I just got a parrot, her name is Kiwi."])
    assert extract("Kenji", ["No wait, her name is Lola."], earlier=earlier) == ["Kenji's parrot is called Lola."]


@pytest.mark.parametrize(("old", "new", "gone", "kept"), [
    ("I live in Lyon.", "Actually I moved to Paris.", "Lyon", "Paris"),
    ("I live in Leeds.", "I live in Manchester now.", "Leeds", "Manchester"),
    ("My cat is called Tom.", "No, my cat is called Lola.", "Tom", "Lola"),
    ("I work as a baker.", "I work as a chef now.", "baker", "chef"),
    ("I'm a nurse.", "I'm a teacher now.", "nurse", "teacher"),
])
def test_the_newest_statement_supersedes_the_old_fact(old: str, new: str, gone: str, kept: str) -> None:
    dated = [("1 May 2026", extract("Alice", [old])), ("9 May 2026", extract("Alice", [new]))]
    text = " ".join(f for _, facts in current(dated, "Alice") for f in facts)
    assert kept in text and gone not in text


def test_a_newer_workplace_keeps_the_job() -> None:
    dated = [("1 May", ["Lena works as an architect in Berlin."]), ("8 May", ["Lena works in Hamburg now."])]
    facts = [f for _, fs in current(dated, "Lena") for f in fs]
    assert facts == ["Lena works as an architect.", "Lena works in Hamburg now."]


def test_unrelated_facts_are_never_superseded() -> None:
    dated = [("1 May", ["Alice has a cat called Whiskers.", "Alice lives in Lyon."]),
             ("8 May", ["Alice has a dog called Rex."])]
    assert [f for _, fs in current(dated, "Alice") for f in fs] == [
        "Alice has a cat called Whiskers.", "Alice lives in Lyon.", "Alice has a dog called Rex."]


def test_events_are_happenings_not_traits() -> None:
    assert is_event("Alice ran a 10k yesterday (7 May 2026).", "Alice")
    assert is_event("Alice visited the museum.", "Alice")
    assert not is_event("Alice has a cat called Whiskers.", "Alice")
    assert not is_event("Alice works as a nurse.", "Alice")


def test_session_facts_keep_supported_model_lines_that_add_something() -> None:
    evidence = Evidence.from_texts(["I have a dog named Rex and I bake bread in Paris every morning"],
                                   names=("Tom", "Membot"))
    backbone = extract("Tom", ["I have a dog named Rex and I bake bread in Paris every morning"])
    model = ["Tom has a Labrador named Max.", "Tom bakes bread every morning.", "I'm glad you enjoyed it, dear.",
             "Tom has a dog named Rex.", "Tom bakes bread in Paris."]
    kept = session_facts("Tom", backbone, model, evidence)
    assert "Tom has a dog named Rex." in kept
    assert not any("Max" in k or "glad" in k for k in kept)
    assert len([k for k in kept if "Rex" in k]) == 1  # the model's copy of a backbone fact adds nothing


def test_compose_builds_profile_and_events_from_facts_and_drops_unsupported_model_text() -> None:
    dated = [
        ("2 May 2026", ["Alice has a cat called Whiskers.", "Alice lives in Lyon.",
                        "Alice ran a 10k race yesterday (1 May 2026)."]),
        ("9 May 2026", ["Alice moved to Paris."]),
    ]
    memory = compose(
        dated, name="Alice", bot_name="Membot",
        model_profile="Alice is a creative writer. Alice has a cat called Whiskers.",
        model_relationship="Alice and Membot have a romantic relationship.",
    )
    assert "Whiskers" in memory.profile and "writer" not in memory.profile
    assert memory.profile.count("Whiskers") == 1
    assert memory.relationship == ""  # nothing supports it: shown empty, not filled
    assert "Lyon" not in memory.profile + memory.events  # superseded by the move
    assert memory.events.splitlines() == ["2 May 2026: Alice ran a 10k race yesterday (1 May 2026).",
                                          "9 May 2026: Alice moved to Paris."]


def test_a_display_name_with_a_backslash_is_used_as_written() -> None:
    assert extract("J\\1", ["My sister Ana visits me often."]) == ["J\\1's sister Ana visits J\\1 often."]
