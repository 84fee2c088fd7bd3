"""Porter stemmer matching ``nltk.stem.PorterStemmer()`` in its default NLTK_EXTENSIONS mode.

Why this exists: LoCoMo's QA metric (``task_eval/evaluation.py::f1_score`` in snap-research/LoCoMo)
stems every normalised token with ``nltk.stem.PorterStemmer().stem``. Pulling in NLTK for one
function is heavy, so this module re-implements exactly that mode: Porter (1980) plus Martin
Porter's published extensions plus NLTK's own additions (irregular-form table, ``ies``/``ied`` on
4-letter words, ``y -> i`` only after a consonant, ``alli`` re-run, ``fulli``, ``logi``, the
two-letter ``*o`` case, and words of <= 2 letters left alone). It was checked against NLTK 3.10
on every token of the LoCoMo dev split.

The reply context's FTS5 index (:mod:`memory.fts`) stems with it too, so the words a person wrote and
the words of the question meet in one form.

Only the default mode is provided: that is the one ``PorterStemmer()`` builds, and thus the one
LoCoMo's scores were computed with.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

__all__ = ["stem"]

_VOWELS = frozenset("aeiou")

# NLTK's irregular-form table: these words bypass the algorithm entirely.
_IRREGULAR: dict[str, str] = {
    "sky": "sky",
    "skies": "sky",
    "dying": "die",
    "lying": "lie",
    "tying": "tie",
    "news": "news",
    "innings": "inning",
    "inning": "inning",
    "outings": "outing",
    "outing": "outing",
    "cannings": "canning",
    "canning": "canning",
    "howe": "howe",
    "proceed": "proceed",
    "exceed": "exceed",
    "succeed": "succeed",
}

Condition = Callable[[str], bool] | None


def _is_consonant(word: str, i: int) -> bool:
    """Porter's consonant test: not a vowel, and 'y' only counts as a consonant after a vowel."""
    ch = word[i]
    if ch in _VOWELS:
        return False
    if ch == "y":
        return i == 0 or not _is_consonant(word, i - 1)
    return True


def _measure(stem: str) -> int:
    """Porter's m: the number of vowel->consonant transitions in the stem."""
    pattern = "".join("c" if _is_consonant(stem, i) else "v" for i in range(len(stem)))
    return pattern.count("vc")


def _positive_measure(stem: str) -> bool:
    return _measure(stem) > 0


def _measure_gt_1(stem: str) -> bool:
    return _measure(stem) > 1


def _contains_vowel(stem: str) -> bool:
    return any(not _is_consonant(stem, i) for i in range(len(stem)))


def _ends_double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _is_consonant(word, len(word) - 1)


def _ends_cvc(word: str) -> bool:
    """Porter's *o, with NLTK's extra case of a two-letter vowel+consonant stem (so 'are' keeps -e)."""
    n = len(word)
    if (
        n >= 3
        and _is_consonant(word, n - 3)
        and not _is_consonant(word, n - 2)
        and _is_consonant(word, n - 1)
        and word[-1] not in "wxy"
    ):
        return True
    return n == 2 and not _is_consonant(word, 0) and _is_consonant(word, 1)


def _apply_rules(word: str, rules: list[tuple[str, str, Condition]]) -> str:
    """Apply the first rule whose suffix matches; if its condition fails, stop (Porter's rule)."""
    for suffix, replacement, condition in rules:
        if suffix == "*d":
            if _ends_double_consonant(word):
                stem = word[:-2]
                if condition is None or condition(stem):
                    return stem + replacement
                return word
            continue
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            if condition is None or condition(stem):
                return stem + replacement
            return word
    return word


def _step1a(word: str) -> str:
    if word.endswith("ies") and len(word) == 4:  # NLTK: 'dies' -> 'die', not 'di'
        return word[:-3] + "ie"
    return _apply_rules(word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])


