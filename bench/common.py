"""Shared helpers for the benchmark scripts: benchmark-sized random models and recording results."""

from __future__ import annotations

from datetime import date
from pathlib import Path


from recursivemas.machine import describe as machine  # noqa: F401 - the benches' one machine line
from recursivemas.tiny import build_tiny_model, build_word_tokenizer

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def save_llama(out_dir: Path, hidden: int, layers: int = 8, vocab: int = 32000, seed: int = 0) -> Path:
    """A random Llama-style model (GQA, RoPE) of about 40M parameters at hidden 512, saved with a word tokenizer."""
    tokenizer = build_word_tokenizer(vocab)
    model = build_tiny_model(
        "llama", tokenizer, hidden_size=hidden, num_layers=layers, seed=seed, intermediate_size=int(hidden * 2.6875), tie_word_embeddings=True
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def record(section: str, body: str) -> None:
    """Append a dated section to docs/benchmarks.md."""
    BENCHMARKS_MD.parent.mkdir(exist_ok=True)
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text("# Benchmarks\n\nEvery figure here was printed by a script in `bench/`; ratios come from one run.\n")
    with BENCHMARKS_MD.open("a") as f:
        f.write(f"\n## {section} ({date.today().isoformat()})\n\nMachine: {machine()}\n\n{body.strip()}\n")
