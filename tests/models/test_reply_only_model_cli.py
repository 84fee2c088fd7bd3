"""`membot chat` with a reply-only model: a tiny local GPT-2 folder driven by the `dialogpt` profile writes the
replies, and the embedded model (the `[memory_model]`) writes the memory when `membot jobs run` runs.

The same loading code as a real DialoGPT checkpoint (TransformersBackend.load on a folder); only the weights
are random, so the replies are gibberish, which is fine: the test is about the wiring.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from models.embedded import MODEL_NAME
from tests.tiny_models import build_tiny_gpt2

REPO = Path(__file__).resolve().parents[2]
FACTS = [
    "Hi! My name is Alice and I work as a nurse at the city hospital in Lyon.",
    "I have a cat called Pixel and I play the violin in an orchestra.",
]


@pytest.mark.slow
def test_dialogpt_replies_and_embedded_memory_model(tmp_path: Path, embedded_cache: Path) -> None:
    gpt2 = build_tiny_gpt2(tmp_path / "tiny-dialogpt")
    db = tmp_path / "db.sqlite3"
    config = tmp_path / "membot.toml"
    config.write_text(
        f'[model]\nbackend = "transformers"\nname = "{gpt2}"\nprofile = "dialogpt"\ndevice = "cpu"\n'
        "max_new_tokens = 8\n"
        f'[memory_model]\nbackend = "embedded"\nprofile = "chat"\ncache_dir = "{embedded_cache}"\n'
        'device = "cpu"\nmemory_max_new_tokens = 40\n'
        # one attempt: a malformed output is replaced by the extractive fallback at once (keeps the test short)
        '[jobs]\nmax_attempts = 1\n'
        f'[memory]\nstrategy = "recent"\n[storage]\npath = "{db}"\n[logging]\nlevel = "WARNING"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEMBOT_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}

    def membot(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], input=stdin, capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=600)

    chat = membot("chat", "--user", "alice", stdin="\n".join(FACTS) + "\n/end\n")
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert len(lines) == 3 and all(line.strip() for line in lines[:2]) and "ended" in lines[2]
    assert "Sorry" not in chat.stdout  # real replies from the tiny model, not apologies

    jobs = membot("jobs", "run")
    assert jobs.returncode == 0 and "wrote 1 session memory" in jobs.stdout, jobs.stderr

    with sqlite3.connect(db) as conn:
        facts, source, model = conn.execute("SELECT facts, source, model FROM session_memories").fetchone()
        versions = conn.execute("SELECT model FROM compressive_memories").fetchall()
        replies = conn.execute("SELECT COUNT(*) FROM messages WHERE author = 'bot'").fetchone()[0]
    assert model == MODEL_NAME and json.loads(facts)  # written by the embedded model, not by DialoGPT
    assert source in ("model", "fallback")  # the tiny model's random replies are in the transcript it reads
    assert versions and all(v[0] == MODEL_NAME for v in versions)
    assert replies == 2
