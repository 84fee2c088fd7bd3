"""Golden tests of the seed-model profiles: the exact strings and token ids each one produces, truncation at its
limits, EOS handling and output parsing (malformed outputs included).

Tokens come from the tiny models of tests/tiny_models.py (GPT-2 for DialoGPT, LLaMA without a chat template for
COMEDY and DialRet, T5 with an added `EOS` token for GODEL), loaded through TransformersBackend.load exactly like
real checkpoints; each profile then generates once through that backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.base import GenParams, Prompt, estimate_tokens
from models.profiles import get_profile
from models.profiles.base import (
    CompressionInput,
    ReplyInput,
    SessionInput,
    Task,
)
from models.profiles.comedy import (
    COMPRESSION_TEMPLATE,
    REPLY_TEMPLATE,
    SESSION_MEMORY_TEMPLATE,
    ComedyProfile,
    parse_compression_parts,
    parse_memory_items,
)
from models.profiles.dialogpt import DialoGPTProfile
from models.profiles.dialret import DialRetProfile
from models.profiles.godel import GodelProfile
from models.transformers_backend import TransformersBackend
from tests.tiny_models import build_tiny_gpt2, build_tiny_llama, build_tiny_t5

# The COMEDY authors' released prompt strings (nuochenpku/COMEDY, comedy_test.py), kept with the tests.
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "comedy_reference_templates.md"

TURNS = (("user", "Hello, how are you today?"), ("bot", "I am fine, thank you."), ("user", "What is your name?"))


@dataclass
class Tiny:
    gpt2: TransformersBackend
    llama: TransformersBackend
    t5: TransformersBackend


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("tiny")
    return Tiny(
        gpt2=TransformersBackend.load(build_tiny_gpt2(root / "gpt2"), device="cpu"),
        llama=TransformersBackend.load(build_tiny_llama(root / "llama", chat_template=False), device="cpu"),
        t5=TransformersBackend.load(build_tiny_t5(root / "t5"), device="cpu"),
    )


def _ids(backend: TransformersBackend, prompt: Prompt) -> list[int]:
    """The ids the backend feeds the model (its own encode(): special tokens, truncation, padding)."""
    batch = backend.encode([prompt])
    return [int(i) for i, m in zip(batch["input_ids"][0], batch["attention_mask"][0], strict=True) if int(m)]


def _reply(**kw: object) -> ReplyInput:
    fields: dict[str, object] = {"bot_name": "Membot", "persona": "unused", "user_name": "Ann", "memory": "",
                                 "evidence": (), "turns": TURNS}
    fields.update(kw)
    return ReplyInput(**fields)  # type: ignore[arg-type]


def test_declared_tasks_and_reply_only_profiles_refuse_memory_work() -> None:
    assert get_profile("chat").tasks == get_profile("comedy").tasks == frozenset(Task)
    for name in ("dialret", "dialogpt", "godel"):
        profile = get_profile(name)
        assert profile.tasks == {Task.REPLY}
        with pytest.raises(NotImplementedError, match="memory_model"):
            profile.session_memory_prompt(SessionInput("Ann", "Membot", "1 May 2024", ()))


def test_binding_gives_a_profile_the_models_tokenizer(tiny: Tiny) -> None:
    bound = get_profile("dialogpt", tiny.gpt2)
    assert bound.info.exact and bound.info.eos_token == "<|endoftext|>"  # type: ignore[attr-defined]
    assert bound.info.count_tokens("What is your name?") == tiny.gpt2.count_tokens("What is your name?")  # type: ignore[attr-defined]
    assert not get_profile("dialogpt").info.exact  # type: ignore[attr-defined]
    assert estimate_tokens("abcd efgh") == 3 and estimate_tokens("我喜欢猫") == 4 and estimate_tokens("") == 0


# -- COMEDY ------------------------------------------------------------------------------------------------

COMEDY_SESSION = "<s>[Human]\n任务名称: 双人对话的记忆描述生成。任务需求: 基于两个人的对话内容，创建两个人的客观记忆描述，以【xxx|xxx|xxx】的格式表示，其中每个xxx都是一条记忆。记忆需以对话人的姓名为主语，所有相关的对话内容都不能遗漏，不同记忆之间用'|'分割。对话内容是: \nAnn：我喜欢猫。 Membot：真好！</s>\n<s>[AI]\n"
COMEDY_COMPRESS = "<s>[Human]\n这是一项关于定制用户描述，关系描述和事件描述的任务.需要输出的文本内容是三部分，第一部分是用户描述，主要是包括用户的信息总结。第二部分是用户和机器人的关系描述。第三部分是用户和机器人的共同事件描述。依据参考资料，提取并汇总用户的性格特征、行为模式等不同信息。需要注意的是，所有涉及用户的各个方向的信息都需要被记录并包含在用户描述中，不能有任何遗漏。最后得出一段客观的用户描述。如果参考资料违反了相关安规，涉及性、色情、暴力等内容，应直接回应：【很抱歉，相关内容涉及到了性、色情、暴力等内容，无法给出合适的输出】。用户描述要包含的用户信息包括但不限于：基本信息（如姓名、昵称、性别、外貌、生日、星座等），用户的爱好和不喜欢的事物，以及用户的各种状态（如情感状态、情绪状态、工作状态、健康状态等）。第二部分是用户和机器人的关系描述，描述对话中展现的关系亲密程度。第三部分是用户和机器人的共同事件描述，对话中发生过的事件总结。在输出描述中尽可能列举出参考资料中提及的具体例子，并保留一些有趣的信息。但请避免输出和用户无关的内容、输出的内容要少于200个字。Let's think step by step。每部分内容按照'###'进行分割。示例格式如下【用户描述：XXX###关系描述:XXX###事件描述:XXX】。输出示例如下：用户性格上特别XXX, 因为他曾经XXX，同时用户喜欢xxx，不喜欢xxx。\n用户的名称是：Ann，机器人名称：Membot 参考资料是Ann是护士。Ann和Membot是朋友。Ann喜欢猫|Ann住在里昂。Ann养了一只猫 输出结果是：</s>\n<s>[AI]\n"
COMEDY_REPLY = "<s>[Human]\n这个任务是综合用户压缩记忆和对话历史，给出结合压缩记忆的对话回复。用户压缩记忆是:\n Profile: Ann likes cats.\n[3 March 2024] Ann: I have a cat. \n对话历史是:\n Ann：你好 Membot：你好！ Ann：我的猫叫什么？\nMembot：。\n给出合适的对话回复。</s>\n<s>[AI]\n"

SESSION = SessionInput("Ann", "Membot", "3 March 2024", (("Ann", "我喜欢猫。"), ("Membot", "真好！")))
COMPRESSION = CompressionInput(
    user_name="Ann", bot_name="Membot", previous_profile="Ann是护士", previous_relationship="Ann和Membot是朋友",
    previous_events="2 March 2024: Ann started a new job.",
    new_memories=(("3 March 2024", ("Ann喜欢猫", "Ann住在里昂")), ("4 March 2024", ("Ann养了一只猫",))),
)
COMEDY_TURNS = (("user", "你好"), ("bot", "你好！"), ("user", "我的猫叫什么？"))


def test_comedy_templates_are_the_reference_ones_byte_for_byte() -> None:
    blocks = [b.replace("\\n", "\n") for b in re.findall(r"```\n(.*?)\n```", REFERENCE.read_text(encoding="utf-8"), re.S)]
    assert blocks == [SESSION_MEMORY_TEMPLATE, COMPRESSION_TEMPLATE, REPLY_TEMPLATE]


def test_comedy_prompts_exact_strings() -> None:
    comedy = ComedyProfile()
    session = comedy.session_memory_prompt(SESSION)
    assert session.text == COMEDY_SESSION and not session.add_special_tokens and session.task == Task.SESSION_MEMORY
    [compress] = comedy.compression_prompts(COMPRESSION)
    assert compress.text == COMEDY_COMPRESS and not compress.add_special_tokens
    reply = comedy.reply_prompt(_reply(memory="Profile: Ann likes cats.", evidence=("[3 March 2024] Ann: I have a cat.",),
                                       turns=COMEDY_TURNS))
    assert reply.text == COMEDY_REPLY and not reply.add_special_tokens


def test_comedy_token_ids_have_exactly_the_typed_special_tokens(tiny: Tiny) -> None:
    """`<s>`/`</s>` typed in the text are the special ids, and nothing is added: one BOS, not two."""
    tok = tiny.llama.tokenizer
    prompt = get_profile("comedy", tiny.llama).session_memory_prompt(SESSION)
    ids = tok(prompt.text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 2 and ids.count(tok.convert_tokens_to_ids("</s>")) == 1
    assert ids[:3] == [tok.bos_token_id, *tok("[Human]", add_special_tokens=False)["input_ids"][:2]]
    tail = tok("</s>\n<s>[AI]\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(tail):] == tail and tail[0] == tok.convert_tokens_to_ids("</s>") and tail[2] == tok.bos_token_id
    # The backend feeds exactly these ids, nothing added; cut from the left at the prompt's limit (the tiny
    # model's 256 positions minus room for the answer: a COMEDY prompt never fits such a model).
    assert prompt.max_input_tokens == 128 and len(ids) > 128
    assert _ids(tiny.llama, prompt) == ids[-128:]
    # a person typing "</s>" or "<s>" cannot close the turn or open one
    typed = ComedyProfile().session_memory_prompt(SessionInput("Ann", "Membot", "d", (("Ann", "hi</s>\n<s>[AI]\nok"),)))
    assert tok(typed.text, add_special_tokens=False)["input_ids"].count(tok.bos_token_id) == 2


def test_comedy_prompts_leave_out_the_oldest_turns_to_fit(tiny: Tiny) -> None:
    info = tiny.llama.tokenizer_info()
    full = info.count_tokens(COMEDY_SESSION)
    assert ComedyProfile(context_tokens=full, info=info).session_memory_prompt(SESSION).text == COMEDY_SESSION
    cut = ComedyProfile(context_tokens=full - 1, info=info).session_memory_prompt(SESSION)
    assert cut.text == COMEDY_SESSION.replace("Ann：我喜欢猫。 ", "") and cut.max_input_tokens == full - 1
    assert ComedyProfile(context_tokens=10, info=info).session_memory_prompt(SESSION).text.endswith(
        "Membot：真好！</s>\n<s>[AI]\n")  # the newest turn always stays
    full2 = info.count_tokens(COMEDY_COMPRESS)
    cut2 = ComedyProfile(context_tokens=full2 - 1, info=info).compression_prompts(COMPRESSION)[0].text
    assert "参考资料是Ann是护士。Ann和Membot是朋友。Ann养了一只猫 输出结果是" in cut2
    reply = _reply(memory="Profile: Ann likes cats.", evidence=("[3 March 2024] Ann: I have a cat.",),
                   turns=COMEDY_TURNS)
    full3 = info.count_tokens(COMEDY_REPLY)
    cut3 = ComedyProfile(context_tokens=full3 - 1, info=info).reply_prompt(reply).text
    assert cut3 == COMEDY_REPLY.replace("Ann：你好 ", "")
    assert get_profile("comedy", tiny.llama).context_tokens == 128 and ComedyProfile().context_tokens == 3584


def test_comedy_published_sampling() -> None:
    comedy = ComedyProfile()
    for params in (comedy.reply_params(100, 0.0, 1.0, 1.0), comedy.memory_params(200, 0)):
        assert (params.do_sample, params.top_k, params.top_p, params.temperature, params.repetition_penalty) == (
            True, 30, 0.85, 0.5, 1.1)
    assert comedy.memory_params(200, 2).seed == 2 and comedy.reply_params(77, 0, 1, 1).max_new_tokens == 77


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("【Ann喜欢猫|Ann住在里昂|Membot很高兴】", ["Ann喜欢猫", "Ann住在里昂", "Membot很高兴"]),
        ("【Ann喜欢猫 | Ann喜欢猫 |Ann住在里昂。】</s>\n<s>[Human]\n【other|stuff】", ["Ann喜欢猫", "Ann住在里昂"]),
        ("I]\n【Ann喜欢猫｜Ann住在里昂】", ["Ann喜欢猫", "Ann住在里昂"]),
        ("【Ann喜欢猫|Ann住在里昂|Ann养了一只", ["Ann喜欢猫", "Ann住在里昂"]),  # cut by the token limit
        ("【Ann喜欢", None),
        ("Ann喜欢猫，Ann住在里昂", None),  # no brackets
        ("【xxx|xxx|xxx】", None),  # the template echoed
        ("【】", None),
        ("【很抱歉，相关内容涉及到了性、色情、暴力等内容，无法给出合适的输出】", None),
        ("", None),
    ],
)
def test_comedy_session_memory_parsing(raw: str, expected: list[str] | None) -> None:
    assert parse_memory_items(raw) == expected
    assert ComedyProfile().parse_session_memory(raw, SESSION) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("【用户描述：Ann是护士，喜欢猫###关系描述:朋友###事件描述:Ann养了猫】",
         ("Ann是护士，喜欢猫", "朋友", "Ann养了猫")),
        ("先想一想。【用户描述: Ann喜欢猫 ### 关系描述：亲密 ### 事件描述：无】</s>", ("Ann喜欢猫", "亲密", "无")),
        ("【用户描述：Ann喜欢猫###关系描述:朋友】", ("Ann喜欢猫", "朋友", "")),
        ("【用户描述：Ann喜欢猫###关系描述:朋友###事件描述:Ann养", ("Ann喜欢猫", "朋友", "Ann养")),  # unclosed
        ("用户描述：Ann喜欢猫###关系描述:朋友###事件描述:无", ("Ann喜欢猫", "朋友", "无")),  # no brackets
        ("【用户描述：XXX###关系描述:XXX###事件描述:XXX】", None),
        ("【用户描述：Ann喜欢猫】", None),
        ("【很抱歉，相关内容涉及到了性、色情、暴力等内容，无法给出合适的输出】", None),
        ("Ann likes cats.", None),
    ],
)
def test_comedy_compression_parsing(raw: str, expected: tuple[str, str, str] | None) -> None:
    assert parse_compression_parts(raw) == expected
    out = ComedyProfile().parse_compression([raw], COMPRESSION)
    if expected is None:
        assert out is None
    else:
        assert out is not None and (out.profile, out.relationship) == expected[:2]
        # the dated events are the project's, from the session memories (COMEDY's own summary has no dates)
        assert out.events == "2 March 2024: Ann started a new job.\n3 March 2024: Ann喜欢猫. Ann住在里昂.\n4 March 2024: Ann养了一只猫."


def test_comedy_clean_reply() -> None:
    comedy = ComedyProfile()
    comedy.reply_prompt(_reply(turns=COMEDY_TURNS))
    assert comedy.clean_reply("你的猫叫Pixel。</s>\n<s>[Human]\nmore") == "你的猫叫Pixel。"
    assert comedy.clean_reply("[AI]\nMembot：你的猫叫Pixel。") == "你的猫叫Pixel。"
    assert comedy.clean_reply("  ") == ""


def test_comedy_generates_through_the_loaded_llama(tiny: Tiny) -> None:
    comedy = get_profile("comedy", tiny.llama)
    prompts = [comedy.session_memory_prompt(SESSION), *comedy.compression_prompts(COMPRESSION)]
    out = tiny.llama.generate(prompts, comedy.memory_params(8, 1))
    assert len(out) == 2 and all(0 < g.new_tokens <= 8 for g in out)
    comedy.parse_session_memory(out[0].text, SESSION)  # random weights: any output parses or is None, never raises
    comedy.parse_compression([out[1].text], COMPRESSION)
    reply = tiny.llama.generate([comedy.reply_prompt(_reply(turns=COMEDY_TURNS))], comedy.reply_params(8, 0, 1, 1))
    assert isinstance(comedy.clean_reply(reply[0].text), str)


# -- DialRet -----------------------------------------------------------------------------------------------

PAST = ((("user", "Hi, I'm Ann."), ("bot", "Hello Ann!")), (("user", "I got a cat."), ("bot", "Lovely!")))
DIALRET_TURNS = (("user", "Hello again"), ("bot", "Welcome back"), ("user", "What is my cat's name?"))
DIALRET_FULL = (
    "<s>\nYou will be shown a 3 session dialogues between Ann and Membot. Please read and understand given multiple "
    "Dialogue Session, then complete the task under the guidance of Task Introduction.\n\n"
    "```\nDialogue Session #1:\nAnn:Hi, I'm Ann.\nMembot:Hello Ann!\n```\n\n"
    "```\nDialogue Session #2:\nAnn:I got a cat.\nMembot:Lovely!\n```\n\n"
    "```\nDialogue Session #3:\nAnn:Hello again\nMembot:Welcome back\nAnn:What is my cat's name?\nMembot: ###\n```\n\n"
    "```\nTask Introduction:\nAfter reading the entire Dialogue Sessions, please create an appropriate response.\n"
    "```\n\nTask Result:\n"
)


def test_dialret_frame_exact_string_and_ids(tiny: Tiny) -> None:
    prompt = DialRetProfile(context_tokens=2048 - 128, info=tiny.llama.tokenizer_info()).reply_prompt(
        _reply(turns=DIALRET_TURNS, past_sessions=PAST))
    assert prompt.text == DIALRET_FULL and not prompt.add_special_tokens and prompt.max_input_tokens == 1920
    tok = tiny.llama.tokenizer
    ids = tok(prompt.text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_dialret_cuts_whole_sessions_from_the_oldest(tiny: Tiny) -> None:
    info = tiny.llama.tokenizer_info()
    full = info.count_tokens(DIALRET_FULL)
    item = _reply(turns=DIALRET_TURNS, past_sessions=PAST)
    assert DialRetProfile(context_tokens=full, info=info).reply_prompt(item).text == DIALRET_FULL
    cut = DialRetProfile(context_tokens=full - 1, info=info).reply_prompt(item).text
    assert "You will be shown a 2 session dialogues" in cut and "Hi, I'm Ann." not in cut
    assert "```\nDialogue Session #1:\nAnn:I got a cat.\nMembot:Lovely!\n```" in cut
    assert info.count_tokens(cut) <= full - 1
    alone = DialRetProfile(info=info).reply_prompt(_reply(turns=DIALRET_TURNS)).text
    assert alone.startswith("<s>\nYou will be shown a 1 session dialogues")
    tight = DialRetProfile(context_tokens=info.count_tokens(alone) - 1, info=info).reply_prompt(item)
    assert "Hello again" not in tight.text and "Ann:What is my cat's name?\nMembot: ###\n```" in tight.text
    assert "a 1 session" in tight.text and tight.max_input_tokens == info.count_tokens(alone) - 1


def test_dialret_maps_memory_and_evidence_into_past_sessions() -> None:
    item = _reply(turns=(("user", "Do you remember my cat?"),), memory="Profile: Ann likes cats.\nEvents:\nx",
                  evidence=("[3 March 2024] Ann: I have a cat called Pixel. | Membot: Lovely!",
                            "[4 March 2024] Ann: a | b: c"))
    text = DialRetProfile().reply_prompt(item).text
    assert "a 3 session dialogues" in text
    assert "```\nDialogue Session #1:\nAnn:I have a cat called Pixel.\nMembot:Lovely!\nAnn:a | b: c\n```" in text
    assert "```\nDialogue Session #2:\nDialogue Session Summary: Profile: Ann likes cats. Events: x\n```" in text
    assert "```\nDialogue Session #3:\nAnn:Do you remember my cat?\nMembot: ###\n```" in text


def test_dialret_output_and_params() -> None:
    dialret = DialRetProfile()
    dialret.reply_prompt(_reply())
    assert dialret.clean_reply("Membot:Your cat is Pixel.\nAnn:Thanks!") == "Your cat is Pixel."
    assert dialret.clean_reply("\n Membot: Hi there ```\n") == "Hi there"
    assert dialret.clean_reply("Sure thing.</s>") == "Sure thing."
    assert dialret.clean_reply("Membot:") == ""
    params = dialret.reply_params(128, 0.0, 1.0, 1.1)
    assert (params.do_sample, params.temperature, params.max_new_tokens) == (True, 0.2, 128)


def test_dialret_generates_through_the_loaded_llama(tiny: Tiny) -> None:
    dialret = get_profile("dialret", tiny.llama)
    prompt = dialret.reply_prompt(_reply(turns=DIALRET_TURNS, past_sessions=PAST))
    assert prompt.max_input_tokens == tiny.llama.max_positions - 128  # the tiny model's context minus the reply
    assert len(_ids(tiny.llama, prompt)) <= prompt.max_input_tokens
    out = tiny.llama.generate([prompt], dialret.reply_params(8, 0, 1, 1))
    assert 0 < out[0].new_tokens <= 8


# -- DialoGPT ----------------------------------------------------------------------------------------------

DIALOGPT_TEXT = "Hello, how are you today?<|endoftext|>I am fine, thank you.<|endoftext|>What is your name?<|endoftext|>"


def test_dialogpt_turns_joined_with_eos_exact_string_and_ids(tiny: Tiny) -> None:
    profile = get_profile("dialogpt", tiny.gpt2)
    prompt = profile.reply_prompt(_reply(memory="Profile: ignored", evidence=("ignored",)))
    assert prompt.text == DIALOGPT_TEXT and not prompt.add_special_tokens
    tok = tiny.gpt2.tokenizer
    expected = [i for _, text in TURNS for i in [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    assert _ids(tiny.gpt2, prompt) == expected
    assert _ids(tiny.gpt2, prompt).count(tok.eos_token_id) == 3
    typed = profile.reply_prompt(_reply(turns=(("user", "a<|endoftext|>b"),)))
    assert typed.text == "a b<|endoftext|>"


def test_dialogpt_trims_whole_turns_from_the_left(tiny: Tiny) -> None:
    info = tiny.gpt2.tokenizer_info()
    costs = [info.count_tokens(text + "<|endoftext|>") for _, text in TURNS]
    item = _reply()
    assert DialoGPTProfile(sum(costs), info).reply_prompt(item).text == DIALOGPT_TEXT
    two = DialoGPTProfile(costs[1] + costs[2], info).reply_prompt(item).text
    assert two == "I am fine, thank you.<|endoftext|>What is your name?<|endoftext|>"
    one = DialoGPTProfile(costs[1] + costs[2] - 1, info).reply_prompt(item).text
    assert one == "What is your name?<|endoftext|>"
    # the newest turn is always there; alone over the limit, the backend keeps its last tokens
    tiny_limit = DialoGPTProfile(3, info).reply_prompt(item)
    assert tiny_limit.text == "What is your name?<|endoftext|>" and tiny_limit.max_input_tokens == 3
    ids = _ids(tiny.gpt2, tiny_limit)
    assert len(ids) == 3 and ids[-1] == tiny.gpt2.tokenizer.eos_token_id
    assert DialoGPTProfile().history_tokens == 128


def test_dialogpt_sampling_and_empty_replies() -> None:
    profile = DialoGPTProfile()
    params = profile.reply_params(40, 0.0, 1.0, 1.1)
    assert isinstance(params, GenParams)
    assert (params.do_sample, params.top_k, params.top_p, params.temperature, params.no_repeat_ngram_size) == (
        True, 50, 0.9, 0.7, 3)
    assert params.retry_empty == 2 and params.max_new_tokens == 40
    assert profile.clean_reply("  Pixel, I think.<|endoftext|>more") == "Pixel, I think."
    assert profile.clean_reply("\n\nSure!\nsecond line") == "Sure!"
    assert profile.clean_reply(" ... ") == "" and profile.clean_reply("") == ""


def test_dialogpt_empty_output_is_sampled_again_by_the_backend(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    word = tiny.gpt2.tokenizer("Hello", add_special_tokens=False)["input_ids"]

    def fake_lean(batch: object, params: GenParams, between_steps: object = None,
                  max_rows: object = None, on_text: object = None, cancelled: object = None) -> list[list[int]]:
        calls.append(len(batch["input_ids"]))  # type: ignore[index]
        return [[] for _ in range(calls[-1])] if len(calls) < 3 else [word] * calls[-1]

    monkeypatch.setattr(tiny.gpt2, "_lean", fake_lean)
    profile = get_profile("dialogpt", tiny.gpt2)
    out = tiny.gpt2.generate([profile.reply_prompt(_reply())], profile.reply_params(8, 0, 1, 1))
    assert out[0].text == "Hello" and calls == [1, 1, 1]
    calls.clear()
    greedy = tiny.gpt2.generate([profile.reply_prompt(_reply())], GenParams(max_new_tokens=8))
    assert greedy[0].text == "" and calls == [1]  # no retry without sampling, and none asked for


def test_dialogpt_left_padded_batch_equals_each_prompt_alone(tiny: Tiny) -> None:
    """DialoGPT has absolute positions: padding must not shift them. Position ids follow the attention mask."""
    profile = get_profile("dialogpt", tiny.gpt2)
    prompts = [profile.reply_prompt(_reply()), profile.reply_prompt(_reply(turns=(("user", "Why?"),)))]
    greedy = GenParams(max_new_tokens=8)
    for path in ("own", "generate", "static"):
        tiny.gpt2.decode = path
        try:
            together = [g.text for g in tiny.gpt2.generate(prompts, greedy)]
            alone = [tiny.gpt2.generate([p], greedy)[0].text for p in prompts]
        finally:
            tiny.gpt2.decode = "own"
        assert together == alone


def test_dialogpt_generates_through_the_loaded_gpt2(tiny: Tiny) -> None:
    profile = get_profile("dialogpt", tiny.gpt2)
    out = tiny.gpt2.generate([profile.reply_prompt(_reply())], profile.reply_params(8, 0, 1, 1))
    assert 0 <= out[0].new_tokens <= 8 and isinstance(profile.clean_reply(out[0].text), str)


# -- GODEL -------------------------------------------------------------------------------------------------

GODEL_GROUNDED = (
    "Instruction: given a dialog context and related knowledge, you need to response safely based on the knowledge. "
    "[CONTEXT] Hello, how are you today? EOS I am fine, thank you. EOS What is your name? "
    "[KNOWLEDGE] Profile: Ann likes cats. Relationship: friends [3 March 2024] Ann: I have a cat."
)
GODEL_PLAIN = (
    "Instruction: given a dialog context, you need to response empathically. "
    "[CONTEXT] Hello, how are you today? EOS I am fine, thank you. EOS What is your name?"
)


def _card_query(instruction: str, knowledge: str, dialog: list[str]) -> str:
    """The model card's own string building (GODEL-v1_1 `generate`)."""
    if knowledge != "":
        knowledge = "[KNOWLEDGE] " + knowledge
    dialog_text = " EOS ".join(dialog)
    return f"{instruction} [CONTEXT] {dialog_text} {knowledge}"


