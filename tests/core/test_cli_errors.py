"""What a newcomer's mistakes cost: exit 2 and one line naming the key or option, before any model or database.

Each case runs the real `python -m bot.cli` as a subprocess. "Before the model or the database" is checked by
what is left on disk: the configured SQLite file and the embedded model's cache folder (written on its first
load) must not exist afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.cli import _parser

REPO = Path(__file__).resolve().parents[2]


def membot(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for name in ("MEMBOT_CONFIG", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        if name not in (env or {}):
            environ.pop(name, None)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], input="", capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=REPO)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The README promises one line on stderr for a usage or configuration error: return it."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _write(tmp_path: Path, body: str) -> tuple[Path, Path, Path]:
    """A config whose database and embedded-model cache live in tmp_path, so their absence proves nothing
    was opened or loaded. Returns (config, database, model cache)."""
    db, cache = tmp_path / "db.sqlite3", tmp_path / "model-cache"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'{body}\n[storage]\npath = "{db}"\n[logging]\nlevel = "WARNING"\n')
    return cfg, db, cache


@pytest.mark.parametrize("section", ["model", "memory_model"])
def test_transformers_without_a_name_is_a_configuration_error(tmp_path: Path, section: str) -> None:
    body = ('[model]\nbackend = "transformers"\n' if section == "model"
            else '[model]\nbackend = "fake"\n[memory_model]\nbackend = "transformers"\n')
    cfg, db, _ = _write(tmp_path, body)
    result = membot("--config", str(cfg), "chat")
    assert result.returncode == 2
    assert one_line(result).startswith(f"membot: configuration error: {cfg}: {section}.name: required")
    assert not db.exists()


@pytest.mark.parametrize(("telegram", "key"), [
    ('mode = "webhook"\n', "telegram.webhook_url"),
    # Without a secret anyone who reaches the port could post updates "from" any user.
    ('mode = "webhook"\nwebhook_url = "https://bot.example.invalid/h"\n', "telegram.webhook_secret_env"),
])
def test_webhook_mode_without_url_or_secret_stops_before_the_model_loads(tmp_path: Path, telegram: str,
                                                                         key: str) -> None:
    cfg, db, cache = _write(tmp_path, f'[model]\nbackend = "embedded"\ncache_dir = "{tmp_path / "model-cache"}"\n'
                                      f"[telegram]\n{telegram}")
    result = membot("run", "--config", str(cfg), env={"TELEGRAM_BOT_TOKEN": "123:not-a-real-token"})
    assert result.returncode == 2
    assert one_line(result).startswith(f"membot: configuration error: {cfg}: {key}: required")
    assert not cache.exists() and not db.exists()


def test_misspelled_key_suggests_the_right_one(tmp_path: Path) -> None:
    cfg, db, _ = _write(tmp_path, '[model]\nbackend = "fake"\n[sessions]\ninactivty_timeout = "5m"\n')
    result = membot("chat", "--config", str(cfg))
    assert result.returncode == 2
    assert one_line(result) == (f"membot: configuration error: {cfg}: sessions.inactivty_timeout: unknown setting; "
                                "did you mean inactivity_timeout?")
    assert not db.exists()


@pytest.mark.parametrize("action", ["show", "export", "forget"])
def test_unknown_platform_is_a_usage_error(tmp_path: Path, action: str) -> None:
    cfg, db, _ = _write(tmp_path, '[model]\nbackend = "fake"\n')
    result = membot("memory", action, "--platform", "irc", "--user", "alice", "--config", str(cfg))
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"membot memory {action}: error: argument --platform: invalid choice: 'irc'")
    assert all(name in line for name in ("console", "telegram", "discord"))
    assert not db.exists()


def test_locomo_with_a_missing_data_file_stops_before_the_model_loads(tmp_path: Path) -> None:
    cfg, _, cache = _write(tmp_path, f'[model]\nbackend = "embedded"\ncache_dir = "{tmp_path / "model-cache"}"\n')
    missing, out = tmp_path / "missing.json", tmp_path / "out"
    result = membot("eval", "locomo", "--config", str(cfg), "--data", str(missing), "--out", str(out))
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("membot eval locomo: error: argument --data:") and str(missing) in line
    assert not cache.exists() and not out.exists()


def test_usage_errors_are_one_line() -> None:
    for args in (("bogus",), ("memory", "show"), ()):
        result = membot(*args)
        assert result.returncode == 2
        assert one_line(result).startswith("membot")


def test_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = membot("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"membot {project['version']}\n"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command tree: membot, membot chat, membot memory, membot memory show, ..."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


COMMANDS = dict(_commands(_parser())[1:])  # the subcommands; `membot --help` itself always had --config


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("membot", *p)))
def test_every_command_takes_config_and_explains_every_option(path: tuple[str, ...]) -> None:
    parser = COMMANDS[path]
    help_text = parser.format_help()
    assert "--config" in help_text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{' '.join(path)} {action.option_strings}: no help"


def test_config_after_the_command_is_used(tmp_path: Path) -> None:
    """`membot memory --config F show ...` and `membot jobs run --config F` read F (the bad key proves it)."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[jobs]\nbatch_size = 0\n")
    for args in (("memory", "--config", str(bad), "show", "--platform", "console", "--user", "a"),
                 ("jobs", "run", "--config", str(bad)),
                 ("--config", str(tmp_path / "other.toml"), "chat", "--config", str(bad))):
        result = membot(*args)
        assert result.returncode == 2
        assert one_line(result).startswith(f"membot: configuration error: {bad}: jobs.batch_size:"), args
