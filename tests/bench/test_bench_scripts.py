"""Every benchmark's documented `--quick` mode runs and prints one JSON object with its baseline comparison.

The figures themselves are not checked (a shared CI machine proves nothing about speed); the shape is: the
run finished, stdout is exactly one JSON object, and the comparison the issue asks for is in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import REQUIRED_ENV, binaries

REPO = Path(__file__).resolve().parents[2]


def run_quick(script: str, *extra: str, timeout: int = 600) -> dict[str, Any]:
    env = dict(os.environ, TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *extra],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # exactly one object: extra output would make this fail
    assert isinstance(result, dict)
    assert result["quick"] is True
    machine = result["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] and machine["date_utc"]
    return result


def test_store_quick() -> None:
    result = run_quick("store.py")
    assert result["benchmark"] == "store"
    small, large = result["results"]["messages_2000"], result["results"]["messages_10000"]
    assert large["messages"] == 10_000 and large["db_bytes"] > small["db_bytes"] > 0
    assert large["insert_messages_per_s"] > 0
    assert large["heavy_user_fts"]["p95_ms"] > 0 and large["heavy_user_fts"]["mean_hits"] > 0
    baseline = large["baseline_unowned_fts"]
    assert baseline["heavy_user"]["p95_ms"] > 0 and large["heavy_user_p95_speedup_vs_baseline"] > 0
    assert 0.5 < baseline["typical_user"]["top42_overlap_with_owner_terms"] <= 1
    assert isinstance(result["target_met"], bool)


def test_store_quick_postgresql() -> None:
    if binaries() is None and os.environ.get(REQUIRED_ENV) != "required":
        pytest.skip("PostgreSQL is not installed (no initdb): the PostgreSQL store benchmark is skipped")
    result = run_quick("store.py", "--backend", "postgresql")
    assert result["benchmark"] == "store" and result["backend"] == "postgresql"
    assert result["server_settings"]["server_version"]
    small, large = result["results"]["messages_2000"], result["results"]["messages_10000"]
    assert small["messages"] == 2_000 and large["messages"] == 10_000
    assert large["db_bytes"] > small["db_bytes"] > 0 and large["terms_index_mib"] > 0
    assert large["insert_messages_per_s"] > 0 and large["build_messages_per_s"] > 0
    for label in ("heavy_user", "typical_user"):
        assert large[f"{label}_messages"] > 0
        found = large[f"{label}_fts"]
        assert found["queries"] == 20 and 0 < found["p50_ms"] <= found["p95_ms"] and found["mean_hits"] > 0
        baseline = large["baseline_plain_tsvector"][label]
        assert baseline["p95_ms"] > 0 and baseline["plan"]
        assert 0.5 < baseline["top42_overlap_with_keyed_terms"] <= 1  # the same stems, ranked alike
        assert large[f"{label}_p95_speedup_vs_baseline"] > 0
    assert large["baseline_plain_tsvector"]["index_mib_baseline"] > 0
    assert isinstance(result["target_met"], bool)


def test_forget_quick() -> None:
    result = run_quick("forget.py")
    assert result["benchmark"] == "forget" and result["messages"] == 20_000 and result["people"] == 100
    assert result["build"]["messages_per_s"] > 0 and result["build"]["reused"] is False
    forget = result["forget"]
    assert forget["two_messages"]["user_messages"] == 2 and forget["heavy"]["user_messages"] == 1000
    assert 2 < forget["typical"]["user_messages"] < 1000
    for entry in forget.values():
        assert entry["forget_s"] > 0 and entry["other_write_wait_s"] > 0
    assert result["baseline_rebuild_in_write_tx"]["rebuild_s"] > 0
    assert result["ratio_rebuild_over_forget_two_messages"] > 0 and result["sqlite_version"]
    assert isinstance(result["target_met"], bool)


@pytest.mark.slow
def test_decode_quick(embedded_cache: Path) -> None:
    result = run_quick("decode.py")
    batch = result["results"]["batch_1"]
    assert batch["generate_fp32"]["new_tokens_per_s"] > 0 and batch["lean_fp32"]["new_tokens_per_s"] > 0
    assert batch["lean_fp32_identical_rows"] == 1  # greedy identity with generate()
    assert result["results"]["batch_2"]["lean_fp32_identical_rows"] == 2
    assert "speedup_lean_int4_vs_generate" in batch
    if result["default_linear_layers_packed"]:  # a bfloat16 default here: packed and unpacked side by side
        assert batch["speedup_default_packed_vs_unpacked"] > 0
        assert batch["default_packed_identical_rows_to_unpacked"] == 1
    if "lean_default_all_threads" in batch:  # small steps' thread count measured: the same tokens
        assert batch["default_step_threads_identical_rows_to_all_threads"] == 1
        assert batch["speedup_default_step_threads_vs_all_threads"] > 0
    assert "llama_cpp" in result


@pytest.mark.slow
def test_transformers_cb_quick(embedded_cache: Path) -> None:
    result = run_quick("transformers_cb.py")
    assert result["new_tokens"] == {"transformers_generate_batch": 32, "own_continuous": 32}
    assert result["identical_rows"] == 4  # greedy: the same tokens either way
    assert result["ratio_transformers_to_own"] > 0


@pytest.mark.slow
def test_reply_latency_quick(embedded_cache: Path) -> None:
    result = run_quick("reply_latency.py")
    assert result["dispatcher_s_total"] > 0 and result["raw_backend_generate_s_total"] > 0
    assert result["overhead_ratio"] > 0 and result["all_same_text"] is True


@pytest.mark.slow
def test_load_quick(embedded_cache: Path) -> None:
    result = run_quick("load.py")
    users = result["results"]["users_2"]
    assert users["batching"]["replies"] == users["one_at_a_time"]["replies"] == 2
    assert users["batching"]["apologies"] == 0 and users["one_at_a_time"]["largest_batch"] == 1
    assert users["speedup_replies_per_s"] > 0


@pytest.mark.slow
def test_jobs_quick(embedded_cache: Path) -> None:
    result = run_quick("jobs.py")
    assert result["batched"]["session_memories_written"] == result["sequential"]["session_memories_written"] == 2
    assert result["sequential"]["largest_batch"] == 1 and result["speedup"] > 0
    probe = result["reply_during_jobs"]
    assert probe["session_memories_written"] == 2 and probe["reply_during_job_batch_s"] > 0


@pytest.mark.slow
def test_startup_quick(embedded_cache: Path) -> None:
    result = run_quick("startup.py", "--no-int4")
    assert result["cold"]["was_warm"] is False and result["warm"]["was_warm"] is True
    assert result["cold"]["reply_kind"] == result["warm"]["reply_kind"] == "reply"
    assert result["warm"]["peak_rss_mib"] > 0 and result["cold_over_warm"] > 0
    (only,) = result["by_message"]
    assert only["ready_s"]["cold"] > only["ready_s"]["warm"] > 0
    assert result["lowest_cold_over_warm"] == only["cold_over_warm"]


def test_personas_quick_on_the_fake_model(tmp_path: Path) -> None:
    """The memory-truth benchmark's replay and metric, on the fake model (the figures need the real one)."""
    config = tmp_path / "fake.toml"
    config.write_text('[model]\nbackend = "fake"\n')
    result = run_quick("personas.py", "--config", str(config), "--db", str(tmp_path / "db"))
    assert result["benchmark"] == "personas" and result["overall"]["people"] == 2
    overall = result["overall"]
    assert overall["precision"] == 1.0  # the fake model echoes; nothing it stores is invented
    assert overall["fact_recall"] >= 0.8  # the extractive backbone needs no model
    assert set(overall["answer_rate"]) == {"hybrid", "none"}
    alice = result["people"]["alice"]
    assert "Whiskers" in alice["compressive_memory"]["profile"]


