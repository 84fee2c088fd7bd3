"""Prompt profiles by name; the config's `model.profile` picks one."""

from __future__ import annotations

from models.profiles.base import Profile, Task
from models.profiles.chat import ChatProfile

_PROFILES: dict[str, type] = {"chat": ChatProfile}


def get_profile(name: str) -> Profile:
    try:
        return _PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown prompt profile {name!r}; known: {', '.join(sorted(_PROFILES))}") from None


def register_profile(name: str, cls: type) -> None:
    _PROFILES[name] = cls


__all__ = ["Profile", "Task", "get_profile", "register_profile"]
