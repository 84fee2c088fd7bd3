"""Configuration: one TOML file, validated up front so a typo stops start-up with the key's name.

Secrets never live in the file: it names the environment variables that hold them.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_dir
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Accept 90, 1.5, "45s", "30m", "2h": people write durations both ways."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, \"45s\", \"30m\" or \"2h\"")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30, \"45s\", \"30m\" or \"2h\", got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BotSettings(Section):
    name: str = "Membot"
    persona: str = (
        "You are {name}, a warm and curious friend who chats with people and remembers them. "
        "Answer briefly and naturally, and use what you remember about the person when it helps."
    )
    max_message_chars: int = Field(4000, ge=1, le=100_000)


class SessionSettings(Section):
    inactivity_timeout: Duration = 1800.0
    sweep_interval: Duration = 30.0


class JobSettings(Section):
    interval: Duration = 300.0
    cron: str | None = None
    batch_size: int = Field(32, ge=1, le=256)
    max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff: Duration = 60.0


class ModelSettings(Section):
    backend: Literal["embedded", "transformers", "openai", "fake"] = "embedded"
    name: str | None = None
    gguf_file: str | None = None
    profile: Literal["chat", "comedy", "dialret", "dialogpt", "godel"] = "chat"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_new_tokens: int = Field(160, ge=1, le=4096)
    memory_max_new_tokens: int = Field(200, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0)
    max_batch: int = Field(16, ge=1, le=512)
    batch_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    cache_dir: Path | None = None
    threads: int | None = Field(None, ge=1)
    quantize: Literal["none", "int4"] = "none"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: Duration = 120.0
    concurrency: int = Field(8, ge=1, le=1024)


class MemorySettings(Section):
    strategy: Literal["none", "recent", "sessions", "compressive", "hybrid"] = "hybrid"
    reply_context_tokens: int = Field(1024, ge=64, le=131_072)
    retrieval_k: int = Field(8, ge=0, le=200)
    private_in_groups: bool = False
    retention_days: int | None = Field(None, ge=1)


class StorageSettings(Section):
    """SQLite at `path` (the default: a file in the user's data directory), or PostgreSQL at `url` for several
    processes or machines (docs/deployment.md). The URL carries no password: `password_env` names the
    environment variable that holds it, so the config file can be shared and the URL logged."""

    path: Path | None = None
    url: str | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _check_url(self) -> StorageSettings:
        if self.url is None:
            return self
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise PydanticCustomError("storage_url", "storage.url: only postgresql://... URLs are supported "
                                      "(SQLite is storage.path)")
        if parts.password:
            raise PydanticCustomError(
                "storage_password",
                "storage.url: take the password out of the URL; put it in an environment variable and name "
                "that variable in storage.password_env",
            )
        if self.path is not None:
            raise PydanticCustomError("storage_both", "storage: set path (SQLite) or url (PostgreSQL), not both")
        return self

    def target(self) -> str | Path:
        """What `Store.open` takes: the PostgreSQL URL, or the SQLite file."""
        return self.url if self.url else self.resolved_path()

    def password(self) -> str | None:
        """The database password from `password_env`; once read it is redacted from every log line."""
        from bot.text import redact_in_logs

        if not self.password_env:
            return None
        password = os.environ.get(self.password_env) or None
        redact_in_logs(password)
        return password

    def resolved_path(self) -> Path:
        """Default to the user's data directory (XDG_DATA_HOME honoured) so no config is needed."""
        if self.path is not None:
            return self.path.expanduser()
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) / "membot" if xdg else Path(user_data_dir("membot", appauthor=False))
        return base / "membot.sqlite3"


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"


class TelegramSettings(Section):
    token_env: str = "TELEGRAM_BOT_TOKEN"
    base_url: str | None = None
    base_file_url: str | None = None
    admin_ids: list[int] = Field(default_factory=list)
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str | None = None
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = Field(8443, ge=1, le=65535)
    webhook_secret_env: str | None = None
    streaming: bool = False
    poll_timeout: int = Field(30, ge=0, le=60)

    def webhook_problem(self) -> str | None:
        """What webhook mode lacks, as the one line to show, or None. Checked when the file is read and again
        by the adapter, for settings that code builds without reading a file."""
        if self.mode != "webhook":
            return None
        if not self.webhook_url:
            return 'telegram.webhook_url: required when telegram.mode = "webhook" (the public HTTPS URL Telegram calls)'
        if not self.webhook_secret_env:
            # Without a secret anyone who reaches the port can post updates "from" any user.
            return ('telegram.webhook_secret_env: required when telegram.mode = "webhook" (the name of a variable '
                    "holding a random secret, so that only Telegram can post updates)")
        return None


class DiscordSettings(Section):
    token_env: str = "DISCORD_BOT_TOKEN"
    guild_ids: list[int] = Field(default_factory=list)
    owner_ids: list[int] = Field(default_factory=list)
    message_content_intent: bool = False
    streaming: bool = False
    api_base_url: str | None = None
    gateway_url: str | None = None
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_shards(self) -> DiscordSettings:
        """Discord splits a bot's servers into `shard_count` gateway connections; `shard_ids` are the ones this
        process opens (the others run in other processes). Checked here so a typo stops start-up with one line
        instead of a connection Discord closes."""
        if not self.shard_ids:
            return self
        if self.shard_count is None:
            raise PydanticCustomError("shard_ids", "discord.shard_ids: set discord.shard_count too (the total "
                                      "number of shards across every process)")
        wrong = sorted({i for i in self.shard_ids if not 0 <= i < self.shard_count})
        if wrong or len(set(self.shard_ids)) != len(self.shard_ids):
            raise PydanticCustomError(
                "shard_ids", "discord.shard_ids: each id once, from 0 to shard_count - 1 = {last}",
                {"last": self.shard_count - 1})
        return self

    @property
    def serves_every_shard(self) -> bool:
        return not self.shard_ids or len(self.shard_ids) == self.shard_count


