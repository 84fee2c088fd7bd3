"""The `comedy` profile: COMEDY-7B / COMEDY-13B-DPO's own Chinese prompts for all three tasks.

The templates are the ones in nuochenpku/COMEDY `comedy_test.py`, byte for byte: `<s>` and `</s>` are typed
into the text and the prompt is tokenized with `add_special_tokens=False`, as in training, so the model sees
exactly one BOS. Generation uses the published sampling settings and stops at the tokenizer's EOS (`</s>`).

Where the source leaves a choice open, this profile decides (and the choices are the ones tested):
- a turn is written `{speaker}：{text}` (full-width colon, as the reply template's `{bot}：` suggests) and the
  turns are joined by spaces;
- task 2's `{memory}` is the previous compressive memory (profile, relationship) followed by each new session
  memory written as its facts joined with `|`, everything joined with `。` (COMEDY joins task-1 outputs with
  `。` after removing the brackets). Dates are not given to the model (COMEDY never saw them); the dated
  events the project keeps are built from the session memories instead, so COMEDY's own 事件描述 (event
  summary) is not stored: the dated events carry the same facts with their dates;
- task 3's `{compress_memory}` is the compressive memory followed by retrieved evidence lines, and verbatim past
  sessions (strategy "sessions") go before the current turns in `{history}`;
- every prompt stays within the model's context minus 512 tokens for the answer (LLaMA-2: 4096 - 512): the
  oldest turns (tasks 1 and 3) or the oldest session memories (task 2) are left out first, the instruction
  never. Task 2 loses no fact by this: the dated events are still built from every session memory.
Malformed outputs (no `【…】`, no usable item, the template echoed back, the safety refusal) parse to None, so
the jobs retry and in the end write their extractive fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from models.base import GenParams, Prompt
from models.profiles.base import (
    CompressionInput,
    CompressionOutput,
    ReplyInput,
    SessionInput,
    Task,
    TokenizerInfo,
)

SESSION_MEMORY_TEMPLATE = (
    "<s>[Human]\n任务名称: 双人对话的记忆描述生成。任务需求: 基于两个人的对话内容，创建两个人的客观记忆描述，"
    "以【xxx|xxx|xxx】的格式表示，其中每个xxx都是一条记忆。记忆需以对话人的姓名为主语，所有相关的对话内容都不能遗漏，"
    "不同记忆之间用'|'分割。对话内容是: \n{history}</s>\n<s>[AI]\n"
)
COMPRESSION_TEMPLATE = (
    "<s>[Human]\n这是一项关于定制用户描述，关系描述和事件描述的任务.需要输出的文本内容是三部分，第一部分是用户描述，"
    "主要是包括用户的信息总结。第二部分是用户和机器人的关系描述。第三部分是用户和机器人的共同事件描述。依据参考资料，"
    "提取并汇总用户的性格特征、行为模式等不同信息。需要注意的是，所有涉及用户的各个方向的信息都需要被记录并包含在用户描述中，"
    "不能有任何遗漏。最后得出一段客观的用户描述。如果参考资料违反了相关安规，涉及性、色情、暴力等内容，应直接回应：【很抱歉，"
    "相关内容涉及到了性、色情、暴力等内容，无法给出合适的输出】。用户描述要包含的用户信息包括但不限于：基本信息（如姓名、昵称、"
    "性别、外貌、生日、星座等），用户的爱好和不喜欢的事物，以及用户的各种状态（如情感状态、情绪状态、工作状态、健康状态等）。"
    "第二部分是用户和机器人的关系描述，描述对话中展现的关系亲密程度。第三部分是用户和机器人的共同事件描述，对话中发生过的事件总结。"
    "在输出描述中尽可能列举出参考资料中提及的具体例子，并保留一些有趣的信息。但请避免输出和用户无关的内容、输出的内容要少于200个字。"
    "Let's think step by step。每部分内容按照'###'进行分割。示例格式如下【用户描述：XXX###关系描述:XXX###事件描述:XXX】。"
    "输出示例如下：用户性格上特别XXX, 因为他曾经XXX，同时用户喜欢xxx，不喜欢xxx。\n用户的名称是：{user}，机器人名称：{botname} "
    "参考资料是{memory} 输出结果是：</s>\n<s>[AI]\n"
)
REPLY_TEMPLATE = (
    "<s>[Human]\n这个任务是综合用户压缩记忆和对话历史，给出结合压缩记忆的对话回复。用户压缩记忆是:\n {compress_memory} \n"
    "对话历史是:\n {history}\n{bot}：。\n给出合适的对话回复。</s>\n<s>[AI]\n"
)

# comedy_test.py: do_sample=True, top_k=30, top_p=0.85, temperature=0.5, repetition_penalty=1.1, eos_token_id=2
TOP_K = 30
TOP_P = 0.85
TEMPERATURE = 0.5
REPETITION_PENALTY = 1.1

DEFAULT_CONTEXT = 4096  # LLaMA-2
ANSWER_RESERVE = 512

REFUSAL = "很抱歉，相关内容涉及到了性、色情、暴力等内容，无法给出合适的输出"
_PLACEHOLDERS = frozenset({"xxx", "XXX", "..."})
_BRACKETED = re.compile(r"【(.*?)】", re.S)
_LABELS = (
    re.compile(r"^\s*用户描述\s*[：:]\s*"),
    re.compile(r"^\s*关系描述\s*[：:]\s*"),
    re.compile(r"^\s*事件描述\s*[：:]\s*"),
)
_LEADING_TAG = re.compile(r"^\s*(?:<s>)?\s*\[?A?I\]\s*")


def defuse(text: str) -> str:
    """Typed `<s>`/`</s>` would be read as the special tokens and could fake a turn; they are made inert."""
    return text.replace("<s>", "< s>").replace("</s>", "</ s>")


def turn_text(speaker: str, text: str) -> str:
    return f"{defuse(speaker)}：{defuse(text)}"


def _answer_part(raw: str) -> str:
    """The model's answer only: up to the first `</s>` (or a new `<s>` turn), without an echoed `[AI]` tag."""
    text = raw.split("</s>", 1)[0].split("<s>[Human]", 1)[0]
    return _LEADING_TAG.sub("", text, count=1).strip()


