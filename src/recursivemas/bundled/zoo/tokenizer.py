"""Small tokenizers trained on world text, each with its own chat template.

Two chat formats and two vocabularies, so the zoo really is heterogeneous: only vectors
cross between agents. Pre-tokenization keeps every digit, every newline and every
run of punctuation its own piece (one space may lead a word, a digit or a run), so arithmetic
is digit by digit and a prompt tokenized whole or split at its slot markers (which sit
alone on their lines) gives the same tokens. Every
printable ASCII character is in every vocabulary: no text is ever unknown.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_FORMATS = {
    # <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>
    "tags": {
        "template": (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        ),
        "eos": "<|end|>",
        "pad": "<|pad|>",
        "extra": ["<|system|>", "<|user|>", "<|assistant|>"],
    },
    # ChatML: <|im_start|>role\n...<|im_end|>\n
    "chatml": {
        "template": (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
        "eos": "<|im_end|>",
        "pad": "<|pad|>",
        "extra": ["<|im_start|>"],
    },
}

ALPHABET = sorted(set(string.printable) - set("\x0b\x0c\r"))
_PIECES = Regex(r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]+|\s")


def train_tokenizer(texts: Iterable[str], vocab_size: int, chat_format: str) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over printable ASCII with ``vocab_size`` entries (no merges when it equals the alphabet: char-level)."""
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {chat_format!r}; choose one of {', '.join(CHAT_FORMATS)}")
    fmt = CHAT_FORMATS[chat_format]
    specials = [fmt["pad"], fmt["eos"], *fmt["extra"]]
    if vocab_size < len(ALPHABET) + len(specials):
        raise ValueError(f"vocab_size {vocab_size} is below the alphabet plus special tokens ({len(ALPHABET) + len(specials)})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(_PIECES, behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=ALPHABET, limit_alphabet=len(ALPHABET), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=fmt["eos"],
        pad_token=fmt["pad"],
        additional_special_tokens=fmt["extra"],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = fmt["template"]
    fast.padding_side = "left"
    return fast
