"""One Telegram conversation end to end on the real embedded model (SmolLM2-135M-Instruct), no fake backend.

Over HTTP through PTB: two turns in a private chat, each answered with real model output as plain text, the
second prompt carrying the first turn; then /end closes the session for the memory jobs. (Memory written by
the embedded model across sessions is tested in tests/e2e; here the point is the Telegram path.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import App
from bot.config import load_settings
from bot.dispatcher import APOLOGY
from bot.telegram_adapter import MAX_TEXT, TelegramAdapter
from models.embedded import MODEL_NAME
from tests.fakes.telegram_api import FakeTelegramServer
from tests.telegram.conftest import USER, say

SLOW = 300  # seconds: a busy CI runner's CPU can take long over a forward pass


@pytest.mark.slow
async def test_a_telegram_conversation_on_the_embedded_model(
    fake_telegram: FakeTelegramServer, tmp_path: Path, embedded_cache: Path
) -> None:
    server = fake_telegram
    settings = load_settings(None, overrides={
        "storage.path": str(tmp_path / "db.sqlite3"),
        "model.cache_dir": str(embedded_cache),
        "model.max_new_tokens": 16,
        "telegram.base_url": server.base_url,
        "telegram.base_file_url": server.base_file_url,
        "telegram.poll_timeout": 5,
    })
    app = await App.create(settings)
    await app.start(schedule=False)
    prompts: list[str] = []
    app.dispatcher.prompt_hooks.append(lambda _msg, prompt: prompts.append(prompt.flat()))
    adapter = TelegramAdapter(app, server.bot_token)
    await adapter.start()
    try:
        assert app.worker.name == MODEL_NAME
        first = await say(server, lambda: server.send_private_text(
            USER, "Hi! My name is Alice and I keep bees on my roof in Lyon.", first_name="Alice"), USER, timeout=SLOW)
        text = first.params["text"]
        assert text.strip() and text != APOLOGY and len(text) <= MAX_TEXT and "parse_mode" not in first.params
        assert server.calls_of("sendChatAction")[0].seq < first.seq

        second = await say(server, lambda: server.send_private_text(
            USER, "What do I keep on my roof?", first_name="Alice"), USER, timeout=SLOW)
        assert second.params["text"].strip() and second.params["text"] != APOLOGY
        assert "bees on my roof in Lyon" in prompts[-1] and text.strip() in prompts[-1]  # the first turn

        ended = await say(server, lambda: server.send_command(USER, USER, "/end"), USER)
        assert ended.params["text"].startswith("Conversation ended")
        rows = await app.store.fetchall("SELECT author, text FROM messages ORDER BY id")
        assert [r["author"] for r in rows] == ["user", "bot", "user", "bot"]
        assert rows[1]["text"] == text and await app.jobs.pending_count() == 1
    finally:
        await adapter.stop()
        await app.close()
