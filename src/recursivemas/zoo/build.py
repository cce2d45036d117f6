"""Build the zoo end to end: world data, tokenizers, pretraining, evaluation, report.

``build(out_dir, seed)`` is what ``recursivemas zoo build`` runs. Everything derives from the
seed: the same seed on the same machine gives the same files (thread count and CPU kind can
change float rounding, so another machine may differ in the last bits).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recursivemas.world import generate, write_jsonl
from recursivemas.zoo.agents import AGENTS, TOKENIZERS
from recursivemas.zoo.pretrain import pretrain, role_accuracy
from recursivemas.zoo.roles import ROLES
from recursivemas.zoo.tokenizer import train_tokenizer

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo_models"  # where the bundled zoo ships
REPORT = "zoo_report.json"
# Training mix: short chains are over-represented because the bundled evaluation uses 2-3 steps.
TRAIN_SHORT, TRAIN_LONG = 14000, 8000
EVAL_N = 200


def world_data(seed: int) -> dict[str, list[dict[str, Any]]]:
    """The records the zoo is trained and measured on (validation: 2-3 step problems)."""
    return {
        "train": generate("train", TRAIN_SHORT, seed, steps=(2, 3)) + generate("train", TRAIN_LONG, seed, steps=(4, 5)),
        "validation": generate("validation", EVAL_N, seed, steps=(2, 3)),
    }


def tokenizer_corpus(records: Sequence[dict[str, Any]]) -> list[str]:
    """Role texts (prompts with gold slots, system prompts, targets) plus the chat-template role names."""
    texts = [r.system_prompt + "\n" + r.user_prompt(rec, r.gold_fill(rec)) + "\n" + rec[r.target] for rec in records for r in ROLES.values()]
    return texts + ["system\nuser\nassistant\n"] * 100


def dir_size(path: str | Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_agent(model, tokenizer, out: Path) -> None:
    """Save weights as fp16 (half the bytes) with config dtype float32, so a plain load gives float32."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float16)
    model.save_pretrained(out)
    model.to(torch.float32)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)


def load_agent(path: str | Path):
    """(model, tokenizer) of a zoo agent directory, as float32 in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def evaluate_agent(model, tokenizer, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Greedy accuracy playing each answer-writing role alone (slots empty) and with gold upstream text."""
    return {
        "solver_alone": role_accuracy(model, tokenizer, records, "solver"),
        "solver_gold_plan": role_accuracy(model, tokenizer, records, "solver", gold=True),
        "learner_alone": role_accuracy(model, tokenizer, records, "learner"),
        "learner_gold_expert": role_accuracy(model, tokenizer, records, "learner", gold=True),
    }


