"""A bundled system at 3 rounds, text vs latent mode, with and without reusing each agent's prompt prefix.

    python bench/prefix_reuse.py [--system sequential|real] [--limit 200] [--batch-size N] [--rounds 3] [--repeats 2] [--record]

``--system real`` is the bundled real system (gemma-3-270m reader, whose sliding-window layers ``encode_rows``
chunks while every prefix is under the window; needs ``make install-real``), on the facts task.

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


def _run(system: System, questions: list, mode: str, rounds: int, arm: str, batch_size: int):
    shipped = recursivemas.prefix.encode_rows
    if arm == "batch":  # the engine before encode_rows: every prefix left-padded into one batch
        recursivemas.prefix.encode_rows = lambda model, rows: encode_past(model, *left_pad(rows))
    try:
        start = time.perf_counter()
        results = system.run(questions, mode=mode, rounds=rounds, batch_size=batch_size, reuse_prefix=arm != "off")
        return results, time.perf_counter() - start
    finally:
        recursivemas.prefix.encode_rows = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=("sequential", "real"), default="sequential")
    parser.add_argument("--limit", type=int, default=200, help="Held-out test problems.")
    parser.add_argument("--batch-size", type=int, default=None, help="Problems per batch (default: all in one).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="Runs of every arm, interleaved; the fastest counts.")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch_size = args.batch_size or args.limit
    if args.system == "real":
        from recursivemas import facts, real

        system, records = real.load(), facts.generate("test", args.limit)
        questions, correct = records, facts.grade
        title = "Bundled real system (reader gemma-3-270m, answerer SmolLM2-135M-Instruct)"
    else:
        system, records = System.from_config(bundled_config("sequential")), generate("test", args.limit)
        questions, correct = [r["question"] for r in records], lambda text, rec: is_correct(text, rec["answer"])
        title = "Bundled sequential system (planner Qwen2-MoE 128, critic GPT-2 112, solver Llama 160)"
    for mode in ("latent", "text"):  # warm-up (the real reader's first latent run searches its vocabulary for stop tokens)
        system.run(questions[:8], mode=mode, rounds=1)

    seconds: dict[tuple[str, str], float] = {}
    outcome = {}
    for _ in range(args.repeats):
        for mode in ("text", "latent"):
            for arm in ARMS:
                results, wall = _run(system, questions, mode, args.rounds, arm, batch_size)
                seconds[mode, arm] = min(wall, seconds.get((mode, arm), wall))
                outcome[mode, arm] = results
                print(f"{mode} {arm}: {wall:.2f}s", flush=True)
    rows = []
    for mode in ("text", "latent"):
        for arm, label in ARMS.items():
            results, n = outcome[mode, arm], args.limit
            accuracy = sum(correct(r.text, rec) for r, rec in zip(results, records)) / n
            positions = sum(r.usage.input_positions for r in results) / n
            calls = sum(r.usage.forward_calls for r in results) / n
            rows.append(f"| {mode} | {label} | {accuracy:.1%} | {positions:.0f} | {calls:.1f} | {seconds[mode, arm]:.2f} |")
    gains = {(mode, arm): seconds[mode, "off"] / seconds[mode, arm] for mode in ("text", "latent") for arm in ("batch", "rows")}
    speedups = {arm: seconds["text", arm] / seconds["latent", arm] for arm in ARMS}
    summary = (
        f"{title}, {args.limit} held-out test problems in batches of {batch_size}, {args.rounds} rounds, "
        f"m = {system.config.latent_steps}, greedy, 1 torch thread, "
        f"fastest of {args.repeats} interleaved runs per arm.\n\n"
        "| mode | prefix reuse | accuracy | input positions / problem | forward calls / problem | wall time (s) |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Against reuse off: one padded prefix batch makes text {gains['text', 'batch']:.2f}x and latent {gains['latent', 'batch']:.2f}x "
        f"faster; encode_rows makes them {gains['text', 'rows']:.2f}x and {gains['latent', 'rows']:.2f}x. "
        f"Latent over text: {speedups['off']:.2f}x without reuse, {speedups['batch']:.2f}x with one padded batch, "
        f"{speedups['rows']:.2f}x with encode_rows.\n\n"
        f"Command: `python bench/prefix_reuse.py --system {args.system} --limit {args.limit} --batch-size {batch_size} "
        f"--rounds {args.rounds} --repeats {args.repeats}`"
    )
    print(summary)
    if args.record:
        record("Prompt-prefix reuse across rounds (`bench/prefix_reuse.py`)", summary)


if __name__ == "__main__":
    main()
