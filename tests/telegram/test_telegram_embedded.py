"""One Telegram conversation end to end on the real embedded model (SmolLM2-135M-Instruct), no fake backend.

Over HTTP through PTB: the person talks, ends the session, the model writes the memory, and the next
session's reply prompt carries it; every reply is real model output, sent as plain text.
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
        "model.memory_max_new_tokens": 48,
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

        ended = await say(server, lambda: server.send_command(USER, USER, "/end"), USER, timeout=SLOW)
        assert ended.params["text"].startswith("Conversation ended")
        report = await app.jobs.run_until_idle()
        assert report.session_memories.written == 1 and report.compressions.written == 1

        second = await say(server, lambda: server.send_private_text(
            USER, "What do you remember about me?", first_name="Alice"), USER, timeout=SLOW)
        assert second.params["text"].strip() and second.params["text"] != APOLOGY
        assert "What you remember about Alice:" in prompts[-1] and "Profile:" in prompts[-1]
    finally:
        await adapter.stop()
        await app.close()
