"""Files that hold private conversations are readable by their owner only, whatever the umask.

A real `membot` process with umask 022 (the usual default, which makes new files world-readable) writes the
database through a scripted chat and an export to a file: the data folder it makes is 0700, the database and
its WAL files 0600, the export 0600.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _membot(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    def umask_022() -> None:
        os.umask(0o022)

    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(config), *args], input=stdin, capture_output=True,
        text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, preexec_fn=umask_022,
        check=False,
    )


def test_database_folder_files_and_exports_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data" / "membot"  # membot makes this folder
    config = tmp_path / "membot.toml"
    config.write_text(f'[storage]\npath = "{data / "db.sqlite3"}"\n[model]\nbackend = "fake"\n')
    chat = _membot(config, "chat", "--user", "alice", stdin="My cat is called Whiskers.\n")
    assert chat.returncode == 0, chat.stderr
    export = tmp_path / "alice.json"
    done = _membot(config, "memory", "export", "--platform", "console", "--user", "alice", "--out", str(export))
    assert done.returncode == 0, done.stderr
    assert _mode(data) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("db.sqlite3")]
    assert files and all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
    assert _mode(export) == 0o600 and "Whiskers" in export.read_text()


def test_an_existing_database_is_made_private_but_a_shared_folder_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "srv"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    db = shared / "db.sqlite3"
    conn = sqlite3.connect(db)  # an existing database, e.g. made by an older membot
    conn.execute("PRAGMA user_version = 0")
    conn.execute("VACUUM")
    conn.close()
    db.chmod(0o644)
    config = tmp_path / "membot.toml"
    config.write_text(f'[storage]\npath = "{db}"\n[model]\nbackend = "fake"\n')
    assert _membot(config, "chat", "--user", "bob", stdin="hello\n").returncode == 0
    assert _mode(db) == 0o600 and _mode(shared) == 0o755
