"""`membot chat` on a really full disk: /forget then answers, and the chat goes on (issue #14 item 8).

    unshare -rm -- python -m tests.reliability.full_disk_driver DIR

Run inside a private mount namespace (`unshare -rm`): mounts a 4 MiB tmpfs on DIR, keeps a conversation
there, then drives a second `membot chat` through /memory, a disk filled to the last byte, /forget + yes,
/memory, the disk freed, /forget + yes and /quit. Prints one JSON object: each step's answer and whether the
chat was still running, the exit code and stderr; or {"skip": why} when the tmpfs cannot be mounted.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STORY = " ".join(f"harbour{i} boat{i} sail{i}" for i in range(120))  # long messages: their deletion needs many pages


def _fill(path: Path) -> int:
    """Write `path` until the disk has not one byte left; returns its size."""
    size, chunk = 0, 1 << 20
    with open(path, "wb", buffering=0) as f:
        while chunk:
            try:
                size += f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    return size


class Chat:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=REPO)
        self.out = b""

    def ask(self, line: str, until: str, timeout: float = 30) -> dict[str, object]:
        """Send `line`; the answer is what comes until a full line holding `until` (or the end of output)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        start = len(self.out)
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out[start:].decode(errors="replace")
            if until in text and text.endswith("\n"):
                break
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # the chat ended
                self.out += chunk
        time.sleep(0.1)  # a chat that is about to die has time to do so
        return {"send": line, "answer": self.out[start:].decode(errors="replace"), "alive": self.proc.poll() is None}


def main() -> None:
    disk = Path(sys.argv[1])
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        print(json.dumps({"skip": f"cannot mount a tmpfs: {mounted.stderr.strip()}"}))
        return
    config = disk / "membot.toml"
    config.write_text(f'[model]\nbackend = "fake"\n[storage]\npath = "{disk / "db.sqlite3"}"\n'
                      '[logging]\nlevel = "WARNING"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MEMBOT_CONFIG", None)
    argv = [sys.executable, "-m", "bot.cli", "--config", str(config), "chat", "--user", "alice"]
    first = subprocess.run(argv, input="".join(f"I live in Lyon. {i} {STORY}\n" for i in range(4)) + "/quit\n",
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    result: dict[str, object] = {"first_exit": first.returncode, "first_stderr": first.stderr, "steps": []}
    steps: list[dict[str, object]] = result["steps"]  # type: ignore[assignment]
    chat, filler = Chat(argv, env), disk / "filler"
    plan = [(None, "/memory", "memory of you"), ("fill", "/forget", "Type 'yes'"), (None, "yes", "later"),
            (None, "/memory", "memory of you"), ("free", "/forget", "Type 'yes'"), (None, "yes", "deleted")]
    for before, line, until in plan:
        if before == "fill":  # the database is open: now the disk fills up to the last byte
            result["filler_bytes"] = _fill(filler)
            result["free_bytes"] = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        elif before == "free":
            filler.unlink()
        steps.append(chat.ask(line, until))
        if not steps[-1]["alive"]:
            break
    try:
        _, err = chat.proc.communicate(b"/quit\n", timeout=60)
    except (BrokenPipeError, ValueError):
        err = chat.proc.stderr.read() if chat.proc.stderr else b""
        chat.proc.wait(timeout=60)
    result.update(exit=chat.proc.returncode, stderr=err.decode(errors="replace"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
