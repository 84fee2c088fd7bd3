"""Tiny randomly initialised models + trained-in-test tokenizers for fast tests.

Why: tests must not download anything and must run in seconds on 2 CPU cores,
yet they need *real* transformers architectures (GPT-2, LLaMA, T5) with real
tokenizers, because the code under test relies on HF model forward semantics
(cache, position ids, masks) and tokenizer behaviour (special tokens, chat
templates, padding). So each builder trains a small tokenizer on a fixed corpus,
builds a 2-layer model with a seeded random init and saves both with
``save_pretrained``; ``AutoModelFor*`` / ``AutoTokenizer.from_pretrained(folder)``
reload them like any hub checkpoint.

Weights are initialised with a large std on purpose: with HF's default 0.02 a
tiny random model produces nearly flat logits, greedy decoding collapses into
repeating one token and near-ties make tests fragile. Larger weights give
varied, well-separated predictions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

__all__ = ["CHATML_TEMPLATE", "CORPUS", "build_tiny_gpt2", "build_tiny_llama", "build_tiny_t5"]

SEED = 1234
INIT_STD = 0.4

CORPUS: tuple[str, ...] = (
    "Hello, how are you today?",
    "I am fine, thank you. And you?",
    "The quick brown fox jumps over the lazy dog.",
    "What is your name? My name is Membot.",
    "I like to remember what my friends tell me.",
    "Tomorrow we will go to the market and buy some apples.",
    "Do you remember where I put my keys yesterday?",
    "The weather is sunny and warm, a perfect day for a walk.",
    "Cats and dogs are popular pets in many homes.",
    "Please tell me a short story about a brave little robot.",
    "Once upon a time there was a robot who loved to read books.",
    "She said that the meeting was moved to Friday afternoon.",
    "My favourite colour is blue, and my sister likes green.",
    "Can you help me write a letter to my grandmother?",
    "The train leaves at seven o'clock from platform four.",
    "We talked about music, movies and the best pizza in town.",
    "Numbers like 1, 2, 3, 42 and 2024 appear in text too.",
    "Good night! Sleep well and see you tomorrow morning.",
    "Why is the sky blue? Because of the way light scatters.",
    "I forgot my umbrella, so I got wet in the rain.",
    "Memory helps a chatbot keep track of facts across conversations.",
    "Yesterday I baked bread with flour, water, salt and yeast.",
    "The library opens at nine and closes at six on weekdays.",
    "Mountains, rivers and forests make the landscape beautiful.",
    "Could you summarise the last chapter of the book for me?",
    "Jupiter is the largest planet; Mercury is the smallest one.",
    "Remember to water the plants every Monday and Thursday.",
    "Learning a new language takes patience, practice and time.",
    "The concert was loud, joyful and full of dancing people.",
    "Which programming language should I learn first: Python or Rust?",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _train_byte_level_bpe(special_tokens: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE like GPT-2 / LLaMA-3 style tokenizers (no unknown tokens possible)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _init_weights(model: torch.nn.Module, std: float = INIT_STD, embed_std: float | None = None) -> None:
    """Seeded re-init with a large std so tiny models have well-separated logits.

    ``embed_std`` (GPT-2 only) sets the token/position embedding scale separately:
    a random GPT-2 with uniform std collapses into repeating one token.
    """
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                is_embedding = name.endswith(("wte.weight", "wpe.weight"))
                scale = embed_std if (embed_std is not None and is_embedding) else std
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
            elif "norm" in name or "ln_" in name or "layer_norm" in name:
                param.fill_(1.0)
            else:
                param.zero_()


def build_tiny_gpt2(folder: Path) -> Path:
    """GPT-2 (absolute position embeddings) with ``<|endoftext|>`` as bos/eos and no pad token."""
    folder = Path(folder)
    eot = "<|endoftext|>"
    raw = _train_byte_level_bpe([eot], vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        model_max_length=256,
    )
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    _init_weights(model, std=0.05, embed_std=1.0)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path, chat_template: bool = True) -> Path:
    """LLaMA with ``<s>``/``</s>`` and ChatML tokens.

    With ``chat_template`` the tokenizer gets a ChatML template and eos is
    ``<|im_end|>`` (as in SmolLM2 / Qwen chat models); pad is ``</s>`` so that pad
    and eos differ. Without it eos is ``</s>`` and there is no template. Padding
    side is left, as decoder-only batch generation needs.
    """
    folder = Path(folder)
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    raw = _train_byte_level_bpe(specials, vocab_size=420)
    bos_id = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", bos_id)],
    )
    eos = "<|im_end|>" if chat_template else "</s>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token=eos,
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
        model_max_length=256,
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(eos),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    _init_weights(model)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_t5(folder: Path) -> Path:
    """T5 encoder-decoder with a Unigram (SentencePiece-like) tokenizer.

    Specials follow T5: ``<pad>`` = 0 (also the decoder start), ``</s>`` = 1 appended
    to every encoded text, ``<unk>`` = 2. ``EOS`` is added as a plain added token the
    way GODEL's prompt format uses it as a turn separator.
    """
    folder = Path(folder)
    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer=trainer)
    eos_id = raw.token_to_id("</s>")
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>",
        pair="$A </s> $B </s>",
        special_tokens=[("</s>", eos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=256,
    )
    tokenizer.add_tokens(["EOS"])
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    _init_weights(model)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def early_stop_token(rows: list[list[int]]) -> int:
    """A token greedy emits early in some row but never in another row: used as a stop token, it ends
    rows at different steps."""
    for row in rows:
        for tok in row[1:10]:
            if any(tok not in other for other in rows):
                return tok
    raise AssertionError(f"no usable stop token in {rows}")
