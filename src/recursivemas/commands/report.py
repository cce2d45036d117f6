"""CLI command `report`: the paper's comparisons at small scale, written to docs/results.md (see recursivemas.results)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    system: Optional[Path] = typer.Option(
        None, "--system", help="System YAML or saved directory (default: the bundled sequential system, trained if shipped)."
    ),
    out: Path = typer.Option(Path("docs"), "--out", help="Writes OUT/results.md, plots and results.json in OUT/results/."),
    budget: str = typer.Option("full", "--budget", help="full (about 30 min on 2 CPU cores) or smoke (a minute, for tests)."),
    work: Optional[Path] = typer.Option(None, "--work", help="Records and training runs (default runs/report/BUDGET); a rerun resumes."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, link initialisation and training order."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 is fastest for the tiny bundled agents)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
) -> None:
    """Accuracy by rounds (latent vs text), trained vs untrained links, the m ablation, links vs LoRA vs full
    fine-tuning, teacher vs rollout training, and channel tests: one run, m and rounds chosen on validation only."""
    from recursivemas.results import BUDGETS, default_system_path, run_report

    if budget not in BUDGETS:
        raise typer.BadParameter(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}", param_hint="--budget")
    path = system or default_system_path()
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist; build the zoo first (`recursivemas zoo build`) or pass --system",
                                 param_hint="--system")
    result = run_report(path, out, budget=budget, work_dir=work, seed=seed, threads=threads, progress=not no_progress,
                        log=typer.echo)
    typer.echo(f"wrote {result}")


def register(app: typer.Typer) -> None:
    app.command()(report)
