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

from recursivemas.world import DOMAINS, generate, write_jsonl
from recursivemas.zoo.agents import AGENTS, TOKENIZERS, AgentSpec
from recursivemas.zoo.pretrain import generate_texts, pretrain, role_accuracy
from recursivemas.zoo.roles import BASE_ROLES, ROLES, render_prompt
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
    roles = [ROLES[name] for name in BASE_ROLES]  # fixed: new roles must not change a rebuilt tokenizer
    texts = [r.system_prompt + "\n" + r.user_prompt(rec, r.gold_fill(rec)) + "\n" + rec[r.target] for rec in records for r in roles]
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


def train_records(spec: AgentSpec, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records an agent pretrains on: all of them, or a domain expert's domain plus a share of the others."""
    if spec.domain is None:
        return list(records)
    own = [r for r in records if r["domain"] == spec.domain]
    other = [r for r in records if r["domain"] != spec.domain]
    n_other = round(len(own) * spec.off_domain_share / (1 - spec.off_domain_share))
    return own + other[:n_other]


def evaluate_specialist(spec: AgentSpec, model, tokenizer, seed: int) -> dict[str, float]:
    """Greedy accuracy of a role specialist in its own roles (validation problems of 2-3 steps)."""
    from recursivemas.zoo.tooluse import tool_accuracy

    records = generate("validation", EVAL_N, seed, steps=(2, 3))
    out: dict[str, float] = {}
    for role in spec.roles or {}:
        if role in DOMAINS:  # solve its own domain; decline the others (never claim an answer there)
            own = generate("validation", EVAL_N, seed, steps=(2, 3), domains=role)
            out[f"{role}_own_domain"] = role_accuracy(model, tokenizer, own, role)
            other = [r for r in records if r["domain"] != role][:60]
            texts = generate_texts(model, tokenizer, [render_prompt(tokenizer, ROLES[role], r) for r in other], 24)
            out[f"{role}_declines_other"] = sum(t.strip() == r[f"{role}_notes"] for t, r in zip(texts, other)) / len(other)
        elif role == "tool_caller":
            out["tool_caller_with_tool"] = tool_accuracy(model, tokenizer, records, use_tool=True)
            out["tool_caller_no_tool"] = tool_accuracy(model, tokenizer, records, use_tool=False)
            out["tool_caller_gold_plan_with_tool"] = tool_accuracy(model, tokenizer, records, use_tool=True, gold=True)
        else:
            out[f"{role}_alone"] = role_accuracy(model, tokenizer, records, role)
            out[f"{role}_gold"] = role_accuracy(model, tokenizer, records, role, gold=True)
    return out


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
    stats = pretrain(model, tokenizer, train_records(spec, data["train"]), steps, batch_size=spec.batch_size, lr=spec.lr,
                     seed=seed, log=lambda s: print(f"[{name}] {s}", flush=True), role_weights=spec.roles, drill_weight=spec.drill)
    save_agent(model, tokenizer, Path(out_dir) / name)
    model, tok = load_agent(Path(out_dir) / name)  # measure what ships (fp16 weights)
    if len(tok) != len(tokenizer):  # e.g. a family whose AutoTokenizer class re-wraps the tokenizer
        raise RuntimeError(f"{name}: the saved tokenizer loads with {len(tok)} tokens, not {len(tokenizer)}; pick another family")
    acc = evaluate_agent(model, tok, data["validation"]) if spec.roles is None else evaluate_specialist(spec, model, tok, seed // 1000)
    entry = {
        "family": spec.family, "layers": spec.num_layers, "hidden_size": spec.hidden_size, "tokenizer": spec.tokenizer,
        "vocab_size": len(tok), "chat_format": TOKENIZERS[spec.tokenizer][1], "params": sum(p.numel() for p in model.parameters()),
        "bytes": dir_size(Path(out_dir) / name), "train_steps": steps, "batch_size": spec.batch_size,
        "final_loss": round(stats["final_loss"], 4), "train_seconds": round(stats["seconds"], 1),
        "train_cpu_seconds": round(stats["cpu_seconds"], 1), "seconds": round(time.perf_counter() - t0, 1),
        "accuracy": {k: round(v, 3) for k, v in acc.items()},
    }
    if spec.roles is not None:
        entry["roles"] = sorted(spec.roles)
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
        "seed": seed, "steps_scale": steps_scale, "workers": workers, "torch_threads_per_worker": 1,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "validation": f"first {EVAL_N} validation problems of 2-3 steps, seed {seed}",
        "agents": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tok_dirs = {}
        for tname in sorted({AGENTS[n].tokenizer for n in names}):
            vocab, fmt = TOKENIZERS[tname]
            tok_dirs[tname] = str(Path(tmp) / tname)
            shipped = _shipped_tokenizer(out_dir, tname, skip=names)
            tok = AutoTokenizer.from_pretrained(shipped) if shipped else train_tokenizer(corpus, vocab, fmt)
            tok.save_pretrained(tok_dirs[tname])
        log(f"world data and tokenizers ready ({time.perf_counter() - t0:.0f}s)")
        jobs = [(n, str(out_dir), tok_dirs[AGENTS[n].tokenizer], seed * 1000 + list(AGENTS).index(n), steps_scale) for n in names]
        if workers <= 1:
            entries = [build_agent(*job, threads=1) for job in jobs]
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                entries = list(pool.map(_worker, jobs))
    new = dict(zip(names, entries))
    seconds = round(time.perf_counter() - t0, 1)
    old_file = out_dir / REPORT
    if agents is not None and old_file.is_file():  # a subset rebuild: keep the other agents' entries as they were
        old = json.loads(old_file.read_text())
        report = {**old, "agents": {**old["agents"], **new}}
        report["partial_builds"] = [*old.get("partial_builds", []), {"agents": list(names), "build_seconds": seconds, "workers": workers,
                                                                     "machine": report.get("machine")}]
    else:
        report["agents"] = new
        report["build_seconds"] = seconds
    report["agents"] = dict(sorted(report["agents"].items(), key=lambda x: list(AGENTS).index(x[0]) if x[0] in AGENTS else len(AGENTS)))
    report["total_bytes"] = sum(a["bytes"] for a in report["agents"].values())
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    log(f"zoo built in {seconds:.0f}s, {report['total_bytes'] / 1e6:.2f} MB -> {out_dir}")
    return report


def _shipped_tokenizer(out_dir: Path, tname: str, skip: Sequence[str]) -> Path | None:
    """An already built agent's folder holding tokenizer `tname`, so a subset build shares it byte for byte."""
    for name, spec in AGENTS.items():
        if spec.tokenizer == tname and name not in skip and (out_dir / name / "tokenizer.json").is_file():
            return out_dir / name
    return None


def report_markdown(report: dict[str, Any]) -> str:
    """The agents table of docs/zoo.md from a ``zoo_report.json`` (``recursivemas zoo table``)."""
    rows = [
        "| agent | family | layers | hidden | params | tokenizer (vocab, chat format) | on disk | steps | train CPU s "
        "| solver alone | solver + gold plan | learner alone | learner + gold expert |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {n: a for n, a in report["agents"].items() if "roles" not in a}
    special = {n: a for n, a in report["agents"].items() if "roles" in a}
    for name, a in base.items():
        acc = a["accuracy"]
        rows.append(
            f"| {name} | {a['family']} | {a['layers']} | {a['hidden_size']} | {a['params'] / 1e6:.2f}M "
            f"| {a['tokenizer']} ({a['vocab_size']}, {a['chat_format']}) | {a['bytes'] / 1e6:.2f} MB | {a['train_steps']} "
            f"| {a['train_cpu_seconds']:.0f} | {acc['solver_alone']:.1%} | {acc['solver_gold_plan']:.1%} "
            f"| {acc['learner_alone']:.1%} | {acc['learner_gold_expert']:.1%} |"
        )
    if special:
        rows += ["", "| agent | family | layers | hidden | params | tokenizer (vocab, chat format) | on disk | steps | train CPU s "
                 "| roles | accuracy (own roles) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, a in special.items():
            acc = ", ".join(f"{k} {v:.1%}" for k, v in a["accuracy"].items())
            rows.append(
                f"| {name} | {a['family']} | {a['layers']} | {a['hidden_size']} | {a['params'] / 1e6:.2f}M "
                f"| {a['tokenizer']} ({a['vocab_size']}, {a['chat_format']}) | {a['bytes'] / 1e6:.2f} MB | {a['train_steps']} "
                f"| {a['train_cpu_seconds']:.0f} | {', '.join(a['roles'])} | {acc} |"
            )
    rows.append(f"\nTotal on disk: {report['total_bytes'] / 1e6:.2f} MB. Build wall time: {report['build_seconds']:.0f} s "
                f"({report['workers']} worker processes, {report['machine']}).")
    for b in report.get("partial_builds", []):
        rows.append(f"Added later: {', '.join(b['agents'])} in {b['build_seconds']:.0f} s wall ({b['workers']} worker(s)).")
    return "\n".join(rows)
