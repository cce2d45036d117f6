"""Choose ``latent_steps`` and ``rounds`` on a validation split and write them into the system file.

The public release swept the latent length on the test set and reported the best; here a sweep on
``test`` is refused unless forced, and a forced one is marked in the system file and the report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recursivemas.eval.harness import SystemLike, accuracy, evaluate
from recursivemas.eval.report import write_report


@dataclass
class TuneResult:
    """The chosen values, what they were chosen on, and the whole grid."""

    task: str
    split: str
    latent_steps: int
    rounds: int
    accuracy: float
    n: int
    forced_test: bool
    grid: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


def check_split(split: str, force: bool) -> None:
    """Refuse to tune on the test split unless ``force``."""
    if split == "test" and not force:
        raise ValueError(
            "refusing to tune on the 'test' split: picking latent_steps/rounds by test accuracy inflates the "
            "score you then report. Tune on 'validation' (or a local validation file with --data), or pass "
            "--force / force=True to do it anyway; the report and the system file will say so."
        )


def pick(grid: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Best accuracy; ties go to fewer rounds, then fewer latent steps (the cheaper configuration)."""
    if not grid:
        raise ValueError("empty tuning grid")
    return max(grid, key=lambda g: (g["accuracy"], -g["rounds"], -g["latent_steps"]))


def write_tuned_values(system_path: str | Path, latent_steps: int, rounds: int, tuned_on: str) -> None:
    """Set top-level ``latent_steps``, ``rounds`` and ``tuned_on`` in the YAML file, keeping the rest as written."""
    path = Path(system_path)
    text = path.read_text(encoding="utf-8")
    original = yaml.safe_load(text)
    if not isinstance(original, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    values = {"latent_steps": latent_steps, "rounds": rounds, "tuned_on": tuned_on}
    for key, value in values.items():
        line = f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        pattern = re.compile(rf"^{key}[ \t]*:.*$", re.MULTILINE)
        text = pattern.sub(line, text, count=1) if pattern.search(text) else text.rstrip("\n") + f"\n{line}\n"
    edited = yaml.safe_load(text)
    if not isinstance(edited, dict) or any(edited.get(k) != v for k, v in values.items()) or \
            {k: v for k, v in edited.items() if k not in values} != {k: v for k, v in original.items() if k not in values}:
        edited = {**original, **values}  # an unusual layout (flow style, multi-line values): rewrite it whole
        text = yaml.safe_dump(edited, sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")


def tune(
    system: SystemLike,
    system_path: str | Path,
    task: str,
    *,
    split: str = "validation",
    latent_steps_grid: Sequence[int] = (16, 32, 64, 80),
    rounds_grid: Sequence[int] = (1, 2, 3),
    limit: int | None = None,
    out_dir: str | Path = "tune",
    source: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> TuneResult:
    """Sweep latent mode over ``latent_steps_grid`` x ``rounds_grid`` on ``split``, keep the best, write it."""
    check_split(split, force)
    forced = split == "test"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "tune_records.jsonl"
    all_records: list[dict[str, Any]] = []
    for m in latent_steps_grid:
        all_records += evaluate(system, task, split, limit, modes=("latent",), rounds=rounds_grid,
                                out_path=records_path, latent_steps=int(m), source=source, progress=progress,
                                extra={"purpose": "tune"})
    if not all_records:
        raise ValueError(f"no {split} examples for task {task!r}; nothing to tune on")
    grid = []
    for m in latent_steps_grid:
        for r in rounds_grid:
            recs = [x for x in all_records if x["latent_steps"] == int(m) and x["rounds"] == int(r)]
            grid.append({"latent_steps": int(m), "rounds": int(r), "n": len(recs), "accuracy": accuracy(recs)})
    best = pick(grid)
    task_name = all_records[0]["task"]
    tuned_on = f"{task_name}/{split}" + (" (forced: test split)" if forced else "")
    write_tuned_values(system_path, best["latent_steps"], best["rounds"], tuned_on)
    note = (f"Tuned on **{task_name} / {split}** ({best['n']} questions per configuration). Chosen: latent_steps="
            f"{best['latent_steps']}, rounds={best['rounds']} ({100 * best['accuracy']:.1f}%), written to {system_path}.")
    if forced:
        note = ("**WARNING: tuned on the TEST split (forced).** Accuracy on this split is no longer a held-out "
                "estimate; report it as such.\n\n" + note)
    report = write_report(all_records, out_dir, title="Tuning report", note=note)
    return TuneResult(task_name, split, best["latent_steps"], best["rounds"], best["accuracy"], best["n"], forced,
                      grid, report)
