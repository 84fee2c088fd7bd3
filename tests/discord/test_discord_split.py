"""Splitting replies at Discord's 2,000 characters without breaking ``` code blocks."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.discord_adapter import MESSAGE_LIMIT, _fences, _split_parts, split_discord


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_short_text_is_one_message() -> None:
    assert split_discord("  hello  ") == ["hello"]
    assert split_discord("") == [] and split_discord(" \n ") == []
    assert split_discord("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]


def test_prose_splits_at_paragraphs_then_sentences() -> None:
    para = "This is a sentence. " * 60  # 1,200 characters
    chunks = split_discord(para.strip() + "\n\n" + para.strip())
    assert len(chunks) == 2 and chunks[0] == para.strip() and chunks[1] == para.strip()
    chunks = split_discord(("Sentence number one is here. " * 150).strip())
    assert all(len(c) <= MESSAGE_LIMIT for c in chunks) and len(chunks) == 3
    assert all(c.endswith(".") for c in chunks)


def test_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(120))
    text = "Here is the script:\n```python\n" + code + "\n```\nThat's all."
    chunks = split_discord(text)
    assert len(chunks) >= 3
    assert all(len(c) <= MESSAGE_LIMIT for c in chunks)
    assert all(len(_fences(c)) % 2 == 0 for c in chunks)  # every message renders its own block
    assert chunks[0].startswith("Here is the script:\n```python\n") and chunks[0].endswith("\n```")
    for middle in chunks[1:]:
        assert middle.startswith("```python\n")
    assert chunks[-1].endswith("That's all.")
    # Inside code only line breaks are used: every line arrives whole, indentation kept.
    lines = [ln for c in chunks for ln in c.split("\n") if ln.startswith("    value_")]
    assert lines == code.split("\n")


def test_unclosed_block_at_the_end_is_closed() -> None:
    assert split_discord("look:\n```js\nlet a = 1;") == ["look:\n```js\nlet a = 1;\n```"]


def test_long_word_is_hard_cut_but_never_inside_a_marker() -> None:
    budget = MESSAGE_LIMIT - len("\n```")  # room kept for closing a block
    for before in (budget - 2, budget - 3, budget - 5):  # the cut falls inside "```", on "py", or after it
        chunks = split_discord("a" * before + "```py\nprint(1)\n```")
        assert chunks == ["a" * before, "```py\nprint(1)\n```"]
    chunks = split_discord("b" * 4500)
    assert [len(c) for c in chunks] == [budget, budget, 4500 - 2 * budget]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(["word", "Sentence. ", " ", "\n", "\n\n", "```", "```py\n", "```\n", "x" * 70, "`", "  code"]),
        max_size=400,
    ),
    limit=st.integers(min_value=64, max_value=400),
)
def test_split_properties(parts: list[str], limit: int) -> None:
    text = "".join(parts)
    chunks = split_discord(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert all(c.strip() for c in chunks)
    assert all(len(_fences(c)) % 2 == 0 for c in chunks)
    parts = _split_parts(text, limit)
    assert chunks == [h + b + t for h, b, t in parts]
    # Only whitespace is dropped at the cuts, and what is added is fence glue: a reopening line, a closing one.
    assert _squash("".join(body for _, body, _ in parts)) == _squash(text)
    assert all(re.fullmatch(r"(```[A-Za-z0-9_+#.\-]*\n)?", h) and t in ("", "\n```") for h, _, t in parts)
