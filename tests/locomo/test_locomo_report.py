"""Report writer on synthetic records: numbers, files and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memory.locomo.report import aggregate, write_report


def _rec(
    strategy: str,
    budget: int,
    category: int,
    has: bool,
    f1: float | None,
    pred: str | None,
    tokens: int = 100,
) -> dict:
    return {
        "sample_id": "conv-x",
        "strategy": strategy,
        "budget": budget,
        "category": category,
        "question": "q?",
        "answer": None if category == 5 else "a",
        "prediction": pred,
        "context": "some retrieved context " * 5,
        "context_tokens": tokens,
        "has_answer": has,
        "token_recall": 1.0 if has else 0.5,
        "f1": f1,
    }


RECORDS = [
    _rec("bm25", 500, 1, True, 1.0, "a", 100),
    _rec("bm25", 500, 2, False, 0.0, "b", 200),
    _rec("bm25", 500, 4, True, 0.5, "a", 300),
    _rec("bm25", 500, 5, False, None, "Not mentioned.", 400),
    _rec("bm25", 500, 5, False, None, "a guess", 400),
    _rec("bm25", 2000, 1, True, None, None),
    _rec("bm25", 2000, 3, True, None, None),
    _rec("summary", 500, 1, False, 0.0, "x"),
    _rec("summary", 500, 4, True, 1.0, "a"),
    _rec("summary", 2000, 2, True, 1.0, "a"),
]
COST = {
    "bm25": {"model_calls": 0, "generated_tokens": 0, "wall_seconds": 1.5},
    "summary": {"model_calls": 42, "generated_tokens": 9000, "wall_seconds": 120.0},
}
META = {"machine": "test-box", "model": "fake-llm", "date": "2024-01-01", "command": "pytest"}


def test_aggregate_numbers() -> None:
    agg = aggregate(RECORDS)
    assert agg["strategies"] == ["bm25", "summary"]
    assert agg["budgets"] == ["500", "2000"]  # numeric order, not string order
    cell = agg["cells"]["bm25"]["500"]
    assert cell["n_questions"] == 3
    assert cell["recall"] == pytest.approx(2 / 3)
    assert cell["token_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert cell["f1"] == pytest.approx(0.5)  # (1 + 0 + .5) / 3
    assert cell["adversarial_n"] == 2 and cell["adversarial_share"] == 0.5
    assert cell["f1_all_categories"] == pytest.approx((1 + 0 + 0.5 + 1 + 0) / 5)
    assert cell["context_tokens_mean"] == pytest.approx((100 + 200 + 300 + 400 + 400) / 5)
    assert cell["by_category"]["1"]["recall"] == 1.0 and cell["by_category"]["3"]["n"] == 0
    assert cell["by_category"]["3"]["recall"] is None
    no_f1 = agg["cells"]["bm25"]["2000"]
    assert no_f1["f1"] is None and no_f1["n_f1"] == 0 and no_f1["adversarial_share"] is None


def test_write_report_outputs(tmp_path: Path) -> None:
    agg = write_report(tmp_path / "out", RECORDS, COST, META)
    out = tmp_path / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["aggregate"] == agg
    assert data["context_included"] is False
    assert all("context" not in r for r in data["records"])
    assert data["cost"]["summary"]["model_calls"] == 42
    md = (out / "report.md").read_text()
    for needle in (
        "test-box",
        "fake-llm",
        "`pytest`",
        "| bm25 | 500 |",
        "Memory-building cost",
        "| summary | 42 | 9000 | 120.0 |",
    ):
        assert needle in md
    for name in (
        "recall_by_category_500.png",
        "recall_by_category_2000.png",
        "recall_vs_budget.png",
        "memory_cost.png",
    ):
        png = out / name
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_keeps_context_on_request(tmp_path: Path) -> None:
    write_report(tmp_path, RECORDS[:2], {}, {}, include_context=True)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["context_included"] is True and "context" in data["records"][0]
    assert data["meta"]["model"] == "unknown" and data["meta"]["date"]
    assert (tmp_path / "memory_cost.png").stat().st_size > 0
