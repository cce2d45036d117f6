"""Tiny real Hugging Face models and tokenizers built from configs, with random weights.

Used by the tests, the benchmarks and the placeholder demo system: real architectures (Llama with
grouped-query attention, Qwen2, Qwen2-MoE, Mixtral, GPT-2, Gemma) at toy sizes, saved as ordinary
model directories so they go through the same ``from_pretrained`` path as real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

FAMILIES = ("llama", "qwen2", "qwen2_moe", "mixtral", "gpt2", "gemma")

# Two chat formats, so heterogeneous systems really have different templates.
CHAT_TEMPLATES = {
    "im": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "header": (
        "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}<|sep|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|start|>assistant<|sep|>{% endif %}"
    ),
}
_SPECIALS = {
    "im": {"bos": "<|bos|>", "eos": "<|im_end|>", "pad": "<|pad|>", "extra": ["<|im_start|>"]},
    "header": {"bos": "<s>", "eos": "<|end|>", "pad": "<pad>", "extra": ["<|start|>", "<|sep|>"]},
}
_CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have? Plan: add 3 and 4. Answer: 7",
    "A train travels 60 miles in 2 hours. What is its speed? Speed is distance over time: 60 / 2 = 30.",
    "You are a planner. Break the problem into steps. You are a critic. Check the plan. You are a solver.",
    "The answer is 42. #### 42. First multiply, then subtract, then divide by two.",
] * 4


def build_tokenizer(style: str = "im", vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (never an unknown token) with a chat template."""
    specials = _SPECIALS[style]
    special_tokens = [specials["bos"], specials["eos"], specials["pad"], *specials["extra"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        pad_token=specials["pad"],
        additional_special_tokens=specials["extra"],
    )
    fast.chat_template = CHAT_TEMPLATES[style]
    return fast


def tiny_config(family: str, vocab_size: int, hidden_size: int = 64, num_layers: int = 2, **overrides):
    """A config of the given family at toy size (4 attention heads; GQA with 2 key/value heads where supported)."""
    heads = 4
    common = dict(vocab_size=vocab_size, tie_word_embeddings=False)
    if family == "gpt2":
        kwargs = dict(n_embd=hidden_size, n_layer=num_layers, n_head=heads, n_positions=1024, **common)
    else:
        kwargs = dict(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            head_dim=hidden_size // heads,
            **common,
        )
        if family == "qwen2_moe":
            kwargs.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size, shared_expert_intermediate_size=hidden_size)
        elif family == "mixtral":
            kwargs.update(num_local_experts=4, num_experts_per_tok=2)
        elif family not in ("llama", "qwen2", "gemma"):
            raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")
    kwargs.update(overrides)
    return AutoConfig.for_model(family, **kwargs)


def build_tiny_model(family: str, tokenizer: PreTrainedTokenizerFast, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, **overrides):
    """A randomly initialised causal LM of ``family`` sized for ``tokenizer``."""
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = tiny_config(family, len(tokenizer), hidden_size, num_layers, **ids, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny_agent(
    out_dir: str | Path, family: str, hidden_size: int = 64, tokenizer_style: str = "im", num_layers: int = 2, seed: int = 0, **overrides
) -> Path:
    """Build and save a tiny agent (model + tokenizer) to ``out_dir``; returns the directory."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(tokenizer_style)
    model = build_tiny_model(family, tokenizer, hidden_size, num_layers, seed, **overrides)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_word_tokenizer(vocab_size: int, style: str = "im") -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ``vocab_size`` synthetic words (``w0 w1 ...``) for benchmark-sized models.

    Every id decodes to a word that re-encodes to the same id, so a text hand-off of n tokens costs the
    receiver n positions, as with a real tokenizer.
    """
    specials = _SPECIALS[style]
    special_tokens = [specials["bos"], specials["eos"], specials["pad"], *specials["extra"]]
    words = [*special_tokens, "[UNK]"] + [f"w{i}" for i in range(vocab_size - len(special_tokens) - 1)]
    vocab = {word: i for i, word in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        pad_token=specials["pad"],
        unk_token="[UNK]",
        additional_special_tokens=specials["extra"],
    )
    fast.chat_template = CHAT_TEMPLATES[style]
    return fast
