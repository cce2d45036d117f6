"""One heterogeneous sequential system, latent vs text mode at 1-3 rounds: tokens, forward calls, wall time.

    python bench/latent_vs_text.py [--latent-steps 32] [--handoff 128] [--answer 64] [--record]

Three random Llama-style models of different widths (about 40M parameters each at width 512). Random
weights would stop at random end tokens, so end-of-sequence is disabled: every text hand-off is exactly
``--handoff`` tokens and the answer ``--answer`` tokens, as the comparison intends. Targets at 3 rounds:
>= 90% fewer generated tokens and >= 3x faster than text mode.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import record, save_llama
from recursivemas import System

PROMPTS = {
    "planner": "Question: {question}\n<<FEEDBACK>>\nWrite a plan.",
    "critic": "Question: {question}\nPlan: <<PLAN>>\nCorrect the plan.",
    "solver": "Question: {question}\nRefined plan: <<REFINED_PLAN>>\nSolve it.",
}


def build(tmp: Path, widths: dict[str, int], steps: int, handoff: int, answer: int, device: str) -> System:
    agents = {
        role: {"model": str(save_llama(tmp / role, widths[role], seed=i)), "prompt": PROMPTS[role], "device": device}
        for i, role in enumerate(PROMPTS)
    }
    config = {
        "pattern": "sequential",
        "agents": agents,
        "latent_steps": steps,
        "batch_size": 1,
        "generation": {"max_new_tokens": answer, "handoff_max_new_tokens": handoff},
    }
    system = System.from_config(config)
    for agent in system.agents.values():
        agent.eos_token_ids = {-1}  # never matches: fixed-length messages
    return system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latent-steps", type=int, default=32)
    parser.add_argument("--handoff", type=int, default=128)
    parser.add_argument("--answer", type=int, default=64)
    parser.add_argument("--curve", type=int, nargs="*", default=[8, 16, 32, 48, 64, 96])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    question = " ".join(f"w{i * 37 % 30000}" for i in range(48))  # a 48-word question
    widths = {"planner": 384, "critic": 512, "solver": 448}

    with tempfile.TemporaryDirectory() as tmp:
        system = build(Path(tmp), widths, args.latent_steps, args.handoff, args.answer, args.device)
    system.run([question], mode="latent", rounds=1, latent_steps=2)  # warm-up
    lines = ["| rounds | mode | generated tokens | latent steps | forward calls | wall time (s) | token saving | speed-up |", "|---|---|---|---|---|---|---|---|"]
    for rounds in (1, 2, 3):
        text = system.run([question], mode="text", rounds=rounds)[0].usage
        latent = system.run([question], mode="latent", rounds=rounds)[0].usage
        saving = 1 - latent.generated_tokens / text.generated_tokens
        speedup = text.wall_time_s / latent.wall_time_s
        for mode, u in (("text", text), ("latent", latent)):
            extra = f"{saving:.1%} | {speedup:.2f}x" if mode == "latent" else "- | -"
            lines.append(f"| {rounds} | {mode} | {u.generated_tokens} | {u.latent_steps} | {u.forward_calls} | {u.wall_time_s:.2f} | {extra} |")
        print(lines[-2] + "\n" + lines[-1], flush=True)
    text3 = system.run([question], mode="text", rounds=3)[0].usage
    curve = ["| M | latent wall time (s) | forward calls | speed-up vs text |", "|---|---|---|---|"]
    for m in args.curve:
        u = system.run([question], mode="latent", rounds=3, latent_steps=m)[0].usage
        curve.append(f"| {m} | {u.wall_time_s:.2f} | {u.forward_calls} | {text3.wall_time_s / u.wall_time_s:.2f}x |")
        print(curve[-1], flush=True)
    summary = (
        f"Sequential system of three random Llama-style models (widths {widths}, 8 layers, vocab 32000), {args.device}; "
        f"M = {args.latent_steps}, text hand-offs of {args.handoff} tokens, {args.answer}-token answer, batch 1.\n\n"
        + "\n".join(lines)
        + f"\n\nLatent length curve at 3 rounds (text mode took {text3.wall_time_s:.2f} s):\n\n"
        + "\n".join(curve)
    )
    print(summary)
    if args.record:
        record("Latent vs text MAS (`bench/latent_vs_text.py`)", summary)


if __name__ == "__main__":
    main()