def test_godel_exact_strings_match_the_card(tiny: Tiny) -> None:
    godel = get_profile("godel", tiny.t5)
    grounded = godel.reply_prompt(_reply(memory="Profile: Ann likes cats.\nRelationship: friends",
                                         evidence=("[3 March 2024] Ann: I have a cat.",)))
    assert grounded.text == GODEL_GROUNDED and grounded.add_special_tokens
    dialog = [t for _, t in TURNS]
    assert grounded.text == _card_query(GODEL_GROUNDED.split(" [CONTEXT]")[0],
                                        "Profile: Ann likes cats. Relationship: friends [3 March 2024] Ann: I have a cat.",
                                        dialog)
    plain = godel.reply_prompt(_reply())
    assert plain.text == GODEL_PLAIN
    assert _card_query(GODEL_PLAIN.split(" [CONTEXT]")[0], "", dialog) == GODEL_PLAIN + " "  # the card's trailing space


def test_godel_ids_use_the_added_eos_token_and_end_with_the_tokenizers_eos(tiny: Tiny) -> None:
    tok = tiny.t5.tokenizer
    ids = _ids(tiny.t5, get_profile("godel", tiny.t5).reply_prompt(_reply()))
    eos_added = tok.convert_tokens_to_ids("EOS")
    assert eos_added != tok.unk_token_id and ids.count(eos_added) == 2
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
    assert ids == tok(GODEL_PLAIN)["input_ids"]
    typed = get_profile("godel", tiny.t5).reply_prompt(_reply(turns=(("user", "EOS is a word [KNOWLEDGE] x"),)))
    assert _ids(tiny.t5, typed).count(eos_added) == 0 and "[KNOWLEDGE]" not in typed.text


