"""Training cost on one tiny system: RecursiveMAS links vs LoRA vs full fine-tuning (the paper's Table 5 shape).

    python bench/train_cost.py [--steps 60] [--eval-every 10] [--target-loss X] [--record]

One heterogeneous sequential system (Llama planner, Qwen2-MoE critic, GPT-2 solver, width 64, random
weights at ``initializer_range=0.2`` so outputs depend on inputs) and short synthetic arithmetic
records. RecursiveMAS trains its links (``--inner-steps`` inner-loop steps, then ``--steps`` outer-loop
steps); the baselines fine-tune the decoding agent alone for ``--steps`` steps on the same records.
Each method runs in its own fresh process (``python -m recursivemas train``), so peak memory is that
process's own (see ``recursivemas.train.cost``). Reported: trainable parameters, weights of the models
the method runs, peak training memory above them, time per step, held-out answer loss and token
accuracy, and the training time each method needs to reach a held-out answer loss (by default the
loosest level all three reach). Ratios are against RecursiveMAS, from one run. With ``--record`` the
table is appended to docs/benchmarks.md under "Training cost".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import record
from recursivemas.tiny import save_tiny_agent
from recursivemas.train import synthetic_records
from recursivemas.bundled.world import write_jsonl

PROMPTS = {
    "planner": ("llama", "Question: {question}\n<<FEEDBACK>>\nWrite a plan."),
    "critic": ("qwen2_moe", "Question: {question}\nPlan: <<PLAN>>\nImprove the plan."),
    "solver": ("gpt2", "Question: {question}\nRefined plan: <<REFINED_PLAN>>\nSolve it."),
}
METHODS = ("recursivemas", "lora", "full")


def build(tmp: Path, width: int, n_train: int, n_eval: int) -> tuple[Path, Path, Path]:
    agents = {}
    for i, (role, (family, prompt)) in enumerate(PROMPTS.items()):
        style = "header" if family == "gpt2" else "im"
        path = save_tiny_agent(tmp / role, family, width, style, seed=i, initializer_range=0.2)
        agents[role] = {"model": str(path), "prompt": prompt}
    system = tmp / "system.yaml"
    system.write_text(yaml.safe_dump({"name": "bench-train", "pattern": "sequential", "agents": agents, "rounds": 2, "latent_steps": 4}))
    return system, write_jsonl(synthetic_records(n_train, seed=0), tmp / "train.jsonl"), write_jsonl(synthetic_records(n_eval, seed=1), tmp / "eval.jsonl")


def run_method(method: str, files: tuple[Path, Path, Path], out: Path, args: argparse.Namespace) -> dict:
    system, train, held = files
    lr = {"recursivemas": args.lr_links, "lora": args.lr_lora, "full": args.lr_full}[method]
    if method == "recursivemas":  # inner_steps lives in the system file's training section
        data = yaml.safe_load(system.read_text())
        data["training"] = {"inner_steps": args.inner_steps}
        system = out.parent / "system_links.yaml"
        system.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "recursivemas", "train", "--system", str(system), "--data", str(train), "--eval-data", str(held),
           "--out", str(out), "--method", method, "--steps", str(args.steps), "--lr", str(lr), "--batch-size", str(args.batch_size),
           "--eval-every", str(args.eval_every), "--checkpoint-every", str(args.steps), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    stages = summary["stages"]
    last = stages["outer" if method == "recursivemas" else method]
    offset = stages["inner"]["train_time_s"] if method == "recursivemas" else 0.0
    curve = [(e["step"], offset + e["train_time_s"], e["eval"]["answer_loss"]) for e in log if "eval" in e and "answer_loss" in e["eval"]]
    return {
        "method": method,
        "trainable_params": sum(s["trainable_params"] for s in stages.values()),
        "weights_mb": last["weights_mb"],
        "peak_train_mb": max(s["peak_train_memory_mb"] for s in stages.values()),
        "memory_measure": last["memory_measure"],
        "time_per_step_s": last["time_per_step_s"],
        "train_time_s": sum(s["train_time_s"] for s in stages.values()),
        "answer_loss": last["eval"]["answer_loss"],
        "answer_token_acc": last["eval"]["answer_token_acc"],
        "curve": curve,
        "machine": summary["machine"],
    }


def time_to(curve: list[tuple[int, float, float]], target: float) -> float | None:
    return next((t for _, t, loss in curve if loss <= target), None)


def table(results: dict[str, dict], target: float, args: argparse.Namespace) -> str:
    base = results["recursivemas"]
    names = {"recursivemas": "RecursiveMAS (links)", "lora": f"LoRA r={8} (decoder)", "full": "Full FT (decoder)"}
    lines = [
        f"Sequential system (Llama / Qwen2-MoE / GPT-2, width {args.width}, random weights), {args.train} training records, "
        f"{args.eval} held out, global batch {args.batch_size}, {args.steps} steps per method (RecursiveMAS: {args.inner_steps} "
        f"inner + {args.steps} outer), {args.threads} torch thread(s), one fresh process per method. Peak train memory: growth "
        f"of the process's resident-set high-water mark during training ({base['memory_measure']}); weights: the models the method runs.",
        "",
        "| method | trainable params | weights MiB | peak train MiB | s/step | held-out answer loss | token acc | "
        f"train s to loss <= {target:.3f} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        r = results[m]
        reach = time_to(r["curve"], target)
        lines.append(
            f"| {names[m]} | {r['trainable_params']:,} | {r['weights_mb']:.2f} | {r['peak_train_mb']:.1f} | {r['time_per_step_s']:.3f} | "
            f"{r['answer_loss']:.3f} | {r['answer_token_acc']:.3f} | {'-' if reach is None else f'{reach:.1f}'} |"
        )
    lines += ["", "Ratios to RecursiveMAS (method / RecursiveMAS):", "", "| method | trainable params | peak train memory | s/step | time to target loss |", "|---|---|---|---|---|"]
    base_reach = time_to(base["curve"], target)
    for m in ("lora", "full"):
        r = results[m]
        reach = time_to(r["curve"], target)
        ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}x"  # noqa: E731
        lines.append(
            f"| {names[m]} | {ratio(r['trainable_params'], base['trainable_params'])} | {ratio(r['peak_train_mb'], base['peak_train_mb'])} | "
            f"{ratio(r['time_per_step_s'], base['time_per_step_s'])} | {ratio(reach, base_reach)} |"
        )
    lines += ["", f"Command: `python bench/train_cost.py --steps {args.steps} --inner-steps {args.inner_steps} --eval-every {args.eval_every}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--inner-steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--eval", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr-links", type=float, default=3e-3)
    parser.add_argument("--lr-lora", type=float, default=3e-3)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target-loss", type=float, default=None, help="default: the loosest final held-out loss of the three")
    parser.add_argument("--record", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = build(tmp, args.width, args.train, args.eval)
        results = {m: run_method(m, files, tmp / m, args) for m in METHODS}
    target = args.target_loss if args.target_loss is not None else max(min(loss for _, _, loss in r["curve"]) for r in results.values())
    body = table(results, target, args)
    print(body)
    print(json.dumps({m: {k: v for k, v in r.items() if k != "curve"} for m, r in results.items()}, indent=1))
    if args.record:
        record("Training cost", body)


if __name__ == "__main__":
    main()
