"""/forget in `membot chat` on a really full disk answers, and the chat goes on (issue #14 item 8).

A real full disk, not `PRAGMA max_page_count` (tests/reliability/test_outages.py): that caps the database
file only, not its WAL, and never reproduced this. Here the database lives on a 4 MiB tmpfs, mounted in a
private user+mount namespace (`unshare -rm`) and filled to the last byte while the chat runs, so the delete
transaction's WAL cannot grow and SQLite fails with "database or disk is full" (see full_disk_driver.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_console_forget_on_a_full_disk_answers_and_the_chat_goes_on(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a private tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    run = subprocess.run(["unshare", "-rm", "--", sys.executable, "-m", "tests.reliability.full_disk_driver", str(disk)],
                         capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    if run.returncode and not run.stdout.strip() and run.stderr.startswith("unshare:"):
        pytest.skip(f"user and mount namespaces are not permitted here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["first_exit"] == 0, result["first_stderr"]
    assert result["free_bytes"] == 0  # the disk really was full when /forget came
    steps = result["steps"]
    assert all(s["alive"] for s in steps), (steps, result["exit"], result["stderr"])
    assert [s["send"] for s in steps] == ["/memory", "/forget", "yes", "/memory", "/forget", "yes"], steps
    failed = steps[2]["answer"]
    assert "nothing was deleted" in failed and "disk is full" in failed, steps
    assert "waiting to be remembered" in steps[3]["answer"]  # reads still work, and the data is all there
    assert "deleted everything" in steps[5]["answer"]  # once there is room again, /forget works
    assert result["exit"] == 0 and "Traceback" not in result["stderr"], result["stderr"]