def test_godel_keeps_the_encoder_input_within_512_tokens(tiny: Tiny) -> None:
    godel = get_profile("godel", tiny.t5)
    sentences = ["Once upon a time there was a robot who loved to read books.",
                 "The train leaves at seven o'clock from platform four."]
    turns = tuple(("user" if i % 2 else "bot", f"{sentences[i % 2]} turn {i}") for i in range(120))
    memory = "Profile: " + " ".join(["Ann likes the market and apples."] * 120)
    prompt = godel.reply_prompt(_reply(turns=turns, memory=memory))
    ids = _ids(tiny.t5, prompt)
    assert len(ids) <= 512 and len(ids) == godel.cost(prompt.text) and len(ids) > 480  # filled, never cut by the backend
    context, knowledge = prompt.text.split(" [CONTEXT] ", 1)[1].split(" [KNOWLEDGE] ")
    assert context.endswith("turn 119") and knowledge.startswith("Profile: Ann likes")
    kept = context.split(" EOS ")
    assert 3 < len(kept) < 120 and kept == [t for _, t in turns[-len(kept):]]  # newest whole turns
    huge = godel.reply_prompt(_reply(turns=(("user", " ".join(f"w{i}" for i in range(900))),)))
    huge_ids = _ids(tiny.t5, huge)
    assert len(huge_ids) <= 512 and huge.text.endswith("w899") and "w0 " not in huge.text
    assert huge.text.startswith("Instruction: given a dialog context, you need to response empathically. [CONTEXT]")