def build_agent(name: str, out_dir: str, tokenizer_dir: str, seed: int, steps_scale: float, threads: int) -> dict[str, Any]:
    """Pretrain one agent, save it, measure the saved copy; returns its report entry. Runs in a worker process."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    spec = AGENTS[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = world_data(seed)
    torch.manual_seed(seed)
    config = spec.config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    steps = max(1, round(spec.steps * steps_scale))
    stats = pretrain(model, tokenizer, data["train"], steps, batch_size=spec.batch_size, lr=spec.lr, seed=seed,
                     log=lambda s: print(f"[{name}] {s}", flush=True))
    save_agent(model, tokenizer, Path(out_dir) / name)
    model, tok = load_agent(Path(out_dir) / name)  # measure what ships (fp16 weights)
    acc = evaluate_agent(model, tok, data["validation"])
    entry = {
        "family": spec.family, "layers": spec.num_layers, "hidden_size": spec.hidden_size, "tokenizer": spec.tokenizer,
        "vocab_size": len(tok), "chat_format": TOKENIZERS[spec.tokenizer][1], "params": sum(p.numel() for p in model.parameters()),
        "bytes": dir_size(Path(out_dir) / name), "train_steps": steps, "batch_size": spec.batch_size,
        "final_loss": round(stats["final_loss"], 4), "train_seconds": round(stats["seconds"], 1),
        "train_cpu_seconds": round(stats["cpu_seconds"], 1), "seconds": round(time.perf_counter() - t0, 1),
        "accuracy": {k: round(v, 3) for k, v in acc.items()},
    }
    print(f"[{name}] done in {entry['seconds']:.0f}s: {json.dumps(entry['accuracy'])}", flush=True)
    return entry


def _worker(job: tuple) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return build_agent(*job, threads=1)


def build(
    out_dir: str | Path = ZOO_DIR,
    seed: int = 0,
    *,
    agents: Sequence[str] | None = None,
    steps_scale: float = 1.0,
    data_dir: str | Path | None = None,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Rebuild the zoo into `out_dir` (one HF model directory per agent plus ``zoo_report.json``).

    Agents train in `workers` processes of one torch thread each (largest first): on a small
    shared CPU this beats one process with several threads, whose threads wait on each other.
    """
    t0 = time.perf_counter()
    names = sorted(agents or AGENTS, key=lambda n: -AGENTS[n].steps * AGENTS[n].hidden_size)
    for n in names:
        if n not in AGENTS:
            raise ValueError(f"unknown zoo agent {n!r}; choose from {', '.join(AGENTS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = world_data(seed)
    if data_dir is not None:
        for split, recs in data.items():
            write_jsonl(recs, Path(data_dir) / f"{split}.jsonl")
    corpus = tokenizer_corpus(data["train"][:1500])
    report: dict[str, Any] = {
        "seed": seed, "steps_scale": steps_scale, "workers": workers, "torch_threads_per_worker": 1 if workers > 1 else 2,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "validation": f"first {EVAL_N} validation problems of 2-3 steps, seed {seed}",
        "agents": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tok_dirs = {}
        for tname in sorted({AGENTS[n].tokenizer for n in names}):
            vocab, fmt = TOKENIZERS[tname]
            tok_dirs[tname] = str(Path(tmp) / tname)
            train_tokenizer(corpus, vocab, fmt).save_pretrained(tok_dirs[tname])
        log(f"world data and tokenizers ready ({time.perf_counter() - t0:.0f}s)")
        jobs = [(n, str(out_dir), tok_dirs[AGENTS[n].tokenizer], seed * 1000 + list(AGENTS).index(n), steps_scale) for n in names]
        if workers <= 1:
            entries = [build_agent(*job, threads=2) for job in jobs]
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                entries = list(pool.map(_worker, jobs))
    report["agents"] = {n: e for n, e in sorted(zip(names, entries), key=lambda x: list(AGENTS).index(x[0]))}
    report["total_bytes"] = sum(a["bytes"] for a in report["agents"].values())
    report["build_seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    log(f"zoo built in {report['build_seconds']:.0f}s, {report['total_bytes'] / 1e6:.2f} MB -> {out_dir}")
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The agents table of docs/zoo.md from a ``zoo_report.json`` (``recursivemas zoo table``)."""
    rows = [
        "| agent | family | layers | hidden | params | tokenizer (vocab, chat format) | on disk | steps | train CPU s "
        "| solver alone | solver + gold plan | learner alone | learner + gold expert |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in report["agents"].items():
        acc = a["accuracy"]
        rows.append(
            f"| {name} | {a['family']} | {a['layers']} | {a['hidden_size']} | {a['params'] / 1e6:.2f}M "
            f"| {a['tokenizer']} ({a['vocab_size']}, {a['chat_format']}) | {a['bytes'] / 1e6:.2f} MB | {a['train_steps']} "
            f"| {a['train_cpu_seconds']:.0f} | {acc['solver_alone']:.1%} | {acc['solver_gold_plan']:.1%} "
            f"| {acc['learner_alone']:.1%} | {acc['learner_gold_expert']:.1%} |"
        )
    rows.append(f"\nTotal on disk: {report['total_bytes'] / 1e6:.2f} MB. Build wall time: {report['build_seconds']:.0f} s "
                f"({report['workers']} worker processes, {report['machine']}).")
    return "\n".join(rows)
