"""LoCoMo QA scoring, replicated from the dataset's own evaluation code.

Why a replica: numbers are only comparable with the LoCoMo paper (and with other memory systems
reporting on LoCoMo) if every detail of the scorer matches, including its quirks. Sources, all in
the GitHub repository snap-research/LoCoMo (file ``task_eval/evaluation.py`` unless noted):

* ``normalize_answer``  -> :func:`normalize_answer` (same order of operations).
* ``f1_score``          -> :func:`f1_score` (Porter-stemmed token F1, NLTK ``PorterStemmer``).
* ``f1``                -> :func:`f1_multi` (category 1: comma-split, mean of best F1 per gold part).
* ``eval_question_answering`` -> :func:`gold_answer` and :func:`score_answer` (category rules).
* ``has_answer`` / ``SimpleTokenizer`` / ``_normalize`` -> :func:`context_has_answer`; LoCoMo took
  these verbatim from DPR (facebookresearch/DPR, ``dpr/data/qa_validation.py::has_answer`` and
  ``dpr/utils/tokenizers.py::SimpleTokenizer``); LoCoMo's ``eval_recall`` applies it to the
  retrieved context.
* ``eval_question_answering``'s ``recall_acc`` -> :func:`evidence_recall` (dialog-id recall of the
  retrieved context, which is what LoCoMo's RAG tables report as "recall").

:func:`answer_token_recall` is this project's own softer measure (documented there).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from memory.locomo.dataset import Question
from memory.porter import stem

__all__ = [
    "ABSTENTION_PHRASES",
    "answer_token_recall",
    "context_has_answer",
    "evidence_recall",
    "f1_multi",
    "f1_score",
    "gold_answer",
    "is_abstention",
    "normalize_answer",
    "score_answer",
    "simple_tokenize",
    "stemmed_tokens",
]

# Category 5 (adversarial) counts as correct when the prediction contains one of these,
# case-insensitively (evaluation.py::eval_question_answering).
ABSTENTION_PHRASES: tuple[str, ...] = ("no information available", "not mentioned")

# Deletes exactly the characters LoCoMo's per-character filter drops (string.punctuation), faster.
_PUNCT_RUN = re.compile("[" + re.escape(string.punctuation) + "]+")
# LoCoMo uses the third-party ``regex`` module with r'\b(a|an|the|and)\b'; for str patterns the
# stdlib ``re`` word boundary is Unicode-aware in the same way, so the result is identical.
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")


def normalize_answer(s: str) -> str:
    """LoCoMo's ``normalize_answer``: drop commas, lower-case, strip ASCII punctuation, replace the
    words a/an/the/and by a space, collapse whitespace - in that order.

    The order matters: commas go first (without a space, so "1,000" -> "1000"), punctuation is
    removed before the article regex (so "the-end" -> "theend" keeps no article).
    """
    s = s.replace(",", "")
    s = s.lower()
    s = _PUNCT_RUN.sub("", s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def stemmed_tokens(text: str) -> list[str]:
    """Tokens as LoCoMo's F1 sees them: ``normalize_answer`` then whitespace split then Porter stem."""
    return [stem(w) for w in normalize_answer(text).split()]