def _step1b(word: str) -> str:
    if word.endswith("ied"):  # NLTK: 'died' -> 'die', 'spied' -> 'spi'
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        stem = word[:-3]
        return stem + "ee" if _measure(stem) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            if _contains_vowel(stem):
                break
    else:
        return word
    last = stem[-1]
    return _apply_rules(
        stem,
        [
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", last, lambda _s: last not in "lsz"),
            ("", "e", lambda s: _measure(s) == 1 and _ends_cvc(s)),
        ],
    )


def _step1c(word: str) -> str:
    # NLTK: y -> i only when preceded by a consonant that is not the whole stem ('happy', not 'enjoy').
    return _apply_rules(word, [("y", "i", lambda s: len(s) > 1 and _is_consonant(s, len(s) - 1))])


def _step2(word: str) -> str:
    if word.endswith("alli") and _positive_measure(word[:-4]):
        # NLTK applies ALLI -> AL first and re-runs step 2 on the result.
        return _step2(word[:-4] + "al")
    rules: list[tuple[str, str, Condition]] = [
        ("ational", "ate", _positive_measure),
        ("tional", "tion", _positive_measure),
        ("enci", "ence", _positive_measure),
        ("anci", "ance", _positive_measure),
        ("izer", "ize", _positive_measure),
        ("bli", "ble", _positive_measure),
        ("alli", "al", _positive_measure),
        ("entli", "ent", _positive_measure),
        ("eli", "e", _positive_measure),
        ("ousli", "ous", _positive_measure),
        ("ization", "ize", _positive_measure),
        ("ation", "ate", _positive_measure),
        ("ator", "ate", _positive_measure),
        ("alism", "al", _positive_measure),
        ("iveness", "ive", _positive_measure),
        ("fulness", "ful", _positive_measure),
        ("ousness", "ous", _positive_measure),
        ("aliti", "al", _positive_measure),
        ("iviti", "ive", _positive_measure),
        ("biliti", "ble", _positive_measure),
        ("fulli", "ful", _positive_measure),
        # The 'l' of 'logi' stays with the stem for the measure test ('geologi' -> 'geolog').
        ("logi", "log", lambda _s: _positive_measure(word[:-3])),
    ]
    return _apply_rules(word, rules)


def _step3(word: str) -> str:
    return _apply_rules(
        word,
        [
            ("icate", "ic", _positive_measure),
            ("ative", "", _positive_measure),
            ("alize", "al", _positive_measure),
            ("iciti", "ic", _positive_measure),
            ("ical", "ic", _positive_measure),
            ("ful", "", _positive_measure),
            ("ness", "", _positive_measure),
        ],
    )


def _step4(word: str) -> str:
    suffixes = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent"]
    rules: list[tuple[str, str, Condition]] = [(s, "", _measure_gt_1) for s in suffixes]
    rules.append(("ion", "", lambda s: _measure(s) > 1 and s[-1] in "st"))
    rules += [(s, "", _measure_gt_1) for s in ["ou", "ism", "ate", "iti", "ous", "ive", "ize"]]
    return _apply_rules(word, rules)


def _step5a(word: str) -> str:
    # Both E rules are tried (unlike _apply_rules), as NLTK does.
    if word.endswith("e"):
        stem = word[:-1]
        m = _measure(stem)
        if m > 1 or (m == 1 and not _ends_cvc(stem)):
            return stem
    return word


def _step5b(word: str) -> str:
    return _apply_rules(word, [("ll", "l", lambda _s: _measure(word[:-1]) > 1)])


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """Stem one word exactly as ``nltk.stem.PorterStemmer().stem(word)`` does.

    The word is lower-cased first (NLTK's ``to_lowercase=True`` default). Cached because the
    scorer stems the same few thousand conversation words over and over.
    """
    lowered = word.lower()
    if lowered in _IRREGULAR:
        return _IRREGULAR[lowered]
    if len(word) <= 2:
        return lowered
    out = lowered
    for step in (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5a, _step5b):
        out = step(out)
    return out
