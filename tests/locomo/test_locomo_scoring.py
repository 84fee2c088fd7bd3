"""LoCoMo scoring: hand-computed golden cases, NLTK stemmer parity, and a hand check of real dev QA.

Every expected number here was worked out by hand (arithmetic in the comments), not produced by
running the code under test. The stemmer table holds NLTK 3.10 ``PorterStemmer().stem`` outputs.
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

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV = REPO_ROOT.parent / "shared" / "data" / "locomo" / "locomo_dev.json"

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


# --------------------------------------------------------------------------- hand check on dev data


@pytest.fixture(scope="module")
def dev():
    convs = {c.sample_id: c for c in load_locomo(DEV)}
    turns = {(c.sample_id, t.dia_id): t.text for c in convs.values() for t in c.turns}
    return convs, turns


def test_hand_check_five_dev_questions(dev) -> None:
    convs, turns = dev

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


def test_stemmed_tokens_of_dev_answer() -> None:
    assert stemmed_tokens('A contemporary piece called "Finding Freedom."') == [
        "contemporari", "piec", "call", "find", "freedom",
    ]  # fmt: skip
