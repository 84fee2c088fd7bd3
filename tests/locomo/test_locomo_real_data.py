"""The LoCoMo loader and scorer on the real data file, named by MEMBOT_LOCOMO_DATA.

LoCoMo's data is not part of this repository (snap-research/LoCoMo on GitHub, file data/locomo10.json). These
tests carry the marker `locomo_data` and are deselected, with a note in pytest's summary, unless the variable
names a file; tests/locomo/test_locomo_dataset.py and test_locomo_scoring.py check the same rules on
tests/fixtures/locomo_mini.json in every run. Run them with, e.g.:

    MEMBOT_LOCOMO_DATA=path/to/locomo10.json .venv/bin/python -m pytest tests/locomo -m locomo_data

The file may be the full locomo10.json or any subset of its samples: the checks of a conversation the file
does not hold are skipped, with the reason. The figures below are LoCoMo's conversations conv-26, conv-30
and conv-41, unchanged in locomo10.json.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memory.locomo.dataset import CATEGORY_NAMES, Conversation, load_locomo
from memory.locomo.scoring import answer_token_recall, context_has_answer, gold_answer, score_answer

pytestmark = pytest.mark.locomo_data

# sample_id -> (speaker_a, speaker_b, sessions, turns, QA all, QA without category 5)
EXPECTED = {
    "conv-26": ("Caroline", "Melanie", 19, 419, 199, 152),
    "conv-30": ("Jon", "Gina", 19, 369, 105, 81),
    "conv-41": ("John", "Maria", 32, 663, 193, 152),
}


@pytest.fixture(scope="module")
def data() -> Path:
    return Path(os.environ["MEMBOT_LOCOMO_DATA"])


@pytest.fixture(scope="module")
def convs(data: Path) -> dict[str, Conversation]:
    return {c.sample_id: c for c in load_locomo(data)}


def _need(convs: dict[str, Conversation], *ids: str) -> None:
    missing = [i for i in ids if i not in convs]
    if missing:
        pytest.skip(f"the file named by MEMBOT_LOCOMO_DATA holds no {', '.join(missing)}")


def test_every_conversation_loads_cleanly(convs) -> None:
    assert convs
    for c in convs.values():
        assert c.speaker_a and c.speaker_b and c.sessions and c.questions
        idx = [s.index for s in c.sessions]
        assert idx == sorted(set(idx))
        for s in c.sessions:
            assert s.when.tzinfo is UTC and s.turns
        for t in c.turns:
            assert t.text == (f"{t.raw_text} [shares a photo: {t.caption}]" if t.caption else t.raw_text)
        for q in c.questions:
            assert q.category in CATEGORY_NAMES
            assert q.answer is None or isinstance(q.answer, str)


def test_counts_of_three_conversations(convs) -> None:
    _need(convs, *EXPECTED)
    for sid, (a, b, n_sess, n_turns, n_qa, n_qa_no5) in EXPECTED.items():
        c = convs[sid]
        assert (c.speaker_a, c.speaker_b) == (a, b)
        assert len(c.sessions) == n_sess
        assert sum(len(s.turns) for s in c.sessions) == n_turns == len(c.turns)
        assert len(c.questions) == n_qa
        assert sum(q.category != 5 for q in c.questions) == n_qa_no5
        idx = [s.index for s in c.sessions]
        assert idx == list(range(1, len(idx) + 1))
        for s in c.sessions:
            assert all(t.dia_id.startswith(f"D{s.index}:") for t in s.turns)


def test_dates_captions_answers_and_evidence_of_the_real_file(convs, data) -> None:
    _need(convs, *EXPECTED)
    s1 = convs["conv-26"].sessions[0]
    assert s1.date_time == "1:56 pm on 8 May, 2023"
    assert s1.when == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    # session_10 must follow session_9 (string sorting would put it after session_1)
    assert convs["conv-26"].sessions[9].index == 10
    # conv-30 session 3 is just after midnight: "12:48 am on 1 February, 2023"
    assert convs["conv-30"].sessions[2].when == datetime(2023, 2, 1, 0, 48, tzinfo=UTC)

    turn = next(t for t in convs["conv-26"].turns if t.img_url)
    assert turn.caption and turn.text == f"{turn.raw_text} [shares a photo: {turn.caption}]"
    d1_19 = next(t for t in convs["conv-30"].turns if t.dia_id == "D1:19")
    assert d1_19.text.endswith(
        "[shares a photo: a photo of a large open porch with a fireplace and a view of the water]"
    )
    plain = next(t for t in convs["conv-26"].turns if t.dia_id == "D1:3")
    assert plain.text == plain.raw_text and plain.caption is None

    qs = convs["conv-26"].questions
    assert qs[75].question == "How many children does Melanie have?"
    assert qs[75].answer == "3"  # integer 3 in the JSON
    adv = qs[152]
    assert adv.category == 5 and adv.answer is None
    assert adv.adversarial_answer == "self-care is important"
    assert qs[37].evidence == ["D8:6; D9:17"] and qs[37].evidence_ids == ["D8:6", "D9:17"]

    assert [c.sample_id for c in load_locomo(data, conversations=["conv-41"])] == ["conv-41"]


def test_hand_check_five_questions_of_the_real_file(convs) -> None:
    _need(convs, *EXPECTED)
    turns = {(c.sample_id, t.dia_id): t.text for c in convs.values() for t in c.turns}

    # 1) conv-26 #0, cat 2 "When did Caroline go to the LGBTQ support group?" gold "7 May 2023".
    #    pred "Caroline went on May 7, 2023" -> [carolin, went, on, may, 7, 2023]; gold [7, may, 2023]
    #    common 3: P=3/6, R=3/3 -> F1 = 2*.5*1/1.5 = 2/3.
    #    Evidence D1:3 says "yesterday", not the date -> has-answer False.
    q = convs["conv-26"].questions[0]
    assert (q.category, q.answer) == (2, "7 May 2023")
    assert score_answer("Caroline went on May 7, 2023", q) == pytest.approx(2 / 3)
    assert not context_has_answer(turns["conv-26", "D1:3"], gold_answer(q))

    # 2) conv-26 #24, cat 1 "What does Melanie do to destress?" gold "Running, pottery".
    #    pred parts "running" | "pottery class"; gold "Running": best 1.0 ("running");
    #    gold "pottery": [potteri] vs [potteri, class] P=1/2 R=1 -> 2/3. Mean (1 + 2/3)/2 = 5/6.
    #    Context D7:22 + D5:4 has "running" and "pottery" but not the run "running , pottery"
    #    -> has-answer False, token recall [run, potteri] both present = 1.0.
    q = convs["conv-26"].questions[24]
    assert (q.category, q.answer) == (1, "Running, pottery")
    assert score_answer("running, pottery class", q) == pytest.approx(5 / 6)
    ctx = turns["conv-26", "D7:22"] + "\n" + turns["conv-26", "D5:4"]
    assert not context_has_answer(ctx, gold_answer(q))
    assert answer_token_recall(ctx, gold_answer(q)) == 1.0

    # 3) conv-30 #42, cat 4 "What kind of dance piece did Gina's team perform to win first place?"
    #    gold '"Finding Freedom"' -> [find, freedom]; pred 'A contemporary piece called "Finding
    #    Freedom."' -> [contemporari, piec, call, find, freedom]; P=2/5 R=1 -> 2*.4/1.4 = 4/7.
    #    D1:19 reads '..called "Finding Freedom." It..': gold tokens '" finding freedom "' but
    #    the context has '" finding freedom . "' -> has-answer False (LoCoMo's rule is that strict).
    q = convs["conv-30"].questions[42]
    assert (q.category, q.answer) == (4, '"Finding Freedom"')
    assert score_answer('A contemporary piece called "Finding Freedom."', q) == pytest.approx(4 / 7)
    assert not context_has_answer(turns["conv-30", "D1:19"], gold_answer(q))
    assert answer_token_recall(turns["conv-30", "D1:19"], gold_answer(q)) == 1.0

    # 4) conv-41 #18, cat 1 "Who did John go to yoga with?" gold "Rob".
    #    pred "His colleague Rob" -> [hi, colleagu, rob] vs [rob]: P=1/3 R=1 -> (2/3)/(4/3) = 1/2.
    #    D7:16 "...my colleague Rob invited me..." -> has-answer True.
    q = convs["conv-41"].questions[18]
    assert (q.category, q.answer) == (1, "Rob")
    assert score_answer("His colleague Rob", q) == pytest.approx(0.5)
    assert context_has_answer(turns["conv-41", "D7:16"], gold_answer(q))

    # 5) conv-26 #42, cat 3 "Would Melanie be more interested in going to a national park or a
    #    theme park?" gold "National park; she likes the outdoors" -> scored gold "National park".
    #    pred "A national park" -> [nation, park] == gold -> F1 1.0. Evidence D10:12 (camping,
    #    campfire) never says "national park" -> has-answer False, token recall 0/2 = 0.0.
    q = convs["conv-26"].questions[42]
    assert q.category == 3 and gold_answer(q) == "National park"
    assert score_answer("A national park", q) == 1.0
    assert not context_has_answer(turns["conv-26", "D10:12"], gold_answer(q))
    assert answer_token_recall(turns["conv-26", "D10:12"], gold_answer(q)) == 0.0
