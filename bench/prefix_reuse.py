"""The bundled default at 3 rounds, text vs latent mode, with and without reusing each agent's prompt prefix.

    python bench/prefix_reuse.py [--limit 200] [--rounds 3] [--record]

Every agent's prompt up to its first slot (system prompt and question) is the same in every round;
``System.run(reuse_prefix=True)`` (the default) encodes it once per batch. This prints, for both modes
with reuse off and on: accuracy (must not change), input positions and forward calls per problem, and
wall time, then the two ratios that matter: how much faster reuse makes each mode, and the latent
speed-up over text with and without it. All arms run in one process, one after another, on one torch
thread (the bundled agents run fastest on one).
"""

from __future__ import annotations

import argparse
import time

import torch

from common import record
from recursivemas import System
from recursivemas.bundled import bundled_config
from recursivemas.bundled.world import generate, is_correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=200, help="Held-out test problems, run as one batch.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = System.from_config(bundled_config("sequential"))
    records = generate("test", args.limit)
    questions = [r["question"] for r in records]
    system.run(questions[:8], mode="latent", rounds=1)  # warm-up

    rows, seconds = [], {}
    for mode in ("text", "latent"):
        for reuse in (False, True):
            start = time.perf_counter()
            results = system.run(questions, mode=mode, rounds=args.rounds, batch_size=len(questions), reuse_prefix=reuse)
            seconds[mode, reuse] = time.perf_counter() - start
            n = len(results)
            accuracy = sum(is_correct(r.text, rec["answer"]) for r, rec in zip(results, records)) / n
            positions = sum(r.usage.input_positions for r in results) / n
            calls = sum(r.usage.forward_calls for r in results) / n
            rows.append(f"| {mode} | {'on' if reuse else 'off'} | {accuracy:.1%} | {positions:.0f} | {calls:.1f} | {seconds[mode, reuse]:.2f} |")
            print(rows[-1], flush=True)
    gains = {mode: seconds[mode, False] / seconds[mode, True] for mode in ("text", "latent")}
    speedups = {reuse: seconds["text", reuse] / seconds["latent", reuse] for reuse in (False, True)}
    summary = (
        f"Bundled sequential system (planner Qwen2-MoE 128, critic GPT-2 112, solver Llama 160), {args.limit} "
        f"held-out test problems as one batch, {args.rounds} rounds, m = {system.config.latent_steps}, greedy, 1 torch thread.\n\n"
        "| mode | prefix reuse | accuracy | input positions / problem | forward calls / problem | wall time (s) |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Reuse makes text mode {gains['text']:.2f}x and latent mode {gains['latent']:.2f}x faster. "
        f"Latent over text: {speedups[False]:.2f}x without reuse, {speedups[True]:.2f}x with it.\n\n"
        f"Command: `python bench/prefix_reuse.py --limit {args.limit} --rounds {args.rounds}`"
    )
    print(summary)
    if args.record:
        record("Prompt-prefix reuse across rounds (`bench/prefix_reuse.py`)", summary)


if __name__ == "__main__":
    main()
