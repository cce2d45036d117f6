"""The statistics every table uses: accuracy with its Wilson interval, cost per question, training cost."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from recursivemas.eval.harness import accuracy


def accuracy_cell(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n, accuracy, Wilson 95% half-width, mean generated tokens and wall time per question of harness records."""
    n = len(records)
    acc = accuracy(records)
    return {"n": n, "accuracy": acc, "ci95": wilson_half_width(acc, n),
            "tokens": sum(r.get("generated_tokens", 0) for r in records) / max(1, n),
            "time_s": sum(r.get("wall_time_s", 0.0) for r in records) / max(1, n)}


def wilson_half_width(p: float, n: int) -> float:
    """Half-width of the Wilson 95% interval, in accuracy units (a guide to what a difference means at this n)."""
    if n == 0:
        return float("nan")
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(abs(centre + half - p), abs(p - (centre - half)))


def within_intervals(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Whether two accuracy cells lie within each other's 95% intervals (no evidence of a difference at this n)."""
    return abs(x["accuracy"] - y["accuracy"]) <= min(x["ci95"], y["ci95"])


def train_cost(*summaries: dict[str, Any]) -> dict[str, Any]:
    """Steps, trainable parameters, peak memory and time summed (or maxed) over the stages of training summaries."""
    stages = [s for summary in summaries for s in summary["stages"].values()]
    return {"steps": sum(s["steps"] for s in stages), "trainable_params": max(s["trainable_params"] for s in stages),
            "peak_mb": max(s["peak_train_memory_mb"] for s in stages), "memory_measure": stages[0]["memory_measure"],
            "train_s": sum(s["train_time_s"] for s in stages), "weights_mb": max(s["weights_mb"] for s in stages)}
