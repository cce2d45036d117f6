"""Training data: one record per question with one target text per role (docs/method.md#training).

Field names follow the public release: sequential ``{question, plan, refined_plan, answer}``,
distillation ``{question, expert, answer}``. For any graph, ``agents.X.target`` in the system file
names the field agent X learns to produce. Records come from a JSONL / JSON / Parquet file, a
``datasets.save_to_disk`` directory (read by ``recursivemas.records``, the reader evaluation uses too),
a ``datasets.Dataset`` or a list of dicts; a record that lacks a field is an error naming the file, the
line (or row) and the field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from recursivemas.records import read_records

QUESTION = "question"


class DataError(ValueError):
    """Training data that cannot be used as given."""


def role_targets(system: Any) -> dict[str, str]:
    """Agent name -> the data field it learns (``agents.X.target``), for every agent of ``system``."""
    targets = {}
    for name, agent in system.agents.items():
        field = agent.config.target
        if not field:
            raise DataError(
                f"agent {name!r} has no training target; set agents.{name}.target in the system file to the data "
                f"field this role should produce (e.g. 'plan' or 'answer')"
            )
        targets[name] = field
    return targets


def load_records(source: Any, fields: Iterable[str] = (), name: str | None = None, inputs: Iterable[str] = (QUESTION,)) -> list[dict[str, str]]:
    """Read and check records; each must hold the input fields ``inputs`` and every field in ``fields`` as non-empty text.

    ``source`` is a path, a ``datasets.Dataset`` or a sequence of mappings. Numbers are accepted and turned
    into text (a bare numeric answer). Returns plain dicts holding only the needed fields.
    """
    needed = list(dict.fromkeys([*inputs, *fields]))
    if isinstance(source, (str, Path)):
        rows = read_records(source, error=DataError)
        where = name or str(source)
    else:
        where = name or type(source).__name__
        rows = ((f"{where} row {number}", raw) for number, raw in enumerate(source, start=1))
    records = []
    for at, raw in rows:
        if not isinstance(raw, Mapping):
            raise DataError(f"{at}: expected a JSON object with fields {', '.join(needed)}, got {type(raw).__name__}")
        record = {}
        for field in needed:
            value = raw.get(field)
            if value is None:
                have = ", ".join(sorted(map(str, raw))) or "none"
                raise DataError(f"{at}: record has no field {field!r} (it has: {have}); every record needs {', '.join(needed)}")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError(f"{at}: field {field!r} must be text, got {type(value).__name__}")
            value = str(value)
            if not value.strip():
                raise DataError(f"{at}: field {field!r} is empty; every role target must be non-empty text")
            record[field] = value
        records.append(record)
    if not records:
        raise DataError(f"{where}: no records")
    return records


def load_for_system(system: Any, source: Any, name: str | None = None) -> list[dict[str, str]]:
    """Records holding every input field the agents' prompts read and every agent's target field."""
    inputs = [f for agent in system.agents.values() for f in agent.fields]
    return load_records(source, role_targets(system).values(), name, inputs=inputs)


@dataclass
class BatchSchedule:
    """Which records form the global batch at each step: a reshuffle per epoch, fixed by (seed, step).

    The batch of step ``s`` depends only on the seed and ``s``, so a resumed run sees exactly the batches
    an uninterrupted run would, and every data-parallel rank agrees on the global batch.
    """

    size: int
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {self.batch_size}")
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.size, generator=gen).tolist()}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        """The global batch of (0-based) ``step``."""
        out = []
        for p in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._perm(p // self.size)[p % self.size])
        return out

    def shard(self, step: int, rank: int, world: int) -> list[int]:
        """This rank's contiguous share of the global batch (the batch size must divide by the world size)."""
        if self.batch_size % world:
            raise DataError(f"batch size {self.batch_size} does not divide across {world} processes; use a multiple of {world}")
        per = self.batch_size // world
        return self.indices(step)[rank * per : (rank + 1) * per]


def split_holdout(records: list[dict], fraction: float, minimum: int = 1) -> tuple[list[dict], list[dict]]:
    """Hold out the last ``fraction`` of records for evaluation (deterministic; used when no --eval-data is given)."""
    n_eval = max(minimum, int(round(len(records) * fraction))) if fraction > 0 else 0
    if n_eval >= len(records):
        raise DataError(f"cannot hold out {n_eval} of {len(records)} records for evaluation; give --eval-data or more records")
    return (records[:-n_eval], records[-n_eval:]) if n_eval else (records, [])


_OPS = (("+", "add", lambda a, b: a + b), ("-", "subtract", lambda a, b: a - b), ("*", "multiply by", lambda a, b: a * b))


def synthetic_records(n: int, seed: int = 0, pattern: str = "sequential") -> list[dict[str, str]]:
    """Short arithmetic records with a target for every role of ``pattern`` (tests, benchmarks, smoke runs)."""
    rng = random.Random(f"recursivemas-train-synthetic:{seed}")
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        sym, word, fn = rng.choice(_OPS)
        record = {QUESTION: f"What is {a} {sym} {b}?", "answer": str(fn(a, b))}
        if pattern == "sequential":
            record.update(plan=f"take {a}, {word} {b}", refined_plan=f"{a} {sym} {b} = {fn(a, b)}")
        elif pattern == "distillation":
            record["expert"] = f"{a} {sym} {b} is {fn(a, b)}"
        else:
            raise DataError(f"synthetic records exist for 'sequential' and 'distillation', not {pattern!r}")
        out.append(record)
    return out
