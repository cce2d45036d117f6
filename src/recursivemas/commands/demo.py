"""CLI command `demo`: the main job on the bundled default system, offline.

Runs held-out problems of the procedural world in single-agent, text-MAS and RecursiveMAS modes at 1-3
rounds, prints the comparison table, and writes records, a JSON summary, a markdown report and plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markdown import Markdown

console = Console()


def demo(
    system: Optional[Path] = typer.Option(None, "--system", help="System YAML or saved directory (default: the bundled sequential system)."),
    name: str = typer.Option("sequential", "--bundled", help="Which bundled system to use when --system is not given."),
    limit: int = typer.Option(200, "--limit", "-n", help="Held-out test problems."),
    rounds: str = typer.Option("1,2,3", "--rounds"),
    modes: str = typer.Option("single,text,latent", "--modes"),
    batch_size: int = typer.Option(200, "--batch-size", help="Problems decoded together; tiny agents batch cheaply."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where records, summary.json, report.md and plots go."),
    channel: bool = typer.Option(True, "--channel/--no-channel", help="Add the channel tests: latents shuffled across questions and zeroed, text shuffled, gold upstream text."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads; tiny agents run fastest on one, and a busy machine makes more much slower."),
    task: str = typer.Option("world", "--task", help="world (the bundled tiny systems) or facts (the real-model system, docs/real_models.md)."),
    device: Optional[str] = typer.Option(None, "--device", help="Place every agent here (cpu, cuda, cuda:N, mps), whatever the system file says."),
) -> None:
    """Run the bundled default in every mode and compare accuracy, tokens and time."""
    import torch

    torch.set_num_threads(threads)
    if task == "facts":  # real GGUF models on the reader -> answerer task: channel tests and speed (recursivemas.real)
        from recursivemas.real import run_demo

        run_demo(limit=limit, out=out if out != Path("runs/demo") else Path("runs/demo-real"), system_path=system, device=device)
        return
    if task != "world":
        raise typer.BadParameter(f"unknown task {task!r}; choose world or facts", param_hint="--task")
    from recursivemas import System
    from recursivemas.bundled import bundled_config
    from recursivemas.eval.harness import evaluate, parse_list, read_records
    from recursivemas.eval.report import compare_to_text, summarize, write_report

    path = system or bundled_config(name)
    start = time.perf_counter()
    loaded = System.load(path, device=device)
    console.print(f"[bold]{loaded}[/bold] ({time.perf_counter() - start:.1f}s to load)")
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "records.jsonl"
    records_path.unlink(missing_ok=True)  # a demo measures afresh; `recursivemas eval` is the resumable one
    mode_list, round_list = parse_list(modes, name="modes"), parse_list(rounds, int, name="rounds")
    common = dict(split="test", limit=limit, out_path=records_path, batch_size=batch_size)
    records = evaluate(loaded, "world", modes=mode_list, rounds=round_list, **common)
    if channel:  # every RecursiveMAS accuracy beside its channel test; text shuffled and gold at the most rounds
        if "latent" in mode_list:
            records += evaluate(loaded, "world", modes=["latent"], rounds=round_list, probes=["shuffle", "zero"], **common)
        if "text" in mode_list:
            records += evaluate(loaded, "world", modes=["text"], rounds=[max(round_list)], probes=["shuffle", "gold"], **common)
        records = read_records(records_path)  # every arm once (each call also returned the arms already there)
    note = f"System `{path}`; {limit} held-out test problems; latent steps m = {loaded.config.latent_steps}" + (
        f" (tuned on {loaded.config.tuned_on})." if loaded.config.tuned_on else "."
    )
    title = f"RecursiveMAS demo: {loaded.config.name}" + ("" if system else f" (bundled {name} system)")
    report = write_report(records, out, title=title, note=note)
    summary = {"system": str(path), "problems": limit, "groups": summarize(records), "vs_text": compare_to_text(records)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(Markdown(report.read_text().split("## Plots")[0]))
    console.print(f"records {records_path}, summary {out / 'summary.json'}, report {report} ({time.perf_counter() - start:.0f}s in all)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
