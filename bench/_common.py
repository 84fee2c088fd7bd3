"""Shared helpers for the benchmarks: machine description, JSON output, percentiles, realistic chat text.

Every benchmark prints exactly one JSON object on stdout (logs and progress go to stderr), and carries the
machine it ran on, the load before and after, and the date, so a figure can always be traced back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# As the bot does (models/transformers_backend.py), before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_MODEL_CACHE = REPO / ".cache" / "test-models" / "SmolLM2-135M-Instruct"
LOAD_AT_START = os.getloadavg()  # this module is imported first thing: the load before the benchmark ran


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Progress bars and library warnings go nowhere: stdout is for the one JSON object."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import warnings

    warnings.filterwarnings("ignore")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "f16c") if f in flags)
    except OSError:
        pass
    return []


def machine(threads: int | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_start": [round(x, 2) for x in LOAD_AT_START],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = threads or torch.get_num_threads()
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON object (with the load at the end of the run)."""
    result.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2, sort_keys=False))
    sys.stdout.flush()


def run_and_emit(run: Callable[[Any], Awaitable[dict[str, Any]]], args: Any) -> None:
    """A model benchmark's main: libraries quiet, the async run, the machine it ran on, one JSON object."""
    quiet_libraries()
    result = asyncio.run(run(args))
    result["machine"] = machine(args.threads)
    emit(result)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rounded(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def embedded_folder(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The de-quantized embedded model (made once; the tests share the same folder)."""
    from models.embedded import ensure_cached

    folder, _ = ensure_cached(Path(cache_dir) if cache_dir else DEFAULT_MODEL_CACHE)
    return folder


class KeepOpen:
    """Wraps a backend so that closing an App (which closes its backend) keeps the model for the next run."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def close(self) -> None:
        pass


# ---- realistic chat text -------------------------------------------------------------------------------

NAMES = ("Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Leo",
         "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yusuf")
RELATIVES = ("sister", "brother", "mother", "father", "cousin", "wife", "husband", "daughter", "son",
             "grandmother", "best friend", "neighbour", "boss", "roommate")
PLACES = ("Lyon", "Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi", "Krakow", "Austin", "Seville", "Oslo",
          "the mountains", "the lake", "the seaside", "my parents' village", "the old town", "the market")
HOBBIES = ("hiking", "painting", "baking bread", "playing chess", "running", "learning Spanish", "gardening",
           "playing the guitar", "climbing", "photography", "knitting", "cycling", "reading sci-fi", "yoga")
FOODS = ("pizza", "ramen", "tacos", "a lemon cake", "curry", "pancakes", "sushi", "lasagna", "falafel", "soup")
THINGS = ("my new job", "the exam", "the wedding", "our trip", "the concert", "my thesis", "the move",
          "the interview", "the marathon", "my birthday party", "the project at work", "the garden")
WHEN = ("yesterday", "last weekend", "on Monday", "this morning", "last summer", "two days ago", "tonight",
        "next Friday", "in March", "after work", "tomorrow", "last year")
FEELINGS = ("happy", "nervous", "tired", "excited", "a bit sad", "proud", "stressed", "relaxed", "curious")

USER_TEMPLATES = (
    "I went {hobby} with my {rel} {name} {when} near {place}.",
    "My {rel} {name} is visiting {when}, I think we will cook {food}.",
    "I'm feeling {feel} about {thing}. It is {when}.",
    "Do you remember what I told you about {thing}?",
    "{when} I tried {hobby} for the first time and it was great.",
    "I moved to {place} {when} and I still don't know many people.",
    "What should I cook for my {rel} tonight? Maybe {food}?",
    "I finally finished {thing}, I'm so {feel}!",
    "Can you remind me where my {rel} {name} lives? I think it was {place}.",
    "I've been {hobby} every day {when}, it helps me relax.",
    "My favourite food is {food}, but my {rel} hates it.",
    "{name} said {thing} was moved to {when}.",
    "Any tips for {hobby}? I want to get better before {thing}.",
    "We went to {place} {when} and ate {food} by the water.",
)
BOT_TEMPLATES = (
    "That sounds lovely! How did {name} like {place}?",
    "Oh nice, {food} is a great choice. Did you make it yourself?",
    "I'm sorry you're feeling {feel}. Do you want to talk about {thing}?",
    "Congratulations on {thing}! You must be {feel}.",
    "Yes, you mentioned {place} before. How is {hobby} going?",
    "That's a good plan. Tell me how it goes {when}!",
    "I remember you like {hobby}. Have you tried it in {place}?",
)
QUESTIONS = (
    "where does my {rel} live",
    "what did I cook for {name}",
    "when did I go {hobby}",
    "what did I say about {thing}",
    "do you remember my trip to {place}",
    "what is my favourite food",
    "how was I feeling about {thing}",
    "who did I meet in {place}",
)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        name=rng.choice(NAMES), rel=rng.choice(RELATIVES), place=rng.choice(PLACES), hobby=rng.choice(HOBBIES),
        food=rng.choice(FOODS), thing=rng.choice(THINGS), when=rng.choice(WHEN), feel=rng.choice(FEELINGS),
    )


def user_message(rng: random.Random) -> str:
    return _fill(rng.choice(USER_TEMPLATES), rng)


def bot_message(rng: random.Random) -> str:
    return _fill(rng.choice(BOT_TEMPLATES), rng)


def question(rng: random.Random) -> str:
    return _fill(rng.choice(QUESTIONS), rng) + "?"


def conversation(rng: random.Random, turns: int) -> Iterator[tuple[str, str]]:
    """Alternating (author, text) pairs, user first."""
    for i in range(turns):
        yield ("user", user_message(rng)) if i % 2 == 0 else ("bot", bot_message(rng))


# ---- building realistic state through the project's own code --------------------------------------------


def bench_settings(db_path: Path, **overrides: Any) -> Any:
    """Settings on the embedded model and a given database; `overrides` use dotted keys with '__' for '.'."""
    from bot.config import load_settings

    values: dict[str, Any] = {"storage.path": str(db_path), "model.backend": "embedded",
                              "model.cache_dir": str(DEFAULT_MODEL_CACHE), "logging.level": "WARNING"}
    values.update({key.replace("__", "."): value for key, value in overrides.items() if value is not None})
    return load_settings(None, overrides=values)


async def seed_history(
    sessions: Any, *, platform: str, user_id: str, name: str, past_sessions: int, turns: int,
    rng: random.Random, start: float, gap: float = 86_400.0,
) -> int:
    """Past, closed sessions for one person (stored through the SessionManager); returns the user's pk."""
    user_pk = 0
    when = start
    for _ in range(past_sessions):
        recorded = None
        for author, text in conversation(rng, turns):
            when += 60.0
            if author == "user":
                recorded = await sessions.record_user_message(
                    platform=platform, user_id=user_id, display_name=name, chat_id=f"dm-{user_id}",
                    chat_kind="dm", text=text, when=when,
                )
                user_pk = recorded.user_pk
            elif recorded is not None:
                await sessions.record_bot_message(recorded, text, when=when)
        if recorded is not None:
            await sessions.end_session(recorded.user_pk, recorded.chat_pk)
        when += gap
    return user_pk


async def add_compressive_memory(store: Any, user_pk: int, name: str, rng: random.Random, when: float) -> None:
    """One compressive-memory version, as the jobs would have written it (profile, relationship, events)."""
    profile = (f"{name} lives in {rng.choice(PLACES)} and enjoys {rng.choice(HOBBIES)} and "
               f"{rng.choice(HOBBIES)}. Their {rng.choice(RELATIVES)} is called {rng.choice(NAMES)}.")
    relationship = f"{name} talks openly with the bot about family, food and plans."
    events = "\n".join(f"- ({d} May 2023) {user_message(rng)}" for d in range(1, 7))
    async with store.write() as db:
        await db.execute(
            "INSERT INTO compressive_memories(user_id, scope, version, profile, relationship, events, "
            "source_sessions, model, created) VALUES (?, 'all', 1, ?, ?, ?, '[]', 'bench', ?)",
            (user_pk, profile, relationship, events, when),
        )
