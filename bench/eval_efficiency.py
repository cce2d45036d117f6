"""Latent vs text mode, end to end: wall time and generated tokens by rounds, as ratios from one run.

    python bench/eval_efficiency.py --system system.yaml --task world --limit 32 --rounds 1,2,3

Both modes answer the same questions in the same process on the same machine; the ratios
(text / latent time, token saving) come from that one run. The result is appended to
docs/benchmarks.md under its own heading, with the command, machine and accuracy of both modes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from recursivemas.machine import describe as describe_machine

HEADING = "## Latent vs text mode, end to end (bench/eval_efficiency.py)"


def section(records: list[dict], args: argparse.Namespace, command: str) -> str:
    """The markdown block for one run: a ratio table by rounds plus the run's context."""
    from recursivemas.eval.report import compare_to_text, summarize

    acc = {(r["mode"], r["rounds"]): r for r in summarize(records)}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### {stamp}: {Path(args.system).name} on {args.task}/{args.split}", "",
             f"Command: `{command}`  ", f"Machine: {describe_machine()}", "",
             "| rounds | m | n | text time/q (s) | latent time/q (s) | speed-up | text tokens/q | latent tokens/q | "
             "token saving | accuracy text -> latent |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in compare_to_text(records):
        if r["mode"] != "latent":
            continue
        a_text, a_lat = acc[("text", r["rounds"])]["accuracy"], acc[("latent", r["rounds"])]["accuracy"]
        lines.append(f"| {r['rounds']} | {r['latent_steps']} | {r['n']} | {r['text_time_s']:.3f} | {r['time_s']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['text_tokens']:.0f} | {r['tokens']:.0f} | {100 * r['token_saving']:.1f}% | "
                     f"{100 * a_text:.1f}% -> {100 * a_lat:.1f}% |")
    return "\n".join(lines) + "\n"


def append_section(doc: Path, block: str) -> None:
    """Add ``block`` at the end of this script's heading in ``doc`` (creating either if missing)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\nEvery figure below comes from the command shown with it.\n"
    start = text.index(HEADING) + len(HEADING)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt < 0 else nxt + 1
    text = text[:end].rstrip("\n") + "\n\n" + block + ("\n" + text[end:] if nxt >= 0 else "")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, help="system YAML file or saved system directory")
    parser.add_argument("--task", default="world")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--rounds", default="1,2,3")
    parser.add_argument("--latent-steps", type=int, default=None)
    parser.add_argument("--data", default=None, help="local data file for the task (offline)")
    parser.add_argument("--records", default=None, help="keep the JSONL records here (default: a temp file)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)

    from recursivemas import System
    from recursivemas.eval.harness import evaluate, parse_list

    path = Path(args.system)
    system = System.load(path)
    rounds = parse_list(args.rounds, int, name="--rounds")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.records) if args.records else Path(tmp) / "records.jsonl"
        # text first, then latent, on the same questions: a warm-up pass keeps first-call costs out of both
        system.run(["warm-up question"], mode="text", rounds=1)
        records = evaluate(system, args.task, args.split, args.limit, ("text", "latent"), rounds, out,
                           args.latent_steps, source=args.data)
    block = section(records, args, "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    append_section(Path(args.doc), block)
    print(block)


if __name__ == "__main__":
    main()
