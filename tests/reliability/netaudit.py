"""Run `membot` with a record of every network connection it attempts (the no-telemetry proof).

    python -m tests.reliability.netaudit --log FILE -- --config membot.toml run

A Python audit hook (PEP 578) sees every `socket.connect` and `socket.getaddrinfo` the process makes, from
any library, before it happens; each is appended to FILE as one JSON line. The rest of the command line
goes to `membot` unchanged, so the process under test is the real bot. `destinations(FILE)` reads the log
back (a SIGKILL may leave a torn last line, which is skipped).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _install(log_path: str) -> None:
    log = open(log_path, "a", buffering=1, encoding="utf-8")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and len(address) >= 2:
                log.write(json.dumps({"event": "connect", "host": str(address[0]), "port": int(address[1])}) + "\n")
            else:  # AF_UNIX and friends: local by definition
                log.write(json.dumps({"event": "connect", "host": "unix", "port": 0}) + "\n")
        elif event == "socket.getaddrinfo":
            log.write(json.dumps({"event": "resolve", "host": str(args[0]), "port": str(args[1])}) + "\n")

    sys.addaudithook(hook)


def destinations(log_path: Path) -> list[dict[str, Any]]:
    out = []
    if not log_path.exists():
        return out
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "unix"})


def foreign(log_path: Path) -> list[dict[str, Any]]:
    """Every recorded connection or lookup that leaves the machine (should be none in the tests)."""
    return [d for d in destinations(log_path) if d["host"] not in LOCAL_HOSTS]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--log" or "--" not in argv:
        print("usage: python -m tests.reliability.netaudit --log FILE -- MEMBOT-ARGS...", file=sys.stderr)
        return 2
    _install(argv[1])
    rest = argv[argv.index("--") + 1 :]
    from bot.cli import main as membot

    return membot(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
