"""bench/processes.py's `--quick` mode: real `membot run` processes on SQLite and on 1, 2 and 4 PostgreSQL
replicas, one JSON object with every setup's replies and memory jobs. The figures are not checked (a shared
machine proves nothing about speed); the shape and the correctness fields are: every message answered once,
every session remembered once."""

from __future__ import annotations

import os

import pytest

from tests.bench.test_bench_scripts import run_quick
from tests.postgres_server import REQUIRED_ENV, binaries


def test_processes_quick() -> None:
    if binaries() is None:
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(f"{REQUIRED_ENV}=required but PostgreSQL's initdb and pg_ctl were not found")
        pytest.skip("PostgreSQL is not installed (no initdb): bench/processes.py needs it")
    result = run_quick("processes.py", timeout=900)
    assert result["benchmark"] == "processes"
    settings = result["settings"]
    people, messages, sessions = settings["people"], settings["messages_per_person"], settings["sessions"]
    setups = result["results"]
    assert set(setups) == {"sqlite_1", "postgresql_1", "postgresql_2", "postgresql_4"}
    for label, entry in setups.items():
        count = int(label.rsplit("_", 1)[1])
        assert entry["storage"] == label.split("_")[0] and entry["processes"] == count
        for phase in ("replies", "replies_unthrottled"):  # as shipped (PTB's rate limiter), and without it
            replies = entry[phase]
            assert replies["processes"] == count
            assert replies["replies"] == people * messages, (label, phase)  # every message answered
            assert replies["unanswered"] == 0 and replies["unexpected_or_duplicate_replies"] == 0, (label, phase)
            assert replies["user_messages_stored"] == people * messages, (label, phase)  # and stored once
            assert replies["replies_per_s"] > 0 and replies["latency_p95_s"] >= replies["latency_p50_s"] > 0
            assert replies["cpu_s"]["bot_processes"] >= 0 and replies["cpu_s"]["share_of_all_cores"] >= 0
            assert replies["process_log_errors"] == 0, replies["process_log_first_errors"]
            assert set(replies["exit_codes"]) == {0}, (label, phase)
        jobs = entry["jobs"]
        assert jobs["finished"] is True, label
        assert jobs["session_memory_jobs_done"] == jobs["session_memories"] == sessions, label
        assert jobs["sessions_remembered"] == sessions and jobs["duplicate_session_memories"] == 0, label
        assert jobs["compress_jobs_done"] > 0 and jobs["compressive_versions"] > 0 and jobs["jobs_failed"] == 0
        assert jobs["jobs_per_min"] > 0 and jobs["session_memories_per_min"] > 0
        assert len(jobs["per_process_session_memories"]) == count
        assert sum(jobs["per_process_session_memories"]) == sessions, label  # the logs agree with the database
        assert jobs["process_log_errors"] == 0, jobs["process_log_first_errors"]
        assert set(jobs["exit_codes"]) == {0}, label
    for phase in ("replies", "replies_unthrottled", "jobs"):
        for key in (f"postgresql_2_over_1_{phase}", f"postgresql_4_over_1_{phase}", f"postgresql_1_over_sqlite_1_{phase}"):
            assert result["ratios"][key] > 0, key
    assert result["correctness"] == {"duplicate_session_memories": 0, "unexpected_or_duplicate_replies": 0,
                                     "unanswered": 0, "all_jobs_finished": True}
    assert "cores" in result["limits"]
