"""CLI commands: ``eval`` (run a system on a task), ``eval-report`` (records -> markdown + plots), ``tune``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load_system(path: Path, device: str | None = None) -> Any:
    """Load the system before any question runs, so a bad system file fails first, with its own message."""
    if not path.exists():
        _fail(f"system {str(path)!r} does not exist; pass a system YAML file or a saved system directory")
    try:
        from recursivemas import System

        return System.load(path, device=device)
    except Exception as exc:  # noqa: BLE001 - show the loader's own message, nothing else
        _fail(f"could not load system {path}: {exc}", code=1)


def _checked(task: str, modes: str, rounds: str) -> tuple[str, list[str], list[int]]:
    from recursivemas.eval.harness import MODES, parse_list
    from recursivemas.eval.tasks import get_task

    try:
        name = get_task(task).name
        mode_list = parse_list(modes, str, name="--modes")
        for m in mode_list:
            if m not in MODES:
                raise ValueError(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
        return name, mode_list, parse_list(rounds, int, name="--rounds")
    except (KeyError, ValueError) as exc:
        _fail(str(exc).strip('"'))


def eval_cmd(
    system: Path = typer.Option(..., "--system", help="System YAML file or saved system directory."),
    task: str = typer.Option(..., "--task", help="Task name, e.g. MATH500, GSM8K, HumanEval, world."),
    split: str = typer.Option("test", "--split"),
    limit: int | None = typer.Option(None, "--limit", help="First K questions only."),
    modes: str = typer.Option("single,text,latent", "--modes", help="Comma list of single, text, latent."),
    rounds: str = typer.Option("1,2,3", "--rounds", help="Comma list of round counts."),
    latent_steps: int | None = typer.Option(None, "--latent-steps", help="m for latent mode (default: the system's)."),
    out: Path = typer.Option(Path("records.jsonl"), "--out", help="JSONL records; reruns resume from it."),
    data: Path | None = typer.Option(None, "--data", help="Local JSONL/JSON/Parquet file or datasets directory."),
    batch_size: int = typer.Option(8, "--batch-size", help="Questions the system runs together (one System.run batch)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.md and plots next to --out."),
    probes: str = typer.Option("", "--probes", help="Channel tests to add: comma list of shuffle, zero, gold (docs/method.md#channel-tests)."),
    device: str | None = typer.Option(None, "--device", help="Place every agent here (cpu, cuda, cuda:N, mps), whatever the system file says."),
) -> None:
    """Run every (mode, rounds) on the same questions, appending one graded record per question."""
    from recursivemas.eval.harness import accuracy, evaluate
    from recursivemas.eval.report import summarize, write_report
    from recursivemas.eval.tasks import TaskDataError

    name, mode_list, round_list = _checked(task, modes, rounds)
    loaded = _load_system(system, device)
    try:
        records = evaluate(loaded, name, split, limit, mode_list, round_list, out, latent_steps, source=data,
                           batch_size=batch_size, probes=[p.strip() for p in probes.split(",") if p.strip()])
    except (TaskDataError, ValueError) as exc:
        _fail(str(exc))
    for row in summarize(records):
        m = "" if row["latent_steps"] is None else f" m={row['latent_steps']}"
        typer.echo(f"{row['task']} {row['split']} {row['mode']}{m} rounds={row['rounds']}: "
                   f"{100 * row['accuracy']:.1f}% of {row['n']}, {row['generated_tokens']:.0f} tokens/q, "
                   f"{row['wall_time_s']:.2f} s/q")
    typer.echo(f"overall {100 * accuracy(records):.1f}% over {len(records)} records; records in {out}")
    if report and records:
        typer.echo(f"report: {write_report(records, out.parent / (out.stem + '_report'))}")


def eval_report_cmd(
    records: list[Path] = typer.Argument(..., help="One or more records JSONL files."),
    out_dir: Path = typer.Option(Path("eval_report"), "--out-dir"),
    title: str = typer.Option("Evaluation report", "--title"),
) -> None:
    """Turn records into report.md plus PNG plots (accuracy, tokens, time by rounds; ratios vs text)."""
    from recursivemas.eval.harness import read_records
    from recursivemas.eval.report import write_report

    rows: list[dict[str, Any]] = []
    for path in records:
        if not path.exists():
            _fail(f"records file {str(path)!r} does not exist")
        rows += read_records(path)
    if not rows:
        _fail("no records in " + ", ".join(map(str, records)))
    typer.echo(f"report: {write_report(rows, out_dir, title=title)}")


def tune_cmd(
    system: Path = typer.Option(..., "--system", help="System YAML file (tuned values are written into it)."),
    task: str = typer.Option(..., "--task"),
    split: str = typer.Option("validation", "--split"),
    latent_steps: str = typer.Option("16,32,64,80", "--latent-steps", help="Comma list of m to try."),
    rounds: str = typer.Option("1,2,3", "--rounds", help="Comma list of round counts to try."),
    limit: int | None = typer.Option(None, "--limit"),
    data: Path | None = typer.Option(None, "--data", help="Local validation file or datasets directory."),
    out_dir: Path = typer.Option(Path("tune"), "--out-dir"),
    force: bool = typer.Option(False, "--force", help="Allow tuning on the test split (the report marks it)."),
) -> None:
    """Sweep latent steps x rounds on a validation split; write the best into the system file."""
    from recursivemas.eval.harness import parse_list
    from recursivemas.eval.tasks import TaskDataError
    from recursivemas.eval.tune import check_split, tune

    name, _, round_list = _checked(task, "latent", rounds)
    try:
        check_split(split, force)
        steps = parse_list(latent_steps, int, name="--latent-steps")
    except ValueError as exc:
        _fail(str(exc))
    from recursivemas.config import system_file

    yaml_path = system_file(system)
    if not yaml_path.is_file():
        _fail(f"no system file to write tuned values into at {yaml_path}")
    loaded = _load_system(system)
    try:
        result = tune(loaded, yaml_path, name, split=split, latent_steps_grid=steps, rounds_grid=round_list,
                      limit=limit, out_dir=out_dir, source=data, force=force)
    except (TaskDataError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"chosen latent_steps={result.latent_steps} rounds={result.rounds} "
               f"({100 * result.accuracy:.1f}% on {result.task}/{result.split}, {result.n} questions); "
               f"written to {yaml_path}; report: {result.report}")


def register(app: typer.Typer) -> None:
    """Add ``eval``, ``eval-report`` and ``tune`` to the CLI."""
    app.command("eval")(eval_cmd)
    app.command("eval-report")(eval_report_cmd)
    app.command("tune")(tune_cmd)
