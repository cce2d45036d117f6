"""Real pretrained models (gemma-3-270m reader, SmolLM2-135M-Instruct answerer, docs/real_models.md).

    python bench/real_models.py [--part speed,rollout,train] [--problems 16] [--train-steps 3]

- speed: latent vs text MAS at 1, 2 and 3 rounds on the bundled real system (generated tokens, wall
  time per problem, ratios), each pair measured back to back;
- rollout: KV-cached latent rollout vs re-encoding the whole sequence at every step, prompt 256 tokens,
  m = 32, batch 1, on each model (LatentMAS inner links);
- train: the training cost of the outer links vs LoRA vs full fine-tuning of the answerer, each method
  in its own process (`python -m recursivemas train`) so that peak memory is its own: trainable
  parameters, peak memory, seconds per step.

Prints markdown tables with the date and machine; the CPU may be shared, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from recursivemas import facts, real  # noqa: E402
from recursivemas.links import LatentMASLink  # noqa: E402
from recursivemas.rollout import latent_rollout, reencode_rollout  # noqa: E402


def bench_speed(system, problems: int) -> str:
    records = facts.generate("test", problems)
    speeds = {r: real.speed(system, records, r) for r in (1, 2, 3)}
    return real.speed_table(speeds)


def bench_rollout(system, prompt: int = 256, steps: int = 32) -> str:
    lines = ["| model | prompt | m | KV cache s | re-encoding s | speed-up | max abs diff |", "|---|---|---|---|---|---|---|"]
    for name in ("reader", "answerer"):
        agent = system.agents[name]
        link = LatentMASLink.from_model(agent.model)
        words = " ".join(facts.generate("train", 40)[i]["passage"] for i in range(40))
        ids = agent.encode(words)[:prompt]
        embeds = agent.embed(ids).unsqueeze(0)
        sync = torch.cuda.synchronize if embeds.device.type == "cuda" else (lambda: None)  # time the work, not its launch
        with torch.no_grad():
            latent_rollout(agent.model, link, embeds, None, steps=2)  # warm-up
            sync()
            t0 = time.perf_counter()
            cached = latent_rollout(agent.model, link, embeds, None, steps=steps)
            sync()
            t1 = time.perf_counter()
            full = reencode_rollout(agent.model, link, embeds, None, steps=steps)
            sync()
            t2 = time.perf_counter()
        diff = (cached - full).abs().max().item()
        lines.append(f"| {type(agent.model).__name__} ({name}) | {len(ids)} | {steps} | {t1 - t0:.2f} | {t2 - t1:.2f} | {(t2 - t1) / (t1 - t0):.1f}x | {diff:.1e} |")
    return "\n".join(lines)


def bench_train(steps: int, batch: int, data: dict | None = None) -> str:
    """Each method in its own process on the system ``data`` (default: the bundled real system, untrained links)."""
    lines = ["| method | trainable parameters | peak train memory (MB) | s/step |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if data is None:  # pkg: model names resolve anywhere
            data = yaml.safe_load(real.CONFIG.read_text())
            data["links"] = {**data["links"], "checkpoint": None}
        system = tmp / "system.yaml"
        system.write_text(yaml.safe_dump(data))
        train = tmp / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in facts.generate("train", 64)))
        held = tmp / "eval.jsonl"
        held.write_text("".join(json.dumps(r) + "\n" for r in facts.generate("validation", 4)))
        for method in ("recursivemas", "lora", "full"):
            out = tmp / method
            cmd = [sys.executable, "-m", "recursivemas", "train", "--system", str(system), "--data", str(train), "--eval-data", str(held),
                   "--out", str(out), "--method", method, "--steps", str(steps), "--batch-size", str(batch), "--lr", "1e-4",
                   "--checkpoint-every", str(10**6), "--no-progress"]
            if method == "recursivemas":
                cmd += ["--stage", "outer", "--latent-source", "rollout"]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                lines.append(f"| {method} | failed: {done.stderr.strip().splitlines()[-1][:120]} | | |")
                continue
            stages = json.loads((out / "summary.json").read_text())["stages"]
            stage = stages["outer" if method == "recursivemas" else method]
            lines.append(f"| {'links (outer)' if method == 'recursivemas' else method} | {stage['trainable_params']:,} | "
                         f"{stage['peak_train_memory_mb']:.0f} | {stage['time_per_step_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="speed,rollout,train")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = args.part.split(",")
    print(f"# Real models ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    system = real.load() if {"speed", "rollout"} & set(parts) else None
    if "speed" in parts:
        print(f"## Latent vs text MAS ({args.problems} test problems)\n\n{bench_speed(system, args.problems)}\n", flush=True)
    if "rollout" in parts:
        print(f"## KV rollout vs re-encoding\n\n{bench_rollout(system)}\n", flush=True)
    if "train" in parts:
        print(f"## Training cost ({args.train_steps} steps, batch {args.batch_size})\n\n{bench_train(args.train_steps, args.batch_size)}\n", flush=True)
    print(f"Machine: {machine()}.")


if __name__ == "__main__":
    main()
