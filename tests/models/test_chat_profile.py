"""Golden tests of the default `chat` profile: the exact text and token ids the model sees, and parsing."""

from __future__ import annotations

import pytest

from models.base import GenParams
from models.profiles import get_profile
from models.profiles.base import CompressionInput, ReplyInput, SessionInput
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_llama


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    return TransformersBackend.load(build_tiny_llama(tmp_path_factory.mktemp("llama") / "m"), device="cpu")


REPLY = ReplyInput(
    bot_name="Membot", persona="You are Membot.", user_name="Alice", memory="Profile: Alice is a nurse.",
    evidence=("[8 May 2023] Alice: I live in Lyon.",), turns=(("user", "hi"), ("bot", "hello!"), ("user", "where do I live?")),
)


def test_reply_prompt_exact_chat_template_text(llama: TransformersBackend) -> None:
    prompt = get_profile("chat").reply_prompt(REPLY)
    assert llama.render(prompt) == (
        "<|im_start|>system\nYou are Membot.\n\nWhat you remember about Alice:\nProfile: Alice is a nurse.\n\n"
        "From earlier conversations with Alice:\n[8 May 2023] Alice: I live in Lyon.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello!<|im_end|>\n"
        "<|im_start|>user\nwhere do I live?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = llama.encode([prompt])["input_ids"][0].tolist()
    im_start = llama.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids.count(im_start) == 5  # no BOS added on top of the template
    assert llama.stop_token_ids() == (llama.tokenizer.convert_tokens_to_ids("<|im_end|>"),)


def test_session_memory_prompt_and_parsing(llama: TransformersBackend) -> None:
    profile = get_profile("chat")
    item = SessionInput(user_name="Alice", bot_name="Membot", date="8 May 2023",
                        turns=(("Alice", "I adopted a dog named Rex."), ("Membot", "Lovely!")))
    prompt = profile.session_memory_prompt(item)
    roles = [role for role, _ in prompt.messages or ()]
    assert roles == ["system", "user", "assistant", "user"]  # one worked example, then the real one
    assert prompt.messages[-1][1].endswith("Alice: I adopted a dog named Rex.\nMembot: Lovely!\n\nFacts about Alice:")
    assert profile.parse_session_memory("- Alice adopted a dog named Rex.\n- Bob teaches math.\n", item) == [
        "Alice adopted a dog named Rex."
    ]
    for malformed in ("", "!!!", "- Bob lives in Oslo.", "Facts:\n\n"):
        assert profile.parse_session_memory(malformed, item) is None


def test_compression_prompts_and_parsing() -> None:
    profile = get_profile("chat")
    item = CompressionInput(user_name="Alice", bot_name="Membot",
                            new_memories=(("8 May 2023", ("Alice adopted a dog named Rex.",)),))
    prompts = profile.compression_prompts(item)
    assert len(prompts) == 2 and all(p.task == "compress" for p in prompts)
    assert "- (8 May 2023) Alice adopted a dog named Rex." in prompts[0].messages[-1][1]
    out = profile.parse_compression(["Profile: Alice has a dog called Rex.", "Alice and Membot are friendly."], item)
    assert out is not None and out.profile == "Alice has a dog called Rex."
    assert out.events == "8 May 2023: Alice adopted a dog named Rex."
    assert profile.parse_compression(["", "Alice and Membot are friendly."], item) is None


def test_generation_through_the_loaded_model(llama: TransformersBackend) -> None:
    prompt = get_profile("chat").reply_prompt(REPLY)
    out = llama.generate([prompt, prompt], GenParams(max_new_tokens=5))
    assert len(out) == 2 and out[0].text == out[1].text and out[0].new_tokens <= 5
