"""Prompt profiles by name; the config's `model.profile` picks one.

- `chat` (default): the model's chat template, English prompts, every task;
- `comedy`: COMEDY-7B / COMEDY-13B-DPO's Chinese templates, every task;
- `dialret`: DialRet-L1's multi-session frame, replies only;
- `dialogpt`: DialoGPT's EOS-joined turns, replies only;
- `godel`: GODEL's `Instruction … [CONTEXT] … [KNOWLEDGE] …` seq2seq input, replies only.

A reply-only profile needs a `[memory_model]` with a profile that can write memories (the config checks).
"""

from __future__ import annotations

from typing import Any

from models.profiles.base import Profile, Task, TokenizerInfo, bind_profile, can_write_memories
from models.profiles.chat import ChatProfile
from models.profiles.comedy import ComedyProfile
from models.profiles.dialogpt import DialoGPTProfile
from models.profiles.dialret import DialRetProfile
from models.profiles.godel import GodelProfile

_PROFILES: dict[str, type] = {
    "chat": ChatProfile,
    "comedy": ComedyProfile,
    "dialret": DialRetProfile,
    "dialogpt": DialoGPTProfile,
    "godel": GodelProfile,
}


def get_profile(name: str, backend: Any = None) -> Profile:
    """A fresh profile; with `backend`, bound to that model's tokenizer (exact token counts and EOS text)."""
    try:
        profile = _PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown prompt profile {name!r}; known: {', '.join(sorted(_PROFILES))}") from None
    return bind_profile(profile, backend) if backend is not None else profile


def known_profiles() -> list[str]:
    return sorted(_PROFILES)


def profile_tasks(name: str) -> frozenset[Task]:
    """The tasks a profile can do, without building a model."""
    return frozenset(get_profile(name).tasks)


def register_profile(name: str, cls: type) -> None:
    _PROFILES[name] = cls


__all__ = [
    "Profile",
    "Task",
    "TokenizerInfo",
    "bind_profile",
    "can_write_memories",
    "get_profile",
    "known_profiles",
    "profile_tasks",
    "register_profile",
]