def f1_score(prediction: str, ground_truth: str) -> float:
    """LoCoMo's ``f1_score``: bag-of-stemmed-tokens F1 (multiset overlap), 0 when nothing overlaps.

    An empty prediction or gold (after normalisation) therefore scores 0, never a division error.
    """
    pred = stemmed_tokens(prediction)
    gold = stemmed_tokens(ground_truth)
    num_same = sum((Counter(pred) & Counter(gold)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred)
    recall = num_same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def f1_multi(prediction: str, ground_truth: str) -> float:
    """LoCoMo's ``f1`` (used for category 1, multi-hop): split prediction and gold on commas
    (raw strings, before normalisation), then average over gold parts the best ``f1_score``
    against any prediction part. LoCoMo uses ``np.mean``; a plain mean gives the same value up to
    floating-point rounding in the last bit.
    """
    predictions = [p.strip() for p in prediction.split(",")]
    ground_truths = [g.strip() for g in ground_truth.split(",")]
    best = [max(f1_score(p, g) for p in predictions) for g in ground_truths]
    return sum(best) / len(best)


def _field(question: Question | Mapping[str, Any], name: str) -> Any:
    if isinstance(question, Mapping):
        return question.get(name)
    return getattr(question, name)


def gold_answer(question: Question | Mapping[str, Any]) -> str:
    """The gold string LoCoMo scores against (``eval_question_answering``).

    ``answer`` if present, else ``adversarial_answer``, converted with ``str`` (integer answers);
    for category 3 only the part before the first ';' (stripped). Accepts a :class:`Question` or a
    raw LoCoMo ``qa`` dict. Returns "" when neither field exists (LoCoMo skips such lines).
    """
    answer = _field(question, "answer")
    if answer is None:
        answer = _field(question, "adversarial_answer")
    if answer is None:
        return ""
    answer = str(answer)
    if int(_field(question, "category")) == 3:
        answer = answer.split(";")[0].strip()
    return answer


def is_abstention(prediction: str | None) -> bool:
    """True when a prediction says the conversation does not contain the answer (category 5 rule)."""
    if prediction is None:
        return False
    lowered = prediction.lower()
    return any(phrase in lowered for phrase in ABSTENTION_PHRASES)


def score_answer(prediction: str | None, question: Question | Mapping[str, Any]) -> float:
    """Score one prediction with LoCoMo's category rules (``eval_question_answering``).

    * categories 2, 3, 4: :func:`f1_score` against :func:`gold_answer` (category 3: before ';');
    * category 1: :func:`f1_multi` (comma split);
    * category 5: 1.0 if :func:`is_abstention` else 0.0.

    A missing prediction (None) scores 0.0; LoCoMo would crash instead. Unknown categories raise
    ``ValueError`` as LoCoMo does.
    """
    category = int(_field(question, "category"))
    if category not in (1, 2, 3, 4, 5):
        raise ValueError(f"unknown LoCoMo category {category!r}")
    if category == 5:
        return 1.0 if is_abstention(prediction) else 0.0
    if prediction is None:
        return 0.0
    gold = gold_answer(question)
    if category == 1:
        return f1_multi(prediction, gold)
    return f1_score(prediction, gold)


def _is_alnum_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"


def _tokenize_by_category(text: str) -> list[str]:
    """The exact rule, character by character (used for stretches containing non-ASCII)."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if _is_alnum_char(ch):
            j = i + 1
            while j < n and _is_alnum_char(text[j]):
                j += 1
            tokens.append(text[i:j].lower())
            i = j
            continue
        if unicodedata.category(ch)[0] not in "ZC":
            tokens.append(ch.lower())
        i += 1
    return tokens


# Fast path: runs of ASCII letters/digits or any non-ASCII characters, or one ASCII punctuation/
# symbol character. ASCII punctuation, spaces and controls always end a token under the exact
# rule, so each run can be tokenised on its own: pure-ASCII runs are one token, runs with
# non-ASCII characters go through the exact per-character rule.
_FAST_RUN = re.compile(r"[A-Za-z0-9\x80-\U0010FFFF]+|[!-/:-@\[-`{-~]")


def simple_tokenize(text: str) -> list[str]:
    """DPR/LoCoMo ``SimpleTokenizer().tokenize(text, uncased=True)`` without the ``regex`` module.

    Their pattern is ``([\\p{L}\\p{N}\\p{M}]+)|([^\\p{Z}\\p{C}])``: maximal runs of letters, numbers
    and combining marks are one token; every other character that is neither a separator (Z*) nor
    a control/format/unassigned character (C*) is a token of its own; tokens are lower-cased
    after matching. Unicode general categories from :mod:`unicodedata` give the same classes
    (for characters that Python's Unicode database knows; newer code points are 'Cn' here).
    """
    tokens: list[str] = []
    for run in _FAST_RUN.findall(text):
        if run.isascii():
            tokens.append(run.lower())
        else:
            tokens.extend(_tokenize_by_category(run))
    return tokens


def context_has_answer(context: str, answer: str) -> bool:
    """LoCoMo's ``has_answer`` (copied from DPR): does the answer occur in the context as a
    contiguous run of tokens?

    Both strings are Unicode NFD-normalised (``_normalize``) and tokenised with
    :func:`simple_tokenize` (lower-cased). Note this is NOT ``normalize_answer``: punctuation
    stays as single-character tokens and articles are kept, no stemming - so "7 May, 2023" is not
    found in "7 May 2023", but "Sweden" is found in "...to Sweden." As in the original, an answer
    with no tokens counts as found. Pass :func:`gold_answer` for the answer to apply the
    category-3 ';' rule.
    """
    text_tokens = simple_tokenize(unicodedata.normalize("NFD", context))
    answer_tokens = simple_tokenize(unicodedata.normalize("NFD", answer))
    k = len(answer_tokens)
    if k == 0:
        return True
    first = answer_tokens[0]
    for i in range(len(text_tokens) - k + 1):
        if text_tokens[i] == first and text_tokens[i : i + k] == answer_tokens:
            return True
    return False


def answer_token_recall(context: str, answer: str) -> float:
    """Share of the gold answer's tokens that appear anywhere in the context (project metric).

    Not a LoCoMo function: a softer companion to :func:`context_has_answer` that tolerates
    reordering, inflection and punctuation. Tokens are LoCoMo's F1 tokens
    (:func:`stemmed_tokens`: ``normalize_answer`` + Porter stem) so this is the recall half of
    ``f1_score`` with the whole context as the "prediction", with each gold token (duplicates
    included) counted when the stem occurs at least once in the context. An answer with no
    tokens gives 0.0.
    """
    gold = stemmed_tokens(answer)
    if not gold:
        return 0.0
    present = set(stemmed_tokens(context))
    return sum(1 for tok in gold if tok in present) / len(gold)


def evidence_recall(retrieved_ids: Iterable[str], evidence: Iterable[str]) -> float:
    """LoCoMo's retrieval recall (``eval_question_answering``, ``recall_acc``).

    ``retrieved_ids`` are the dialog ids ("D3:7") of the retrieved turns, or session ids ("S3")
    when whole sessions were retrieved (LoCoMo decides by the first id's leading 'S'). The result
    is the share of evidence ids covered; a question without evidence gets 1.0, as in LoCoMo.
    Evidence ids are matched as given (LoCoMo does not repair malformed ids here either).
    """
    retrieved = list(retrieved_ids)
    ev = list(evidence)
    if not ev or not retrieved:
        # LoCoMo: no '<key>_context' field or no evidence -> 1; empty retrieval matches nothing.
        return 1.0 if not ev else 0.0
    if retrieved[0].startswith("S"):
        sessions = [r[1:] for r in retrieved]
        hits = sum(e.split(":")[0][1:] in sessions for e in ev)
    else:
        hits = sum(e in retrieved for e in ev)
    return hits / len(ev)