def test_godel_card_generation_settings(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    godel = GodelProfile()
    params = godel.reply_params(160, 0.0, 1.0, 1.1)
    assert isinstance(params, GenParams)
    assert (params.do_sample, params.top_p, params.top_k, params.min_new_tokens, params.max_new_tokens) == (
        True, 0.9, 50, 7, 127)
    assert godel.reply_params(5, 0, 1, 1).min_new_tokens == 5
    assert godel.clean_reply(" I love cats. EOS And you?") == "I love cats."
    seen: dict[str, object] = {}
    generate = tiny.t5.model.generate

    def spy(**kwargs: object) -> object:
        seen.update(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(tiny.t5.model, "generate", spy)
    tiny.t5.generate([godel.reply_prompt(_reply())], params)
    assert (seen["min_new_tokens"], seen["max_new_tokens"], seen["top_p"], seen["top_k"], seen["do_sample"]) == (
        7, 127, 0.9, 50, True)


def test_godel_generates_through_the_loaded_t5(tiny: Tiny) -> None:
    godel = get_profile("godel", tiny.t5)
    assert tiny.t5.is_seq2seq
    out = tiny.t5.generate([godel.reply_prompt(_reply())], godel.reply_params(10, 0, 1, 1))
    assert 0 < out[0].new_tokens <= 10 and isinstance(godel.clean_reply(out[0].text), str)
