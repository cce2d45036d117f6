"""The bundled default systems: trained links shipped beside their system files.

``configs/<name>.yaml`` names ``<name>.links.safetensors`` as its link checkpoint; `train_bundled_links`
trains those links (inner, then outer loop) on the procedural world's train split and writes them there,
so the bundled YAML loads with trained links from any working directory.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"
BUNDLED = ("sequential", "distillation")


def bundled_config(name: str) -> Path:
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"no bundled system {name!r}; bundled: {', '.join(known)}")
    return path


def links_path(name: str) -> Path:
    return CONFIGS / f"{name}.links.safetensors"


def train_bundled_links(name: str, *, steps: int = 150, inner_steps: int = 100, records: int = 600, seed: int = 0, **overrides: Any) -> dict:
    """Train the links of bundled system ``name`` from scratch and ship them; returns the training summary."""
    from recursivemas import System
    from recursivemas.train import TrainConfig, train
    from recursivemas.world import generate

    path = bundled_config(name)
    data = yaml.safe_load(path.read_text())
    data["links"] = {**data.get("links", {}), "checkpoint": None}  # start from fresh links
    system = System.from_config({**data, "base_dir": str(CONFIGS)})
    settings = dict(stage="all", steps=steps, inner_steps=inner_steps, lr=1e-3, batch_size=8, seed=seed, progress=True, eval_generate=False)
    settings.update(overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(system, generate("train", records, seed=seed), TrainConfig(**settings), tmp)
        shutil.copyfile(Path(tmp) / "links.safetensors", links_path(name))
    summary["train_seconds"] = time.perf_counter() - start
    data["links"]["checkpoint"] = links_path(name).name
    path.write_text(_with_header(path.read_text(), yaml.safe_dump(data, sort_keys=False, allow_unicode=True)))
    return summary


def _with_header(old: str, new: str) -> str:
    """Keep the file's leading comment block when rewriting it."""
    header = "".join(line + "\n" for line in old.splitlines() if line.startswith("#"))
    return header + new
