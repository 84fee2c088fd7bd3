"""Configuration: defaults with no file, durations, and one clear message naming a bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, parse_duration


def test_defaults_need_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEMBOT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = load_settings(None)
    assert s.model.backend == "embedded" and s.memory.strategy == "hybrid"
    assert s.sessions.inactivity_timeout == 1800
    assert s.storage.resolved_path() == tmp_path / "membot" / "membot.sqlite3"


@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), ("45s", 45.0), ("30m", 1800.0), ("2h", 7200.0), (1.5, 1.5)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[sessions]\ninactivity_timeout = "soon"\n', "sessions.inactivity_timeout"),
        ("[jobs]\nbatch_size = 0\n", "jobs.batch_size"),
        ('[model]\nbackend = "magic"\n', "model.backend"),
        ("[bot]\nnmae = 'x'\n", "bot.nmae: unknown setting"),
        ('[jobs]\ncron = "every day"\n', "jobs.cron"),
        ("[bot\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_settings(path)


def test_missing_file_and_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    path = tmp_path / "c.toml"
    path.write_text('[bot]\nname = "Ada"\n')
    monkeypatch.setenv("MEMBOT_CONFIG", str(path))
    assert load_settings(None).bot.name == "Ada"


def test_example_config_is_valid_and_documents_every_setting() -> None:
    repo = Path(__file__).resolve().parents[2]
    example = repo / "config.example.toml"
    settings = load_settings(example)
    text = example.read_text()
    for section, model in settings:
        if model is None:
            continue
        for key in type(model).model_fields:
            assert f"{key} =" in text or f"# {key} =" in text, f"{section}.{key} is not documented"