def _is_placeholder(text: str) -> bool:
    return not text or text in _PLACEHOLDERS or set(text) <= set("xX.。 ")


def parse_memory_items(raw: str) -> list[str] | None:
    """`【a|b|c】` → [a, b, c]. An unclosed `【` (output cut by the token limit) keeps all but the cut last item."""
    text = _answer_part(raw)
    if REFUSAL in text:
        return None
    match = _BRACKETED.search(text)
    if match:
        body = match.group(1)
    elif "【" in text:
        pieces = re.split(r"[|｜]", text.split("【", 1)[1])
        if len(pieces) < 2:
            return None
        body = "|".join(pieces[:-1])
    else:
        return None
    items: list[str] = []
    for piece in re.split(r"[|｜]", body):
        piece = piece.strip().strip("。").strip()
        if _is_placeholder(piece) or piece in items:
            continue
        items.append(piece)
    return items or None


def parse_compression_parts(raw: str) -> tuple[str, str, str] | None:
    """`【用户描述：…###关系描述:…###事件描述:…】` → (user, relationship, events); events may be missing."""
    text = _answer_part(raw)
    if REFUSAL in text:
        return None
    candidates = [m.group(1) for m in _BRACKETED.finditer(text) if "###" in m.group(1)]
    if candidates:
        body = candidates[0]
    elif "###" in text:  # the closing bracket was cut off, or the brackets were left out
        body = text.rsplit("【", 1)[-1]
    else:
        return None
    parts = [p.strip() for p in body.split("###")]
    cleaned: list[str] = []
    for i, part in enumerate(parts[:3]):
        part = _LABELS[i].sub("", part).strip() if i < len(_LABELS) else part
        cleaned.append(part)
    if len(cleaned) < 2 or any(_is_placeholder(p) for p in cleaned[:2]):
        return None
    while len(cleaned) < 3:
        cleaned.append("")
    return cleaned[0], cleaned[1], cleaned[2]


