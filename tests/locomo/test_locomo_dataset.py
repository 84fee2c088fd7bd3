"""LoCoMo loader against tests/fixtures/locomo_mini.json: two small conversations written for these tests in
the format of LoCoMo's data/locomo10.json, with the traps of the real file (numeric session keys out of
order, a date key with no session, image turns with and without img_url, integer answers, adversarial
questions with and without an answer, a malformed evidence id, a time just after midnight).

The same loader on the real data file: tests/locomo/test_locomo_real_data.py (run when MEMBOT_LOCOMO_DATA names it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memory.locomo.dataset import Question, load_locomo, parse_conversation, parse_locomo_datetime

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "locomo_mini.json"

# sample_id -> (speaker_a, speaker_b, sessions, turns, QA all, QA without category 5), counted in the fixture
EXPECTED = {
    "mini-1": ("Nora", "Felix", 10, 29, 13, 11),
    "mini-2": ("Ravi", "Jules", 4, 12, 6, 5),
}


@pytest.fixture(scope="module")
def convs():
    return {c.sample_id: c for c in load_locomo(MINI)}


def _ask(conv, text: str) -> Question:
    [q] = [q for q in conv.questions if q.question == text]
    return q


def test_counts_match_the_fixture(convs) -> None:
    assert list(convs) == list(EXPECTED)
    for sid, (a, b, n_sess, n_turns, n_qa, n_qa_no5) in EXPECTED.items():
        c = convs[sid]
        assert (c.speaker_a, c.speaker_b) == (a, b)
        assert len(c.sessions) == n_sess
        assert sum(len(s.turns) for s in c.sessions) == n_turns == len(c.turns)
        assert len(c.questions) == n_qa
        assert sum(q.category != 5 for q in c.questions) == n_qa_no5
    assert {q.category for c in convs.values() for q in c.questions} == {1, 2, 3, 4, 5}


def test_sessions_in_numeric_order_with_parsed_dates(convs) -> None:
    for c in convs.values():
        idx = [s.index for s in c.sessions]
        assert idx == sorted(idx) == list(range(1, len(idx) + 1))
        for s in c.sessions:
            assert s.when.tzinfo is UTC
            assert all(t.dia_id.startswith(f"D{s.index}:") for t in s.turns)
    s1 = convs["mini-1"].sessions[0]
    assert s1.date_time == "1:56 pm on 8 May, 2023"
    assert s1.when == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    # session_10 comes second in the file and must still follow session_9 (string sorting would put it
    # after session_1); session_11 has a date key but no turns, so it is not a session
    assert convs["mini-1"].sessions[9].index == 10
    assert convs["mini-1"].sessions[9].when == datetime(2023, 10, 14, 15, 10, tzinfo=UTC)
    assert convs["mini-1"].sessions[8].when == datetime(2023, 9, 30, 12, 5, tzinfo=UTC)  # 12:05 pm is noon
    assert convs["mini-1"].sessions[5].when == datetime(2023, 8, 3, 11, 20, tzinfo=UTC)  # "3 Aug, 2023"
    # mini-2 session 3 is just after midnight: "12:48 am on 1 February, 2023"
    assert convs["mini-2"].sessions[2].when == datetime(2023, 2, 1, 0, 48, tzinfo=UTC)


def test_image_caption_appended(convs) -> None:
    turn = next(t for t in convs["mini-1"].turns if t.img_url)
    assert turn.dia_id == "D1:2" and turn.img_url == "https://example.com/locomo-mini/green-vase.jpg"
    assert turn.caption == "a photo of a green vase on a wooden shelf"
    assert turn.text == f"{turn.raw_text} [shares a photo: {turn.caption}]"
    # an image turn with a caption but no img_url still shows the picture
    d1_2 = next(t for t in convs["mini-2"].turns if t.dia_id == "D1:2")
    assert d1_2.img_url is None
    assert d1_2.text.endswith(
        "[shares a photo: a photo of a band playing on a small stage with string lights]"
    )
    plain = next(t for t in convs["mini-1"].turns if t.dia_id == "D1:3")
    assert plain.text == plain.raw_text and plain.caption is None


def test_answers_are_strings_and_adversarial_kept(convs) -> None:
    mini1 = convs["mini-1"]
    assert _ask(mini1, "How many siblings does Felix have?").answer == "3"  # integer 3 in the JSON
    assert _ask(mini1, "In which year did Felix's sister make the green vase?").answer == "2022"
    assert all(q.answer is None or isinstance(q.answer, str) for c in convs.values() for q in c.questions)
    adv = _ask(mini1, "What did Felix sign up for at the pottery open day?")
    assert adv.category == 5 and adv.answer is None
    assert adv.adversarial_answer == "a beginners' class"
    assert adv.category_name == "adversarial"
    both = _ask(mini1, "Did Nora make the green vase in the photo?")  # category 5 with an answer as well
    assert (both.category, both.answer, both.adversarial_answer) == (5, "No", "Yes")
    # questions stay in file order (adversarial ones last, as in LoCoMo)
    assert mini1.questions[0].question == "When did Nora go to the pottery open day?"
    assert [q.category for q in mini1.questions][-2:] == [5, 5]


def test_malformed_evidence_repaired(convs) -> None:
    q = _ask(convs["mini-1"], "Where did Nora go in October and who fed Pepper?")
    assert q.evidence == ["D8:1; D9:2"]
    assert q.evidence_ids == ["D8:1", "D9:2"]
    assert _ask(convs["mini-1"], "What does Nora do to unwind?").evidence_ids == ["D3:1", "D2:3"]


def test_filter_and_unknown_id() -> None:
    only = load_locomo(MINI, conversations=["mini-2"])
    assert [c.sample_id for c in only] == ["mini-2"]
    with pytest.raises(ValueError):
        load_locomo(MINI, conversations=["conv-99"])


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
