"""The LoCoMo replay through the real pipeline on tests/fixtures/locomo_mini.json (fake model for speed;
.ci/run replays part of the real data on the embedded one)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from memory.locomo.run import run_locomo
from models.fake import FakeBackend
from models.profiles import get_profile
from models.worker import ModelWorker

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "locomo_mini.json"


async def test_replay_scores_every_strategy_and_budget(tmp_path: Path) -> None:
    worker = ModelWorker(FakeBackend(), max_batch=16)
    worker.start()
    try:
        agg = await run_locomo(
            data=DATA, out=tmp_path, worker=worker, profile=get_profile("chat"), conversations=["mini-1"],
            budgets=(256, 1024), answer_budgets=[1024], limit_sessions=3, limit_questions=20, show_progress=False,
        )
    finally:
        await worker.close()
    for name in ("report.json", "report.md", "recall_vs_budget.png", "memory_cost.png", "recall_by_category_1024.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "report.json").read_text())
    records = report["records"]
    questions = {r["question"] for r in records}
    assert len(questions) == 8  # mini-1's questions whose evidence lies in its first three sessions
    assert len(records) == len(questions) * 5 * 2
    assert all(r["prediction"] is not None for r in records if r["budget"] == 1024)
    assert all(r["context_tokens"] <= r["budget"] for r in records)
    cells = agg["cells"]
    assert cells["none"]["1024"]["recall"] == 0.0
    assert cells["hybrid"]["1024"]["recall"] > 0.0
    assert report["cost"]["hybrid"]["model_calls"] > 0 and report["cost"]["recent"]["model_calls"] == 0
    # Replay followed production: one session memory per LoCoMo session, questions left no trace.
    db = sqlite3.connect(tmp_path / "databases" / "mini-1.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 3
    assert db.execute("SELECT COUNT(*) FROM session_memories").fetchone()[0] == 3
    dates = [r[0] for r in db.execute("SELECT date(started, 'unixepoch') FROM sessions ORDER BY id")]
    assert dates == ["2023-05-08", "2023-05-24", "2023-06-09"]


async def test_reuse_rescored_without_rebuilding_memory(tmp_path: Path) -> None:
    backend = FakeBackend()
    worker = ModelWorker(backend, max_batch=16)
    worker.start()
    try:
        kwargs = dict(data=DATA, out=tmp_path, worker=worker, profile=get_profile("chat"), conversations=["mini-2"],
                      budgets=(512,), answer_budgets=[], limit_sessions=2, limit_questions=3, show_progress=False)
        first = await run_locomo(**kwargs)
        calls = len(backend.calls)
        second = await run_locomo(**kwargs, reuse=True)
        assert len(backend.calls) == calls
        assert first["cells"]["hybrid"]["512"]["recall"] == second["cells"]["hybrid"]["512"]["recall"]
        report = json.loads((tmp_path / "report.json").read_text())
        # four of mini-2's questions have their evidence in its first two sessions; the limit keeps the first three
        assert [r["question"] for r in report["records"] if r["strategy"] == "hybrid"] == [
            "What song did Jules's band play at the wedding?",
            "Who did Ravi go climbing with?",
            "When did Jules's band play at the wedding?",
        ]
        meta = report["meta"]
        assert meta["session_memories"] == 2  # counted from the database, not from this run's jobs
    finally:
        await worker.close()


def test_answer_sample_spreads_over_the_questions() -> None:
    from memory.locomo.run import answer_sample

    assert answer_sample(10, None) == set(range(10)) and answer_sample(3, 5) == {0, 1, 2}
    assert answer_sample(100, 4) == {0, 25, 50, 75}  # reaches the adversarial questions LoCoMo lists last
    assert answer_sample(7, 0) == set()
