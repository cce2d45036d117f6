"""Build the zoo end to end: world data, tokenizers, pretraining, evaluation, report.

``build(out_dir, seed)`` is what ``recursivemas zoo build`` runs. Everything derives from the
seed: the same seed on the same machine gives the same files (thread count and CPU kind can
change float rounding, so another machine may differ in the last bits).
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recursivemas.machine import describe as describe_machine
from recursivemas.bundled.world import DOMAINS, generate, write_jsonl
from recursivemas.bundled.zoo.agents import AGENTS, TOKENIZERS, AgentSpec
from recursivemas.bundled.zoo.pretrain import facts_accuracy, generate_texts, pretrain, role_accuracy
from recursivemas.bundled.zoo.roles import ANSWER_ROLES, BASE_ROLES, ROLES, render_prompt
from recursivemas.bundled.zoo.tokenizer import train_tokenizer

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo_models"  # where the bundled zoo ships
REPORT = "zoo_report.json"
# Training mix: the world's default 2-3 step problems, plus some 4-step ones for robustness.
TRAIN_SHORT, TRAIN_LONG = 16000, 4000
EVAL_N = 200


def world_data(seed: int) -> dict[str, list[dict[str, Any]]]:
    """The records the zoo is trained and measured on (validation: the world's default 2-3 step problems).

    ``train`` holds the world's facts (for the roles that know them), ``told`` the same kind of problems with
    random facts (for the roles that must be told).
    """
    def train(facts: str) -> list[dict[str, Any]]:
        return generate("train", TRAIN_SHORT, seed, facts=facts) + generate("train", TRAIN_LONG, seed, steps=4, facts=facts)

    return {"train": train("world"), "told": train("random"), "validation": generate("validation", EVAL_N, seed)}


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


def evaluate_agent(model, tokenizer, records: Sequence[dict[str, Any]], roles: Sequence[str] = ("solver",),
                   seed: int = 0) -> dict[str, float]:
    """Greedy accuracy of an agent in each of its roles on world validation problems.

    Answer roles: graded answers with the slots empty (``alone``), holding the upstream gold text (``gold``) or only
    its facts line (``facts``). Knowing roles: the share whose first line is the gold facts line (``facts``). The
    critic: the share of exact equations with the gold plan in its slot. Domain experts: their domain's facts, and
    the share of exact declines on other domains. The tool-caller: graded with and without the python tool.
    """
    from recursivemas.bundled.zoo.tooluse import tool_accuracy

    out: dict[str, float] = {}
    for k, role in enumerate(roles):
        if role == "tool_caller":
            out["tool_caller_alone_with_tool"] = tool_accuracy(model, tokenizer, records, use_tool=True)
            out["tool_caller_gold_with_tool"] = tool_accuracy(model, tokenizer, records, use_tool=True, gold=True)
            out["tool_caller_gold_no_tool"] = tool_accuracy(model, tokenizer, records, use_tool=False, gold=True)
        elif role in ANSWER_ROLES and not ROLES[role].knows:
            for fill in ("none", "gold", "facts") if k == 0 else ("gold",):  # all three for the main role
                out[f"{role}_{'alone' if fill == 'none' else fill}"] = role_accuracy(model, tokenizer, records, role, fill)
        elif role in DOMAINS:
            own = generate("validation", EVAL_N, seed, domains=role)
            out[f"{role}_own_facts"] = facts_accuracy(model, tokenizer, own, role)
            other = [r for r in records if r["domain"] != role][:60]
            texts = generate_texts(model, tokenizer, [render_prompt(tokenizer, ROLES[role], r) for r in other], 24)
            out[f"{role}_declines_other"] = sum(t.strip() == r[f"{role}_notes"] for t, r in zip(texts, other)) / len(other)
        elif role == "critic":
            texts = generate_texts(model, tokenizer, [render_prompt(tokenizer, ROLES[role], r, ROLES[role].gold_fill(r)) for r in records], 64)
            out["critic_gold_exact"] = sum(t.strip() == r["refined_plan"] for t, r in zip(texts, records)) / len(records)
            texts = generate_texts(model, tokenizer, [render_prompt(tokenizer, ROLES[role], r, ROLES[role].facts_fill(r)) for r in records], 64)
            out["critic_facts_exact"] = sum(t.strip() == r["refined_plan"] for t, r in zip(texts, records)) / len(records)
        elif ROLES[role].requests:  # the clerk: the world's fact for a request with a guessed value; silence when unasked
            told = generate("validation", EVAL_N, seed, facts="random")
            out[f"{role}_request_facts"] = facts_accuracy(model, tokenizer, told, role, "facts")
            out[f"{role}_request_whole"] = facts_accuracy(model, tokenizer, told, role, "gold")
            texts = generate_texts(model, tokenizer, [render_prompt(tokenizer, ROLES[role], r) for r in told[:60]], 16)
            out[f"{role}_silent_unasked"] = sum(not t.strip() for t in texts) / len(texts)
        else:  # a knowing role: does it state the world's fact?
            out[f"{role}_facts"] = facts_accuracy(model, tokenizer, records, role)
            if role in ANSWER_ROLES:
                out[f"{role}_alone"] = role_accuracy(model, tokenizer, records, role, max_new_tokens=96)
    return out


def train_records(spec: AgentSpec, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records an agent pretrains on: all of them, or a domain expert's domain plus a share of the others."""
    if spec.domain is None:
        return list(records)
    own = [r for r in records if r["domain"] == spec.domain]
    other = [r for r in records if r["domain"] != spec.domain]
    n_other = round(len(own) * spec.off_domain_share / (1 - spec.off_domain_share))
    return own + other[:n_other]


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
                     seed=seed, log=lambda s: print(f"[{name}] {s}", flush=True), role_weights=spec.roles, drill_weight=spec.drill,
                     told_records=train_records(spec, data["told"]))
    save_agent(model, tokenizer, Path(out_dir) / name)
    model, tok = load_agent(Path(out_dir) / name)  # measure what ships (fp16 weights)
    if len(tok) != len(tokenizer):  # e.g. a family whose AutoTokenizer class re-wraps the tokenizer
        raise RuntimeError(f"{name}: the saved tokenizer loads with {len(tok)} tokens, not {len(tokenizer)}; pick another family")
    acc = evaluate_agent(model, tok, data["validation"], list(spec.roles or BASE_ROLES), seed // 1000)
    entry = {
        "family": spec.family, "layers": spec.num_layers, "hidden_size": spec.hidden_size, "tokenizer": spec.tokenizer,
        "vocab_size": len(tok), "chat_format": TOKENIZERS[spec.tokenizer][1], "params": sum(p.numel() for p in model.parameters()),
        "bytes": dir_size(Path(out_dir) / name), "train_steps": steps, "batch_size": spec.batch_size,
        "final_loss": round(stats["final_loss"], 4), "train_seconds": round(stats["seconds"], 1),
        "train_cpu_seconds": round(stats["cpu_seconds"], 1), "seconds": round(time.perf_counter() - t0, 1),
        "accuracy": {k: round(v, 3) for k, v in acc.items()},
    }
    entry["roles"] = sorted(spec.roles or BASE_ROLES)
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
        "machine": describe_machine(load=False, threads=1), "validation": f"first {EVAL_N} validation problems of 2-3 steps, seed {seed}",
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
    rows = ["| agent | family | layers | hidden | params | tokenizer (vocab, chat format) | on disk | steps | train CPU s "
            "| roles | accuracy (validation) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in report["agents"].items():
        acc = ", ".join(f"{k} {v:.1%}" for k, v in a["accuracy"].items())
        rows.append(
            f"| {name} | {a['family']} | {a['layers']} | {a['hidden_size']} | {a['params'] / 1e6:.2f}M "
            f"| {a['tokenizer']} ({a['vocab_size']}, {a['chat_format']}) | {a['bytes'] / 1e6:.2f} MB | {a['train_steps']} "
            f"| {a['train_cpu_seconds']:.0f} | {', '.join(a.get('roles', []))} | {acc} |"
        )
    wall = f"{report['build_seconds']:.0f} s" if report.get("build_seconds") else "see pieces"
    rows.append(f"\nTotal on disk: {report['total_bytes'] / 1e6:.2f} MB. Build wall time: {wall} "
                f"({report['workers']} worker processes, {report['machine']}).")
    for name, piece in report.get("pieces", {}).items():
        rows.append(f"Built alone: {name} in {piece['build_seconds']:.0f} s wall.")
    if report.get("note"):
        rows.append(report["note"] + ".")
    for b in report.get("partial_builds", []):
        rows.append(f"Added later: {', '.join(b['agents'])} in {b['build_seconds']:.0f} s wall ({b['workers']} worker(s)).")
    return "\n".join(rows)
