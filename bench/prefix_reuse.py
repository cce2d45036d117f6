"""The bundled default at 3 rounds, text vs latent mode, with and without reusing each agent's prompt prefix.

    python bench/prefix_reuse.py [--limit 200] [--rounds 3] [--repeats 2] [--record]

Every agent's prompt up to its first slot (system prompt and question) is the same in every round;
``System.run(reuse_prefix=True)`` (the default) encodes it once per batch, with ``kv.encode_rows``
(the rows' shared start once, the rest in length-sorted chunks). Three arms per mode: reuse off; reuse
on with the prefixes encoded as one padded batch (the engine before ``encode_rows``, patched back in
here); reuse on as shipped. This prints accuracy (must not change), input positions and forward calls
per problem, and wall time (the fastest of ``--repeats`` interleaved runs: this machine is noisy), then
how much faster each arm makes each mode and the latent speed-up over text. One process, one torch thread.
"""

from __future__ import annotations

import argparse
import time

import torch

import recursivemas.prefix
from common import record
from recursivemas import System
from recursivemas.kv import encode_past
from recursivemas.bundled import bundled_config
from recursivemas.bundled.world import generate, is_correct
from recursivemas.slots import left_pad

ARMS = {"off": "reuse off", "batch": "on, one padded batch", "rows": "on, encode_rows"}


def _run(system: System, questions: list[str], mode: str, rounds: int, arm: str):
    shipped = recursivemas.prefix.encode_rows
    if arm == "batch":  # the engine before encode_rows: every prefix left-padded into one batch
        recursivemas.prefix.encode_rows = lambda model, rows: encode_past(model, *left_pad(rows))
    try:
        start = time.perf_counter()
        results = system.run(questions, mode=mode, rounds=rounds, batch_size=len(questions), reuse_prefix=arm != "off")
        return results, time.perf_counter() - start
    finally:
        recursivemas.prefix.encode_rows = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=200, help="Held-out test problems, run as one batch.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="Runs of every arm, interleaved; the fastest counts.")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = System.from_config(bundled_config("sequential"))
    records = generate("test", args.limit)
    questions = [r["question"] for r in records]
    system.run(questions[:8], mode="latent", rounds=1)  # warm-up

    seconds: dict[tuple[str, str], float] = {}
    outcome = {}
    for _ in range(args.repeats):
        for mode in ("text", "latent"):
            for arm in ARMS:
                results, wall = _run(system, questions, mode, args.rounds, arm)
                seconds[mode, arm] = min(wall, seconds.get((mode, arm), wall))
                outcome[mode, arm] = results
                print(f"{mode} {arm}: {wall:.2f}s", flush=True)
    rows = []
    for mode in ("text", "latent"):
        for arm, label in ARMS.items():
            results, n = outcome[mode, arm], args.limit
            accuracy = sum(is_correct(r.text, rec["answer"]) for r, rec in zip(results, records)) / n
            positions = sum(r.usage.input_positions for r in results) / n
            calls = sum(r.usage.forward_calls for r in results) / n
            rows.append(f"| {mode} | {label} | {accuracy:.1%} | {positions:.0f} | {calls:.1f} | {seconds[mode, arm]:.2f} |")
    gains = {(mode, arm): seconds[mode, "off"] / seconds[mode, arm] for mode in ("text", "latent") for arm in ("batch", "rows")}
    speedups = {arm: seconds["text", arm] / seconds["latent", arm] for arm in ARMS}
    summary = (
        f"Bundled sequential system (planner Qwen2-MoE 128, critic GPT-2 112, solver Llama 160), {args.limit} "
        f"held-out test problems as one batch, {args.rounds} rounds, m = {system.config.latent_steps}, greedy, 1 torch thread, "
        f"fastest of {args.repeats} interleaved runs per arm.\n\n"
        "| mode | prefix reuse | accuracy | input positions / problem | forward calls / problem | wall time (s) |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Against reuse off: one padded prefix batch makes text {gains['text', 'batch']:.2f}x and latent {gains['latent', 'batch']:.2f}x "
        f"faster; encode_rows makes them {gains['text', 'rows']:.2f}x and {gains['latent', 'rows']:.2f}x. "
        f"Latent over text: {speedups['off']:.2f}x without reuse, {speedups['batch']:.2f}x with one padded batch, "
        f"{speedups['rows']:.2f}x with encode_rows.\n\n"
        f"Command: `python bench/prefix_reuse.py --limit {args.limit} --rounds {args.rounds} --repeats {args.repeats}`"
    )
    print(summary)
    if args.record:
        record("Prompt-prefix reuse across rounds (`bench/prefix_reuse.py`)", summary)


if __name__ == "__main__":
    main()