class Settings(Section):
    bot: BotSettings = Field(default_factory=BotSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    memory_model: ModelSettings | None = None
    memory: MemorySettings = Field(default_factory=MemorySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)

    @model_validator(mode="after")
    def _check_cron(self) -> Settings:
        if self.jobs.cron:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.jobs.cron)
            except ValueError as exc:
                raise ValueError(f"jobs.cron: {exc}") from None
        return self

    @model_validator(mode="after")
    def _check_model_names(self) -> Settings:
        """A transformers model needs `name`; checked here so start-up stops before the database is opened or
        another model is loaded, instead of failing at run time (exit 1) after seconds of loading."""
        for key, model in (("model", self.model), ("memory_model", self.memory_model)):
            if model is not None and model.backend == "transformers" and not model.name:
                raise PydanticCustomError(
                    "missing_name",
                    f'{key}.name: required with backend = "transformers" (a Hugging Face id or a local folder)',
                )
        return self

    @model_validator(mode="after")
    def _check_telegram_webhook(self, info: ValidationInfo) -> Settings:
        """Webhook mode cannot start without its public URL and secret; checked when the file is read, so
        `membot run` stops at once rather than after the model has loaded. Skipped when code assigns a section
        later (`info.field_name` set): the Telegram adapter repeats the check for settings built that way."""
        problem = self.telegram.webhook_problem() if info.field_name is None else None
        if problem:
            raise PydanticCustomError("webhook", problem)
        return self

    @model_validator(mode="after")
    def _check_shards_share_storage(self) -> Settings:
        """Shards served by other processes need the memory those processes share: one PostgreSQL database. On
        SQLite a second `membot run` is refused, so this process would silently ignore the other shards'
        servers."""
        if not self.discord.serves_every_shard and self.storage.url is None:
            raise PydanticCustomError(
                "shard_ids", "discord.shard_ids: the other shards run in other processes, which must share one "
                "PostgreSQL database (storage.url); on SQLite leave shard_ids empty and one process serves "
                "every shard")
        return self

    @model_validator(mode="after")
    def _check_every_task_has_a_model(self) -> Settings:
        """Replies need a profile that can reply; the memory jobs need one that writes memories (task 1 and 2):
        the reply model's, or the [memory_model]'s when there is one."""
        from models.profiles import Task, known_profiles, profile_tasks

        writers = [n for n in known_profiles() if {Task.SESSION_MEMORY, Task.COMPRESS} <= profile_tasks(n)]
        if Task.REPLY not in profile_tasks(self.model.profile):
            raise PydanticCustomError(
                "profile_tasks", f"model.profile: profile {self.model.profile!r} cannot write replies"
            )
        memory = self.memory_model or self.model
        key = "memory_model.profile" if self.memory_model else "model.profile"
        if not {Task.SESSION_MEMORY, Task.COMPRESS} <= profile_tasks(memory.profile):
            hint = (
                f"use a profile that can ({', '.join(repr(n) for n in writers)})" if self.memory_model else
                'add a [memory_model] section for the memory jobs, e.g. backend = "embedded" with profile = "chat"'
            )
            raise PydanticCustomError(
                "profile_tasks", f"{key}: profile {memory.profile!r} writes replies only and cannot write memories; {hint}"
            )
        return self


class ConfigError(Exception):
    """Raised with one human sentence naming the bad key; the CLI prints it and exits 2."""


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The Section class behind a field's annotation (`ModelSettings | None` included), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _suggest(loc: tuple[int | str, ...]) -> str:
    """'; did you mean X?' for an unknown key: a close spelling among the keys valid at that place, or the
    same key in another section (e.g. `strategy` written under [model] instead of [memory])."""
    *parents, unknown = (str(part) for part in loc)
    model: type[BaseModel] | None = Settings
    for part in parents:
        field = model.model_fields.get(part) if model else None
        model = _section_model(field.annotation) if field else None
    if model is None:
        return ""
    close = difflib.get_close_matches(unknown, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    if parents:
        for section, field in Settings.model_fields.items():
            other = _section_model(field.annotation)
            if other is not None and other is not model and unknown in other.model_fields:
                return f"; did you mean {section}.{unknown}?"
    return ""


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not key:  # whole-file checks already name their key in the message
        return message
    if first["type"] == "extra_forbidden":
        message = "unknown setting" + _suggest(tuple(first["loc"]))
    return f"{key}: {message}"


def load_settings(path: str | os.PathLike[str] | None = None, *, overrides: dict[str, Any] | None = None) -> Settings:
    """Read the file named by the argument or MEMBOT_CONFIG; no file at all means all defaults."""
    source = path or os.environ.get("MEMBOT_CONFIG")
    data: dict[str, Any] = {}
    if source:
        file = Path(source).expanduser()
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{_describe(exc)}") from None
