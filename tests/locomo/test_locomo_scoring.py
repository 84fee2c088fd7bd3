"""LoCoMo scoring: hand-computed golden cases, NLTK stemmer parity, and a hand check of five questions of
tests/fixtures/locomo_mini.json (LoCoMo's format, written for these tests).

Every expected number here was worked out by hand (arithmetic in the comments), not produced by
running the code under test. The stemmer table holds NLTK 3.10 ``PorterStemmer().stem`` outputs.
The same hand check on questions of the real data: tests/locomo/test_locomo_real_data.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memory.locomo.dataset import Question, load_locomo
from memory.locomo.scoring import (
    answer_token_recall,
    context_has_answer,
    evidence_recall,
    f1_multi,
    f1_score,
    gold_answer,
    is_abstention,
    normalize_answer,
    score_answer,
    simple_tokenize,
    stemmed_tokens,
)
from memory.porter import stem

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "locomo_mini.json"

# nltk.stem.PorterStemmer() (default NLTK_EXTENSIONS mode), NLTK 3.10.4.
NLTK_STEMS = {
    "caresses": "caress", "ponies": "poni", "ties": "tie", "caress": "caress", "cats": "cat",
    "feed": "feed", "agreed": "agre", "plastered": "plaster", "bled": "bled", "motoring": "motor",
    "sing": "sing", "conflated": "conflat", "troubled": "troubl", "sized": "size", "hopping": "hop",
    "tanned": "tan", "falling": "fall", "hissing": "hiss", "fizzed": "fizz", "failing": "fail",
    "filing": "file", "happy": "happi", "sky": "sky", "skies": "sky", "relational": "relat",
    "conditional": "condit", "rational": "ration", "generalization": "gener", "running": "run",
    "runs": "run", "happily": "happili", "dying": "die", "lying": "lie", "news": "news",
    "dies": "die", "flies": "fli", "spied": "spi", "died": "die", "enjoy": "enjoy",
    "national": "nation", "generously": "gener", "hopefulness": "hope", "electrical": "electr",
    "adjustment": "adjust", "adoption": "adopt", "controlling": "control", "roll": "roll",
    "probate": "probat", "rate": "rate", "cease": "ceas", "mentioned": "mention",
    "information": "inform", "available": "avail", "conversation": "convers",
    "photography": "photographi", "his": "hi", "does": "doe", "is": "is", "was": "wa",
    "are": "are", "the": "the", "pottery": "potteri", "caroline": "carolin",
}  # fmt: skip


@pytest.mark.parametrize("word,expected", sorted(NLTK_STEMS.items()))
def test_porter_matches_nltk(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_porter_lowercases_and_keeps_short_words() -> None:
    assert stem("Running") == "run"
    assert stem("as") == "as"  # <= 2 letters are never stemmed
    assert stem("") == ""


# --------------------------------------------------------------------------- normalisation / F1


def test_normalize_answer_order_of_operations() -> None:
    # commas dropped, lower, '!' removed, then a/the/and -> ' ', whitespace collapsed
    assert normalize_answer("The cat, and a Dog!") == "cat dog"
    assert normalize_answer("1,000 miles") == "1000 miles"  # comma removed without a space
    assert normalize_answer("Theater AND then") == "theater then"  # only whole words go
    assert normalize_answer("An apple-pie") == "applepie"  # punctuation before articles
    assert normalize_answer("  ") == ""


def test_f1_stemming_and_articles() -> None:
    assert f1_score("running", "runs") == 1.0  # run == run
    # [potteri, class] vs [potteri]: P=1/2, R=1 -> 2*.5*1/1.5 = 2/3
    assert f1_score("The pottery class", "pottery") == pytest.approx(2 / 3)
    # 'and' and 'the' vanish: [cat, dog] vs [dog] -> 2/3
    assert f1_score("cats and dogs", "the dog") == pytest.approx(2 / 3)
    # multiset overlap: [dog, dog] vs [dog] -> common 1, P=1/2, R=1 -> 2/3
    assert f1_score("dog dog", "dog") == pytest.approx(2 / 3)
    assert f1_score("", "anything") == 0.0
    assert f1_score("anything", "") == 0.0
    assert f1_score("The", "a") == 0.0  # both normalise to nothing


def test_category1_comma_split() -> None:
    # gold parts London->1, Rome->0, Paris->1 (best over prediction parts): (1+0+1)/3
    assert f1_multi("Paris, London", "London, Rome, Paris") == pytest.approx(2 / 3)
    # no comma in prediction: [pari, london] vs [pari] -> 2/3, vs [london] -> 2/3; mean 2/3
    assert f1_multi("Paris and London", "Paris, London") == pytest.approx(2 / 3)
    q = Question("Where?", "beach, mountains, forest", None, [], 1)
    # beach->1, mountains(mountain)->1, forest->0 -> 2/3
    assert score_answer("beach, mountains", q) == pytest.approx(2 / 3)


def test_category3_semicolon_and_plain_categories() -> None:
    q3 = Question("Park?", "National park; she likes the outdoors", None, [], 3)
    assert gold_answer(q3) == "National park"
    assert score_answer("national park", q3) == 1.0
    # the same text as category 4 scores against the whole gold:
    # [nation, park] vs [nation, park, she, like, outdoor]: P=1, R=2/5 -> 2*.4/1.4 = 4/7
    q4 = Question("Park?", "National park; she likes the outdoors", None, [], 4)
    assert score_answer("national park", q4) == pytest.approx(4 / 7)
    # category 2 is plain F1 even with commas: [7, may, 2023] vs [7, may, 2023]
    q2 = Question("When?", "7 May, 2023", None, [], 2)
    assert score_answer("May 7 2023", q2) == 1.0


def test_integer_answers_and_mapping_input() -> None:
    assert score_answer("3", {"question": "How many?", "answer": 3, "category": 1}) == 1.0
    assert score_answer("three", {"question": "How many?", "answer": 3, "category": 1}) == 0.0
    # [in, 2022] vs [2022] -> 2/3
    assert score_answer("In 2022", Question("When?", "2022", None, [], 2)) == pytest.approx(2 / 3)


def test_category5_abstention_phrases() -> None:
    q5 = Question("What did X say?", None, "self-care is important", [], 5)
    assert score_answer("That is not mentioned in the conversation.", q5) == 1.0
    assert score_answer("NO INFORMATION AVAILABLE", q5) == 1.0
    assert score_answer("self-care is important", q5) == 0.0  # repeating the trap answer fails
    assert score_answer("I don't know", q5) == 0.0
    assert score_answer(None, q5) == 0.0
    assert gold_answer(q5) == "self-care is important"
    assert is_abstention("Not Mentioned") and not is_abstention(None)


def test_missing_prediction_and_unknown_category() -> None:
    assert score_answer(None, Question("q", "a b", None, [], 4)) == 0.0
    with pytest.raises(ValueError):
        score_answer("x", Question("q", "x", None, [], 6))


# --------------------------------------------------------------------------- context recall


def test_simple_tokenize_like_dpr() -> None:
    assert simple_tokenize("Hi, it's 3pm!") == ["hi", ",", "it", "'", "s", "3pm", "!"]


def test_context_has_answer() -> None:
    assert context_has_answer("She moved to Sweden last year.", "Sweden")
    assert context_has_answer("We went to the New York office", "new york")
    assert not context_has_answer("York New", "New York")  # order matters
    assert not context_has_answer("on 7 May, 2023", "7 May 2023")  # ',' is a token
    assert not context_has_answer("Newark airport", "new")  # whole tokens, not substrings
    assert context_has_answer("Cafe\u0301 Luna", "caf\u00e9 luna")  # NFD on both sides
    assert context_has_answer("anything", "")  # as in DPR: empty answer is found
    assert not context_has_answer("", "x")


def test_answer_token_recall() -> None:
    assert answer_token_recall("I've been running and doing pottery", "Running, pottery") == 1.0
    assert answer_token_recall("running only", "Running, pottery") == 0.5
    assert answer_token_recall("", "x") == 0.0
    assert answer_token_recall("abc", "the") == 0.0  # no gold tokens after normalisation


def test_evidence_recall() -> None:
    assert evidence_recall(["D1:3", "D2:1"], ["D1:3", "D4:4"]) == 0.5
    # session-level retrieval: sessions 1 and 4 cover D1:3 and D4:4 but not D2:2
    assert evidence_recall(["S1", "S4"], ["D1:3", "D4:4", "D2:2"]) == pytest.approx(2 / 3)
    assert evidence_recall(["D1:1"], []) == 1.0
    assert evidence_recall([], ["D1:1"]) == 0.0


# --------------------------------------------------------------------------- hand check on the fixture


@pytest.fixture(scope="module")
def mini():
    convs = {c.sample_id: c for c in load_locomo(MINI)}
    turns = {(c.sample_id, t.dia_id): t.text for c in convs.values() for t in c.turns}
    return convs, turns


def test_hand_check_five_fixture_questions(mini) -> None:
    convs, turns = mini

    # 1) mini-1 #0, cat 2 "When did Nora go to the pottery open day?" gold "7 May 2023".
    #    pred "Nora went on May 7, 2023" -> [nora, went, on, may, 7, 2023]; gold [7, may, 2023]
    #    common 3: P=3/6, R=3/3 -> F1 = 2*.5*1/1.5 = 2/3.
    #    Evidence D1:1 says "yesterday", not the date -> has-answer False.
    q = convs["mini-1"].questions[0]
    assert (q.category, q.answer) == (2, "7 May 2023")
    assert score_answer("Nora went on May 7, 2023", q) == pytest.approx(2 / 3)
    assert not context_has_answer(turns["mini-1", "D1:1"], gold_answer(q))

    # 2) mini-1 #3, cat 1 "What does Nora do to unwind?" gold "Hiking, baking".
    #    pred parts "hiking" | "baking bread"; gold "Hiking" -> [hike]: best 1.0 ("hiking");
    #    gold "baking" -> [bake] vs [bake, bread] P=1/2 R=1 -> 2/3. Mean (1 + 2/3)/2 = 5/6.
    #    Context D3:1 + D2:3 has "hiking" and "baking" but not the run "hiking , baking"
    #    -> has-answer False, token recall [hike, bake] both present = 1.0.
    q = convs["mini-1"].questions[3]
    assert (q.category, q.answer) == (1, "Hiking, baking")
    assert score_answer("hiking, baking bread", q) == pytest.approx(5 / 6)
    ctx = turns["mini-1", "D3:1"] + "\n" + turns["mini-1", "D2:3"]
    assert not context_has_answer(ctx, gold_answer(q))
    assert answer_token_recall(ctx, gold_answer(q)) == 1.0

    # 3) mini-2 #0, cat 4 "What song did Jules's band play at the wedding?"
    #    gold '"Blue Horizon"' -> [blue, horizon]; pred 'A jazz song called "Blue Horizon."'
    #    -> [jazz, song, call, blue, horizon]; P=2/5 R=1 -> 2*.4/1.4 = 4/7.
    #    D1:2 reads '..called "Blue Horizon." It..': gold tokens '" blue horizon "' but the
    #    context has '" blue horizon . "' -> has-answer False (LoCoMo's rule is that strict).
    q = convs["mini-2"].questions[0]
    assert (q.category, q.answer) == (4, '"Blue Horizon"')
    assert score_answer('A jazz song called "Blue Horizon."', q) == pytest.approx(4 / 7)
    assert not context_has_answer(turns["mini-2", "D1:2"], gold_answer(q))
    assert answer_token_recall(turns["mini-2", "D1:2"], gold_answer(q)) == 1.0

    # 4) mini-2 #1, cat 1 "Who did Ravi go climbing with?" gold "Priya".
    #    pred "His colleague Priya" -> [hi, colleagu, priya] vs [priya]: P=1/3 R=1 -> (2/3)/(4/3) = 1/2.
    #    D2:1 "Since my colleague Priya invited me..." -> has-answer True.
    q = convs["mini-2"].questions[1]
    assert (q.category, q.answer) == (1, "Priya")
    assert score_answer("His colleague Priya", q) == pytest.approx(0.5)
    assert context_has_answer(turns["mini-2", "D2:1"], gold_answer(q))

    # 5) mini-1 #5, cat 3 "Would Nora rather spend a weekend at a lake or in a big city?"
    #    gold "A lake; she loves swimming outdoors" -> scored gold "A lake".
    #    pred "The lake" -> [lake] == gold -> F1 1.0. Evidence D3:3 (camping in the woods,
    #    swimming) never says "lake" -> has-answer False, token recall 0/1 = 0.0.
    q = convs["mini-1"].questions[5]
    assert q.category == 3 and gold_answer(q) == "A lake"
    assert score_answer("The lake", q) == 1.0
    assert not context_has_answer(turns["mini-1", "D3:3"], gold_answer(q))
    assert answer_token_recall(turns["mini-1", "D3:3"], gold_answer(q)) == 0.0


def test_stemmed_tokens_of_fixture_answer() -> None:
    assert stemmed_tokens('A jazz song called "Blue Horizon."') == [
        "jazz", "song", "call", "blue", "horizon",
    ]  # fmt: skip
