"""The evidence check: a line is stored about a person only when that person's own words support it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memory.evidence import Evidence, is_bot_voice

WHEN = datetime(2026, 5, 8, 18, 0, tzinfo=UTC).timestamp()
ALICE = Evidence.from_turns(
    [("My cat is called Whiskers and I work as a nurse in Lyon.", WHEN), ("Yesterday I ran a 10k race!", WHEN)],
    names=("Alice", "Membot"),
)


@pytest.mark.parametrize("line", [
    "Alice's cat is called Whiskers.",
    "Alice works as a nurse.",
    "Alice is a nurse in Lyon.",
    "Alice ran a 10k race on 7 May 2026.",  # the date the system resolved from "yesterday"
    "Alice ran a race on 8 May 2026.",  # the day she said it
])
def test_lines_the_person_said_are_supported(line: str) -> None:
    assert ALICE.check(line).supported, ALICE.check(line).reason


@pytest.mark.parametrize("line", [
    "Alice has a Labrador named Max.",  # invented names
    "Alice is a baker named Colette.",
    "Alice works at a bakery in Bordeaux.",
    "Alice ran a 20k race.",  # an invented number
    "Alice ran a race on 3 March 2026.",  # a date nobody said
])
def test_a_specific_term_absent_from_the_persons_words_fails(line: str) -> None:
    verdict = ALICE.check(line)
    assert not verdict.supported
    assert "not in the person's words" in verdict.reason or "not a date the person gave" in verdict.reason


def test_one_shared_word_does_not_ground_a_line() -> None:
    assert not ALICE.check("Alice lives in Lyon.").supported  # she works there; "lives" is not her word
    # "cat" is hers; "writes", "favourite", "artists", "works" are not.
    verdict = ALICE.check("Alice writes about her cat and her favourite artists' works.")
    assert not verdict.supported and "content words" in verdict.reason
    assert not ALICE.check("Alice and Membot have a romantic relationship.").supported


def test_names_of_the_person_and_the_bot_are_no_support() -> None:
    assert not ALICE.check("Alice loves Membot.").supported
    assert not ALICE.check("Alice.").supported


@pytest.mark.parametrize("line", [
    "I'm glad you enjoyed our conversation, dear.",
    "I love your cat, Bob.",
    "What is your cat's name?",
    "Hello Alice, the nurse from Lyon.",
    "Thanks for telling me about Whiskers.",
    "我喜欢猫",
])
def test_lines_in_the_bots_voice_are_never_facts(line: str) -> None:
    assert is_bot_voice(line)
    assert not ALICE.check(line).supported


def test_the_bots_turns_are_not_evidence() -> None:
    """Only what the person said counts: a name the bot said is not supported."""
    said_by_person = Evidence.from_turns([("I have a dog and I'm a baker in Paris.", WHEN)], names=("Tom",))
    assert said_by_person.check("Tom is a baker in Paris.").supported
    assert not said_by_person.check("Tom's dog is called Max.").supported
    assert not said_by_person.check("Tom works at a bakery called Colette.").supported


def test_words_are_compared_by_stem() -> None:
    evidence = Evidence.from_texts(["I live in Lyon and paint watercolours"], names=("Alice",))
    assert evidence.check("Alice lives in Lyon.").supported
    assert evidence.check("Alice paints watercolours.").supported


def test_earlier_facts_can_be_added() -> None:
    base = Evidence.from_texts(["no, her name is Lola"], names=("Kenji",))
    assert not base.check("Kenji's parrot is called Lola.").supported
    assert base.adding(["Kenji has a parrot."]).check("Kenji's parrot is called Lola.", together=False).supported


def test_cjk_text_is_compared_by_character_pairs() -> None:
    evidence = Evidence.from_texts(["我喜欢猫。我住在里昂。"], names=("Ann",))
    assert evidence.check("Ann喜欢猫").supported
    assert not evidence.check("Ann住在巴黎").supported


def test_a_line_about_the_bot_is_no_fact_about_the_person() -> None:
    evidence = Evidence.from_texts(["the weather was grey and rainy"], names=("Alice",), bot="Membot")
    assert evidence.check("Alice said the weather was grey and rainy.").supported
    assert evidence.check("Membot said the weather was grey and rainy.").reason == "about the bot, not the person"


def test_a_day_or_year_number_from_a_date_supports_no_other_number() -> None:
    evidence = Evidence.from_turns([("My daughter Mia turned six last week.", WHEN)], names=("Tom",))
    assert evidence.check("Tom's daughter Mia turned six last week (the week before 8 May 2026).").supported
    assert not evidence.check("Tom's daughter Mia is 8 years old.").supported  # 8 is only the date's day
    assert not evidence.check("Tom's daughter Mia was born in 2026.").supported


def test_names_and_numbers_said_apart_make_no_new_claim() -> None:
    evidence = Evidence.from_turns(
        [("I'm a firefighter in Madrid.", WHEN), ("My mother lives in Seville.", WHEN)], names=("Maria",))
    assert evidence.check("Maria is a firefighter in Madrid.").supported
    verdict = evidence.check("Maria is a firefighter in Seville.")
    assert not verdict.supported and "never said together" in verdict.reason


def test_whole_lines_must_restate_one_fact() -> None:
    facts = Evidence.from_texts(["Priya has two brothers, Arjun and Dev.", "Priya is training for a marathon."],
                                names=("Priya",))
    assert facts.check("Priya has two brothers, Arjun and Dev.", whole=True).supported
    assert not facts.check("Priya has two sons, Arjun and Dev, and she loves to train.", whole=True).supported
    assert not facts.check("Priya is a professional marathon runner.", whole=True).supported
    assert not facts.check("Priya's brothers are training for a marathon.", whole=True).supported
