"""Training checkpoints: the trained tensors as safetensors, plus optimizer, scheduler, step and RNG state.

Layout under ``out_dir/checkpoints/``::

    inner-step0000050/  links.safetensors  optimizer.pt  state.json
    outer-step0000020/  ...
    latest              # the name of the newest complete checkpoint

A checkpoint directory is written whole under a temporary name and renamed into place; only then is
``latest`` replaced (write-then-``os.replace``), so a crash or a kill at any moment leaves ``latest``
naming a complete checkpoint. ``optimizer.pt`` holds plain tensors, numbers and dicts and is read with
``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
STATE, OPTIMIZER = "state.json", "optimizer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.meta["stage"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def tensors_file(self) -> Path:
        return self.path / self.meta["tensors"]

    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.tensors_file))

    def training_state(self) -> dict[str, Any]:
        return torch.load(self.path / OPTIMIZER, map_location="cpu", weights_only=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    stage: str,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    meta: dict[str, Any],
    tensors_name: str = "links.safetensors",
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint for ``stage`` after ``step`` updates and point ``latest`` at it."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"{stage}-step{step:07d}"
    final, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp / tensors_name))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps({**meta, "stage": stage, "step": step, "tensors": tensors_name}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, name.encode())
    _prune(root, keep, name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    complete = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for old in complete[: max(0, len(complete) - keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".*.tmp-*"):  # leftovers of a run killed mid-write
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(out_dir: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``out_dir``, or None when there is none."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / STATE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete; delete {root} to start over")
    return Checkpoint(path, json.loads((path / STATE).read_text()))
