"""Training checkpoints: the trained tensors as safetensors, plus optimizer, scheduler, step and RNG state.

Layout under ``out_dir/checkpoints/``::

    inner-step0000050/  links.safetensors  optimizer.pt  state.json
    outer-step0000020/  ...
    latest              # the name of the newest complete checkpoint

A checkpoint directory is written whole under a temporary name and renamed into place; only then is
``latest`` replaced (write-then-``os.replace``), so a crash or a kill at any moment leaves ``latest``
naming a complete checkpoint. ``optimizer.pt`` holds plain tensors, numbers and dicts and is read with
``torch.load(weights_only=True)``: nothing is unpickled.

``state.json`` records the SHA-256 of every file beside it and of its own content (``state_sha256``), so a
truncated, swapped or hand-edited checkpoint is refused on resume with an error naming the file. ``latest``
may only name a checkpoint directory directly inside ``checkpoints/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from recursivemas.linkset import save_tensors

LATEST = "latest"
STATE, OPTIMIZER = "state.json", "optimizer.pt"
SELF_HASH = "state_sha256"
_NAME = re.compile(r"^(?P<stage>[a-z]+)-step(?P<step>\d{7})$")


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
        """The trained tensors; a file that safetensors cannot read is a CheckpointError naming it."""
        try:
            return load_file(str(self.tensors_file))
        except Exception as err:  # noqa: BLE001 - any decoding failure: name the file
            raise CheckpointError(f"{self.tensors_file} cannot be read ({type(err).__name__}: {err}); {_START_OVER}") from err

    def training_state(self) -> dict[str, Any]:
        """Optimizer, scheduler and RNG state (plain tensors only: ``weights_only=True``)."""
        path = self.path / OPTIMIZER
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated, or holding objects we refuse to unpickle
            raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}); {_START_OVER}") from err
        if not isinstance(state, dict) or not {"optimizer", "scheduler", "rng"} <= set(state):
            raise CheckpointError(f"{path} does not hold optimizer, scheduler and rng state; {_START_OVER}")
        return state


_START_OVER = "delete it (resume then starts from the previous checkpoint) or start over in a new --out directory"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _self_hash(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != SELF_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state.json`` into checkpoint directory ``path`` with its own checksum, atomically."""
    state = {**state, SELF_HASH: _self_hash(state)}
    _write_atomic(path / STATE, json.dumps(state, indent=1).encode())


def verify(path: Path) -> dict[str, Any]:
    """The checked ``state.json`` of checkpoint directory ``path``; a CheckpointError naming what is wrong otherwise."""
    state_file = path / STATE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{state_file} cannot be read ({err}); {_START_OVER}") from err
    if not isinstance(state, dict) or not isinstance(state.get(SELF_HASH), str) or not isinstance(state.get("files"), dict):
        raise CheckpointError(f"{state_file} carries no checksums (written by an older version, or edited); {_START_OVER}")
    if state[SELF_HASH] != _self_hash(state):
        raise CheckpointError(f"{state_file} was changed after it was written (its checksum does not match); {_START_OVER}")
    match = _NAME.match(path.name)
    if not match or match["stage"] != state.get("stage") or int(match["step"]) != state.get("step"):
        raise CheckpointError(f"{state_file} says stage {state.get('stage')!r} step {state.get('step')!r}, not {path.name}; {_START_OVER}")
    if state.get("tensors") not in state["files"]:
        raise CheckpointError(f"{state_file} names no checksum for its tensors file {state.get('tensors')!r}; {_START_OVER}")
    for name, expected in state["files"].items():
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise CheckpointError(f"{file} is missing from the checkpoint; {_START_OVER}")
        if sha256_file(file) != expected:
            raise CheckpointError(f"{file} does not match the SHA-256 in {state_file} (truncated, replaced or altered); {_START_OVER}")
    return state


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
    save_tensors({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, tmp / tensors_name)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / OPTIMIZER)
    files = {n: sha256_file(tmp / n) for n in (tensors_name, OPTIMIZER)}
    write_state(tmp, {**meta, "stage": stage, "step": step, "tensors": tensors_name, "files": files})
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
    name = pointer.read_text(errors="replace").strip()
    # only a plain checkpoint name: never a path that leads outside this run's own checkpoints/
    if not _NAME.match(name):
        raise CheckpointError(f"{pointer} names {name[:80]!r}, which is not a checkpoint of this run (like 'outer-step0000020'); "
                              f"delete {pointer} to resume from scratch")
    path = root / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != root.resolve()):
        raise CheckpointError(f"{pointer} names {name}, which leads outside {root}; checkpoints must live in the run's own directory")
    if not (path / STATE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete; delete {root} to start over")
    return Checkpoint(path, verify(path))
