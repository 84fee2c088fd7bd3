"""LoCoMo loader against the shared dev split: the README's counts are the contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memory.locomo.dataset import Question, load_locomo, parse_conversation, parse_locomo_datetime

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV = REPO_ROOT.parent / "shared" / "data" / "locomo" / "locomo_dev.json"

# sample_id -> (speaker_a, speaker_b, sessions, turns, QA all, QA without category 5), from README.md
EXPECTED = {
    "conv-26": ("Caroline", "Melanie", 19, 419, 199, 152),
    "conv-30": ("Jon", "Gina", 19, 369, 105, 81),
    "conv-41": ("John", "Maria", 32, 663, 193, 152),
}


@pytest.fixture(scope="module")
def convs():
    return {c.sample_id: c for c in load_locomo(DEV)}


def test_counts_match_readme(convs) -> None:
    assert list(convs) == list(EXPECTED)
    for sid, (a, b, n_sess, n_turns, n_qa, n_qa_no5) in EXPECTED.items():
        c = convs[sid]
        assert (c.speaker_a, c.speaker_b) == (a, b)
        assert len(c.sessions) == n_sess
        assert sum(len(s.turns) for s in c.sessions) == n_turns == len(c.turns)
        assert len(c.questions) == n_qa
        assert sum(q.category != 5 for q in c.questions) == n_qa_no5


def test_sessions_in_numeric_order_with_parsed_dates(convs) -> None:
    for c in convs.values():
        idx = [s.index for s in c.sessions]
        assert idx == sorted(idx) == list(range(1, len(idx) + 1))
        for s in c.sessions:
            assert s.when.tzinfo is UTC
            assert all(t.dia_id.startswith(f"D{s.index}:") for t in s.turns)
    s1 = convs["conv-26"].sessions[0]
    assert s1.date_time == "1:56 pm on 8 May, 2023"
    assert s1.when == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    # session_10 must follow session_9 (string sorting would put it after session_1)
    assert convs["conv-26"].sessions[9].index == 10
    # conv-30 session 3 is just after midnight: "12:48 am on 1 February, 2023"
    assert convs["conv-30"].sessions[2].when == datetime(2023, 2, 1, 0, 48, tzinfo=UTC)


def test_image_caption_appended(convs) -> None:
    turn = next(t for t in convs["conv-26"].turns if t.img_url)
    assert turn.caption
    assert turn.text == f"{turn.raw_text} [shares a photo: {turn.caption}]"
    d1_19 = next(t for t in convs["conv-30"].turns if t.dia_id == "D1:19")
    assert d1_19.text.endswith(
        "[shares a photo: a photo of a large open porch with a fireplace and a view of the water]"
    )
    plain = next(t for t in convs["conv-26"].turns if t.dia_id == "D1:3")
    assert plain.text == plain.raw_text and plain.caption is None


def test_answers_are_strings_and_adversarial_kept(convs) -> None:
    qs = convs["conv-26"].questions
    assert qs[75].question == "How many children does Melanie have?"
    assert qs[75].answer == "3"  # integer 3 in the JSON
    assert all(q.answer is None or isinstance(q.answer, str) for c in convs.values() for q in c.questions)
    adv = qs[152]
    assert adv.category == 5 and adv.answer is None
    assert adv.adversarial_answer == "self-care is important"
    assert adv.category_name == "adversarial"


def test_malformed_evidence_repaired(convs) -> None:
    q = convs["conv-26"].questions[37]
    assert q.evidence == ["D8:6; D9:17"]
    assert q.evidence_ids == ["D8:6", "D9:17"]


def test_filter_and_unknown_id() -> None:
    only = load_locomo(DEV, conversations=["conv-41"])
    assert [c.sample_id for c in only] == ["conv-41"]
    with pytest.raises(ValueError):
        load_locomo(DEV, conversations=["conv-99"])


def test_empty_sessions_skipped_and_date_only_keys_ignored() -> None:
    sample = {
        "sample_id": "x",
        "conversation": {
            "speaker_a": "A",
            "speaker_b": "B",
            "session_2": [{"speaker": "B", "dia_id": "D2:1", "text": "later"}],
            "session_2_date_time": "9:00 am on 2 Jan, 2024",
            "session_1": [],
            "session_1_date_time": "8:00 am on 1 January, 2024",
            "session_3_date_time": "10:00 pm on 3 January, 2024",
            "session_10": [{"speaker": "A", "dia_id": "D10:1", "text": "last"}],
            "session_10_date_time": "12:05 pm on 10 January, 2024",
        },
        "qa": [{"question": "q", "answer": 2022, "evidence": ["D2:1"], "category": 2}],
    }
    c = parse_conversation(json.loads(json.dumps(sample)))
    assert [s.index for s in c.sessions] == [2, 10]
    assert c.sessions[1].when == datetime(2024, 1, 10, 12, 5, tzinfo=UTC)
    assert c.questions == [Question("q", "2022", None, ["D2:1"], 2)]


def test_parse_datetime_rejects_garbage() -> None:
    assert parse_locomo_datetime("12:00 am on 1 March, 2023") == datetime(2023, 3, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_locomo_datetime("yesterday")
