"""A damaged or emptied database stops membot at start with one clear line, never a silent reset; `membot db
check` finds the damage and `membot db backup` makes a consistent private copy. Real processes throughout."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _membot(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120, check=False)


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "db.sqlite3"
    config = tmp_path / "membot.toml"
    config.write_text(f'[storage]\npath = "{db}"\n[model]\nbackend = "fake"\n', encoding="utf-8")
    lines = "".join(f"My cat is called Whiskers and this is message {i} " + "with words " * 40 + "\n"
                    for i in range(60))
    assert _membot(config, "chat", "--user", "alice", stdin=lines).returncode == 0
    return config, db


def test_damaged_pages_stop_membot_at_start_with_one_line(tmp_path: Path) -> None:
    config, db = _setup(tmp_path)
    assert _membot(config, "db", "check").returncode == 0
    data = bytearray(db.read_bytes())
    assert len(data) > 8 * 4096
    data[5 * 4096 : 7 * 4096] = os.urandom(2 * 4096)  # two pages in the middle turn to noise
    db.write_bytes(bytes(data))
    for command in (["jobs", "run"], ["chat", "--user", "alice"]):
        result = _membot(config, *command, stdin="hello\n")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, result.stderr
        assert lines and lines[-1].startswith(f"membot: database {db} is damaged: ")
        assert lines[-1].endswith("restore a backup or run `membot db check`")
        assert "Traceback" not in result.stderr and result.stdout == ""
    check = _membot(config, "db", "check")
    assert check.returncode == 1 and "is damaged" in check.stderr and check.stdout.strip()


def test_a_zero_byte_file_is_refused_not_taken_for_a_new_database(tmp_path: Path) -> None:
    config, db = _setup(tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"")  # e.g. a failed copy
    result = _membot(config, "jobs", "run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"membot: database {db} is empty (0 bytes)")
    assert db.stat().st_size == 0  # left as it was, for the operator to restore


def test_backup_is_consistent_and_private(tmp_path: Path) -> None:
    config, db = _setup(tmp_path)
    out = tmp_path / "backup.sqlite3"
    result = _membot(config, "db", "backup", str(out))
    assert result.returncode == 0 and "Backed up" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with sqlite3.connect(out) as copy, sqlite3.connect(db) as original:
        count = "SELECT COUNT(*) FROM messages"
        assert copy.execute(count).fetchone() == original.execute(count).fetchone() == (120,)
    again = _membot(config, "db", "backup", str(out))
    assert again.returncode == 1 and "exists already" in again.stderr  # never overwrites
