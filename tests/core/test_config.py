"""Configuration: defaults with no file, durations, and one clear message naming a bad key."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from bot.config import ConfigError, ModelSettings, Settings, load_settings, parse_duration


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


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[sessions]\ninactivty_timeout = 5\n', "sessions.inactivty_timeout: unknown setting; did you mean inactivity_timeout?"),
        ('[modle]\nbackend = "fake"\n', "modle: unknown setting; did you mean model?"),
        ('[memory_model]\nprofle = "chat"\n', "memory_model.profle: unknown setting; did you mean profile?"),
        ('[model]\nstrategy = "recent"\n', "model.strategy: unknown setting; did you mean memory.strategy?"),
        ('[model]\nbackend = "transformers"\n', 'model.name: required with backend = "transformers"'),
        ('[memory_model]\nbackend = "transformers"\n', 'memory_model.name: required with backend = "transformers"'),
        ('[telegram]\nmode = "webhook"\n', 'telegram.webhook_url: required when telegram.mode = "webhook"'),
    ],
)
def test_mistakes_a_newcomer_makes_are_named_at_load(tmp_path: Path, toml: str, expected: str) -> None:
    """Caught when the file is read (before any model loads), with the fix where one can be guessed."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: {expected}")


EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
_HEADER = re.compile(r"^(?:# )?\[([a-z_]+)\]\s*$")
_KEY = re.compile(r"^(?:# )?([a-z_]+) = ")
_ONE_OF = re.compile(r"^# one of: (.+)$")


def _documented_closed_sets() -> dict[tuple[str, str], set[str]]:
    """(section, key) -> the values a "# one of: ..." comment lists for the key line that follows it."""
    found: dict[tuple[str, str], set[str]] = {}
    section, pending = "", None
    for line in EXAMPLE.read_text().splitlines():
        if header := _HEADER.match(line):
            section = header.group(1)
        elif one_of := _ONE_OF.match(line):
            pending = {value.strip().strip('"') for value in one_of.group(1).split(",")}
        elif pending is not None and (key := _KEY.match(line)):
            found[(section, key.group(1))] = pending
            pending = None
    return found


def _literal_fields() -> dict[tuple[str, str], set[str]]:
    """(section, key) -> the Literal's values, for every closed set in Settings ([memory_model] is documented
    as taking [model]'s keys, so it is not listed twice)."""
    out: dict[tuple[str, str], set[str]] = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if section == "memory_model" or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for key, inner in model.model_fields.items():
            if typing.get_origin(inner.annotation) is Literal:
                out[(section, key)] = set(typing.get_args(inner.annotation))
    return out


def test_example_config_lists_each_closed_set_as_the_code_accepts_it() -> None:
    literals = _literal_fields()
    assert ("model", "dtype") in literals and ("telegram", "mode") in literals
    assert _documented_closed_sets() == literals


def _example_blocks() -> dict[str, list[int]]:
    """Title -> line numbers of each "# example:" block in config.example.toml (up to its closing "#")."""
    lines = EXAMPLE.read_text().splitlines()
    blocks: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        if line.startswith("# example: "):
            end = next(j for j in range(i + 1, len(lines)) if not lines[j].startswith("# "))
            blocks[line.removeprefix("# example: ")] = list(range(i + 1, end))
    return blocks


def _uncomment(rows: list[int]) -> str:
    lines = EXAMPLE.read_text().splitlines()
    for row in rows:
        lines[row] = lines[row].removeprefix("# ")
    return "\n".join(lines) + "\n"


def test_uncommenting_one_model_example_in_place_gives_a_valid_config(tmp_path: Path) -> None:
    """Each example declares [model] (and [memory_model] when needed) once in the whole file, so uncommenting
    it where it stands, as a newcomer does, loads; no second [model] table, no duplicated key."""
    blocks = _example_blocks()
    assert len(blocks) == 6
    for title, rows in blocks.items():
        path = tmp_path / "c.toml"
        path.write_text(_uncomment(rows))
        settings = load_settings(path)
        assert settings.model.backend in ("transformers", "openai") and settings.model.name, title


def test_uncommenting_model_defaults_in_place_gives_the_defaults(tmp_path: Path) -> None:
    """The commented [model] block shows the real defaults: uncommenting its header and key lines changes
    nothing but the keys whose line is only an example of a value (they default to None)."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [model]")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
    rows = [i for i in range(start, end) if _HEADER.match(lines[i]) or _KEY.match(lines[i])]
    path = tmp_path / "c.toml"
    path.write_text(_uncomment(rows))
    model = load_settings(path).model
    defaults = ModelSettings()
    for key, value in defaults:
        if value is not None:
            assert getattr(model, key) == value, key


def test_int4_says_beside_the_option_that_its_output_depends_on_the_batch() -> None:
    """int4's greedy output changes with its batch neighbours; a user choosing it is told where they choose."""
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text[: text.index('# quantize = "none"')].rsplit("\n\n", 1)[-1]
    assert "not batch-invariant" in block and "int4" in block


def test_the_database_password_is_redacted_from_logs_once_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever reads it (the app, `membot db migrate/copy`), the password from storage.password_env never
    reaches a log line: asyncpg's errors can quote the connection's parameters."""
    import logging

    monkeypatch.setenv("MEMBOT_TEST_DB_PASSWORD", "pw-REDACT-zq91x")
    settings = load_settings(None, overrides={"storage.url": "postgresql://membot@db.invalid/membot",
                                              "storage.password_env": "MEMBOT_TEST_DB_PASSWORD"})
    assert settings.storage.password() == "pw-REDACT-zq91x"
    with caplog.at_level(logging.INFO):
        logging.getLogger("asyncpg").info("connect failed: password=%s", "pw-REDACT-zq91x")
    assert "pw-REDACT-zq91x" not in caplog.text and "[redacted]" in caplog.text
