"""CLI commands: train (`recursivemas train`, also `python -m recursivemas train`, which works under torchrun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def train_command(
    system: Path = typer.Option(..., "--system", "-s", help="The system file (YAML) whose links to train."),
    data: Path = typer.Option(..., "--data", "-d", help="Training records: .jsonl, .json, .parquet or a saved `datasets` directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: log, checkpoints, trained system, summary and report."),
    stage: Optional[str] = typer.Option(None, help="inner | outer | all (inner then outer). Default: all."),
    method: Optional[str] = typer.Option(None, help="recursivemas (train links) | lora | full (the decoding agent alone)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps per stage. Default: 100."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate. Default: 1e-4."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size (split across processes)."),
    latent_source: Optional[str] = typer.Option(None, "--latent-source", help="teacher | rollout | mixed: how training forms latents."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out records (default: the last 10% of --data)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints. Default: 50."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between held-out evaluations (0: at the end only)."),
    seed: Optional[int] = typer.Option(None, help="Data order and schedule seed."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    device: Optional[str] = typer.Option(None, "--device", help="Place every agent here (cpu, cuda, cuda:N, mps), whatever the system file says; under torchrun, cuda is each rank's GPU."),
) -> None:
    """Train a system's links (inner loop, outer loop) or a LoRA / full fine-tuning baseline."""
    from recursivemas.config import ConfigError
    from recursivemas.train import CheckpointError, DataError, TrainingError, train_from_files

    overrides = dict(
        stage=stage,
        method=method,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        latent_source=latent_source,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        seed=seed,
        progress=False if no_progress else None,
    )
    try:
        summary = train_from_files(system, data, out, eval_data=eval_data, resume=resume, device=device, **overrides)
    except (ConfigError, DataError, TrainingError, CheckpointError, ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if summary.get("world_size", 1) == 1 or _rank() == 0:
        for name, s in summary["stages"].items():
            typer.echo(f"{name}: {s['steps']} steps, {s['trainable_params']:,} trainable params, {s['time_per_step_s']:.3f} s/step, "
                       f"final loss {s['final_loss']:.4f}, held-out {json.dumps(s.get('eval', {}))}")
        typer.echo(f"saved to {out} (report: {out / 'report.md'})")


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def register(app: typer.Typer) -> None:
    """Add `recursivemas train`."""
    app.command("train")(train_command)

