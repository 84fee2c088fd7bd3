"""Model choice in the config: every task must have a model, and every example in config.example.toml is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


def _load(tmp_path: Path, toml: str):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    return load_settings(path)


@pytest.mark.parametrize("profile", ["dialret", "dialogpt", "godel"])
def test_a_reply_only_profile_needs_a_memory_model(tmp_path: Path, profile: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.profile: profile '{profile}' writes replies only .*\[memory_model\]"):
        _load(tmp_path, f'[model]\nprofile = "{profile}"\n')
    settings = _load(tmp_path, f'[model]\nprofile = "{profile}"\n[memory_model]\nbackend = "embedded"\n')
    assert settings.memory_model is not None and settings.memory_model.profile == "chat"


def test_the_memory_model_must_be_able_to_write_memories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"memory_model\.profile: profile 'godel' .* \('chat', 'comedy'\)"):
        _load(tmp_path, '[model]\nprofile = "dialogpt"\n[memory_model]\nprofile = "godel"\n')


@pytest.mark.parametrize("profile", ["chat", "comedy"])
def test_profiles_that_write_memories_need_nothing_else(tmp_path: Path, profile: str) -> None:
    assert _load(tmp_path, f'[model]\nprofile = "{profile}"\n').memory_model is None


def _examples() -> dict[str, str]:
    text = (REPO / "config.example.toml").read_text()
    found: dict[str, str] = {}
    for match in re.finditer(r"^# example: (.+)\n((?:# [^\n]*\n)+)", text, re.M):
        found[match.group(1)] = "".join(line[2:] + "\n" for line in match.group(2).splitlines())
    return found


def test_every_model_example_in_the_example_config_loads(tmp_path: Path) -> None:
    examples = _examples()
    assert len(examples) == 6
    loaded = []
    for title, body in examples.items():
        settings = _load(tmp_path, body)
        loaded.append(settings)
        if settings.model.profile in ("dialret", "dialogpt", "godel"):
            assert settings.memory_model is not None, title
    assert {s.model.profile for s in loaded} == {"chat", "comedy", "dialret", "dialogpt", "godel"}
    assert any(s.model.backend == "openai" and s.model.base_url for s in loaded)
