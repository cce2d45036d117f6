"""What a report run measures and how: budgets, data, the paper's reference numbers, and the choice of m and rounds.

The choice is made on the world's ``validation`` split only (best accuracy, ties to the cheaper setting, as
``recursivemas tune``); the ``test`` split is evaluated afterwards and never used for choosing (the public release
reported its best test accuracy, docs/method.md#deviations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import recursivemas
from recursivemas.bundled import world
from recursivemas.eval.harness import accuracy
from recursivemas.eval.tasks import Example
from recursivemas.eval.tune import pick

PACKAGE = Path(recursivemas.__file__).resolve().parent
TASK = "world"


@dataclass(frozen=True)
class Budget:
    """How much of everything one report run does. ``full`` fits 30 minutes on 2 CPU cores; ``smoke`` is for tests."""

    name: str
    train_records: int  # world train problems the links and the baselines train on
    inner_steps: int  # inner-loop optimizer steps
    outer_steps: int  # outer-loop optimizer steps (teacher and rollout arms alike)
    batch_size: int
    val_n: int  # validation problems for choosing m and rounds
    test_n: int  # test problems for every reported accuracy
    heldout_n: int  # validation problems for the held-out losses logged at the end of training
    m_grid: tuple[int, ...]  # latent lengths swept (section c), 0 first
    rounds_grid: tuple[int, ...] = (1, 2, 3)
    world_steps: tuple[int, int] = (2, 3)  # operations per world problem (the zoo's evaluation range)
    eval_batch: int = 32
    lr_links: float = 1e-3  # inner and outer links
    lr_lora: float = 1e-3
    lr_full: float = 1e-4
    ridge: bool = True  # least-squares initialisation of the outer links before the outer loop (docs/method.md#training)

    @property
    def baseline_steps(self) -> int:
        """LoRA and full fine-tuning get as many optimizer steps as RecursiveMAS's two loops together."""
        return self.inner_steps + self.outer_steps

    @property
    def link_init(self) -> str:
        """The outer links' initialisation before the outer loop, as TrainConfig's ``link_init`` names it."""
        return "ridge" if self.ridge else "random"


BUDGETS = {
    "full": Budget("full", train_records=2000, inner_steps=100, outer_steps=100, batch_size=4, val_n=100, test_n=200,
                   heldout_n=32, m_grid=(0, 1, 2, 4, 8, 16, 32)),
    "smoke": Budget("smoke", train_records=16, inner_steps=2, outer_steps=2, batch_size=2, val_n=4, test_n=4,
                    heldout_n=2, m_grid=(0, 2, 4), rounds_grid=(1, 2), eval_batch=8),
}

# The paper's figures this report compares against (docs/method.md#paper-numbers, paper Tables 2 and 5).
PAPER = {
    "gain_by_rounds": {1: 3.4, 2: 6.0, 3: 7.2},  # RecursiveMAS - text MAS, accuracy points
    "speedup_by_rounds": {1: 1.2, 2: 1.9, 3: 2.4},
    "token_saving_by_rounds": {1: 34.6, 2: 65.5, 3: 75.6},  # percent
    "cost": {  # scaled sequential: peak GB, trainable params, mean accuracy %
        "RecursiveMAS": (15.29, "13.12M", 74.9), "LoRA": (21.67, "15.92M", 66.9), "Full SFT": (41.40, "4.21B", 68.6),
    },
}


def resolve_budget(budget: str | Budget) -> Budget:
    """A budget by name (``full``, ``smoke``) or as given; an unknown name is a clear error."""
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def default_system_path() -> Path:
    """The bundled sequential system: its trained directory if shipped, else the plain system file."""
    trained = PACKAGE / "bundled" / "zoo_models" / "systems" / "sequential"
    return trained if (trained / "system.yaml").is_file() else PACKAGE / "bundled" / "configs" / "sequential.yaml"


def world_examples(split: str, n: int, seed: int, steps: tuple[int, int]) -> list[Example]:
    """``n`` world problems of ``split`` as harness examples (graded strictly as math)."""
    return [Example(r["id"], r["question"], r["answer"], "math", {"task": TASK})
            for r in world.generate(split, n, seed, steps=steps)]


def choose_on_validation(records: Sequence[dict[str, Any]], min_m: int = 1) -> dict[str, Any]:
    """The (latent_steps, rounds) with the best validation accuracy among ``m >= min_m``; ties go to fewer rounds,
    then smaller m (as ``recursivemas tune``). ``grid`` holds every configuration recorded, m = 0 included.

    m = 0 passes nothing between agents (the decoder answers alone after the others' work is dropped), so it is
    not a RecursiveMAS setting: it is the ablation's reference point, not a candidate. Refuses records of any
    other split: this is the one place m and rounds are chosen.
    """
    splits = {r["split"] for r in records}
    if splits != {"validation"}:
        raise ValueError(f"m and rounds are chosen on the validation split only; got records of {sorted(splits)}")
    grid: dict[tuple[int, int], list[dict]] = {}
    for r in records:
        if r["mode"] == "latent":
            grid.setdefault((int(r["latent_steps"]), int(r["rounds"])), []).append(r)
    rows = [{"latent_steps": m, "rounds": n, "n": len(recs), "accuracy": accuracy(recs)} for (m, n), recs in grid.items()]
    candidates = [g for g in rows if g["latent_steps"] >= min_m]
    if not candidates:
        raise ValueError(f"no validation records with latent_steps >= {min_m} to choose from")
    best = pick(candidates)
    return {**best, "grid": sorted(rows, key=lambda g: (g["rounds"], g["latent_steps"])), "best_any_m": pick(rows)}