def test_personas_metric_flags_invented_terms() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import personas
    finally:
        sys.path.remove(str(REPO / "bench"))
    own = {personas._norm(t) for t in personas._TOKEN.findall("My cat is called Whiskers and I ran a 10k.")}
    years = set(range(2016, 2028))
    ok = personas.unsupported_terms
    assert ok("Alice's cat is called Whiskers.", own, {"alice"}, years) == []
    assert ok("Alice ran a 10k yesterday (3 May 2026).", own, {"alice"}, years) == []
    assert ok("They're also very happy.", own, {"alice"}, years) == []
    assert ok("Alice has a Labrador named Max.", own, {"alice"}, years) == ["labrador", "max"]
    assert ok("Alice is 12 years old.", own, {"alice"}, years) == ["12"]
    assert ok("Alice ran on 3 May 1999.", own, {"alice"}, years) == ["3 May 1999"]


def test_gpu_decode_quick_runs_without_a_gpu() -> None:
    """The GPU benchmark's prepared script must work the first time on a lent GPU: its --quick mode runs the
    same code paths on CPU with a tiny model, and the CUDA-only variants say they were skipped."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_decode.py"), "--quick"], capture_output=True,
                          text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["quick"] is True and result["summary"]
    for variants in result["summary"].values():
        assert variants["generate"][2] == 1.0
        assert str(variants["hf_static_compiled"]).startswith("skipped")
    bot = result["bot_gpu_path"]  # the bot's engine on its GPU path, uncompiled on the CPU
    assert bot["status"] == "ok" and bot["decode"] == "static"
    assert bot["reply_during_job_ms"] and bot["job_new_tokens_per_s_best"] > 0


def test_int4_quick(embedded_cache: Path) -> None:
    """Own int4 against torchao's; torchao is an optional benchmark dependency (absent in CI: recorded)."""
    result = run_quick("int4.py")
    assert result["benchmark"] == "int4" and result["default_dtype"]
    for entry in result["results"].values():
        for name in ("baseline_generate", "own_int4"):
            assert entry[name]["prefill_s"] > 0 and entry[name]["decode_tokens_per_s"] > 0
        agreement = entry["agreement"]["own_int4"]["vs_" + result["agreement_reference"]]
        assert 0 <= agreement["leading_tokens_identical_fraction_mean"] <= 1
    assert result["weight_bytes"]["own_int4"]["bytes"] > 0
    if "error" not in result["torchao"]:
        assert "own_vs_torchao" in result["results"]["batch_1"] and isinstance(result["verdict"], dict)