class ComedyProfile:
    """COMEDY's one-for-all model: session memories, compression and memory-grounded replies."""

    name = "comedy"
    tasks = frozenset({Task.REPLY, Task.SESSION_MEMORY, Task.COMPRESS})

    def __init__(self, context_tokens: int | None = None, info: TokenizerInfo | None = None) -> None:
        self.info = info or TokenizerInfo()
        self._context_tokens = context_tokens
        self._bot_names: set[str] = set()

    def bind(self, info: TokenizerInfo) -> None:
        self.info = info

    @property
    def context_tokens(self) -> int:
        """The prompt's budget: the model's context minus room for the answer."""
        if self._context_tokens:
            return self._context_tokens
        positions = self.info.max_positions or DEFAULT_CONTEXT
        return max(positions - ANSWER_RESERVE, positions // 2)

    def _fit(self, render: Callable[[list[str]], str], pieces: list[str], keep: int = 1) -> Prompt:
        """Drop the oldest pieces (keeping the last `keep`) until the rendered prompt fits the budget."""
        limit = self.context_tokens
        pieces = list(pieces)
        while len(pieces) > keep and self.info.count_tokens(render(pieces)) > limit:
            pieces.pop(0)
        return Prompt(text=render(pieces), add_special_tokens=False, max_input_tokens=limit)

    # task 1 -------------------------------------------------------------------------------------
    def session_memory_prompt(self, item: SessionInput) -> Prompt:
        turns = [turn_text(speaker, text) for speaker, text in item.turns]
        prompt = self._fit(lambda kept: SESSION_MEMORY_TEMPLATE.format(history=" ".join(kept)), turns)
        return replace(prompt, task=Task.SESSION_MEMORY)

    def parse_session_memory(self, raw: str, item: SessionInput) -> list[str] | None:
        return parse_memory_items(raw)

    # task 2 -------------------------------------------------------------------------------------
    @staticmethod
    def memory_pieces(item: CompressionInput) -> tuple[list[str], list[str]]:
        """(the previous compressive memory's parts, one `a|b|c` per new session memory)."""
        previous = [defuse(p) for p in (item.previous_profile, item.previous_relationship) if p.strip()]
        return previous, [defuse("|".join(facts)) for _, facts in item.new_memories if facts]

    def memory_text(self, item: CompressionInput) -> str:
        previous, sessions = self.memory_pieces(item)
        return "。".join(previous + sessions)

    def compression_prompts(self, item: CompressionInput) -> list[Prompt]:
        previous, sessions = self.memory_pieces(item)

        def render(kept: list[str]) -> str:
            memory = "。".join(previous + kept)
            return COMPRESSION_TEMPLATE.format(user=defuse(item.user_name), botname=defuse(item.bot_name),
                                               memory=memory)

        return [replace(self._fit(render, sessions), task=Task.COMPRESS)]

    def parse_compression(self, raws: Sequence[str], item: CompressionInput) -> CompressionOutput | None:
        if len(raws) != 1:
            return None
        parts = parse_compression_parts(raws[0])
        if parts is None:
            return None
        profile, relationship, _events = parts
        return CompressionOutput(profile=profile, relationship=relationship, events=item.merged_events())

    # task 3 -------------------------------------------------------------------------------------
    def reply_prompt(self, item: ReplyInput) -> Prompt:
        self._bot_names.add(item.bot_name)
        names = {"user": item.user_name, "bot": item.bot_name}
        memory = defuse("\n".join(part for part in (item.memory, *item.evidence) if part.strip()))
        turns = [t for session in item.past_sessions for t in session] + list(item.turns)
        lines = [turn_text(names.get(author, author), text) for author, text in turns]
        bot = defuse(item.bot_name)
        prompt = self._fit(
            lambda kept: REPLY_TEMPLATE.format(compress_memory=memory, history=" ".join(kept), bot=bot), lines
        )
        return replace(prompt, task=Task.REPLY)

    def reply_params(
        self, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
    ) -> GenParams:
        """The published sampling settings; only the length comes from the config."""
        return self._published(max_new_tokens)

    def memory_params(self, max_new_tokens: int, attempt: int) -> GenParams:
        return self._published(max_new_tokens, seed=attempt if attempt else None)

    @staticmethod
    def _published(max_new_tokens: int, seed: int | None = None) -> GenParams:
        return GenParams(
            max_new_tokens=max_new_tokens, do_sample=True, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
            repetition_penalty=REPETITION_PENALTY, seed=seed,
        )

    def clean_reply(self, raw: str) -> str:
        text = _answer_part(raw)
        for name in self._bot_names:
            for colon in ("：", ":"):
                if text.startswith(name + colon):
                    text = text[len(name) + 1 :].strip()
        return text.strip()
