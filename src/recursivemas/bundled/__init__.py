"""The bundled systems, one per collaboration pattern: trained links shipped beside their system files.

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
# One bundled system per pattern of docs/method.md#patterns, plus roundtrip (an information round trip over explicit
# edges, where rounds matter: docs/zoo.md#roundtrip) (agents: recursivemas.bundled.zoo.agents.BUNDLED_ROLES).
BUNDLED = ("sequential", "distillation", "mixture", "deliberation", "roundtrip")
# Systems whose links ship as float16 (half the bytes: the 16 MB cap; they load as float32, recursivemas.linkset).
HALF_LINKS = ("roundtrip",)
# `recursivemas zoo links` options (as train_bundled_links keywords) when none is given: the CLI's defaults.
LINK_DEFAULTS: dict[str, Any] = dict(steps=200, inner_steps=60, records=480, seed=0, latent_source="rollout", latent_steps=2,
                                     rounds=1, link_init="ridge", lr=1e-3, warmup_steps=10, upstream_weight=0.0)
# What each shipped links file was trained with, on top of LINK_DEFAULTS (the commands of docs/zoo.md; why each:
# docs/zoo.md#links-of-the-bundled-systems). `recursivemas zoo rebuild` replays them; costliest first.
LINK_RECIPES: dict[str, dict[str, Any]] = {
    "sequential": dict(steps=1200, latent_steps=1, lr=3e-3, warmup_steps=100),
    "mixture": dict(steps=1200, latent_steps=2, lr=3e-3),
    "deliberation": dict(steps=1200, latent_steps=2, lr=3e-3, warmup_steps=100),
    "roundtrip": dict(rounds=2, latent_steps=4, steps=800, upstream_weight=2.0),
    "distillation": dict(),
}


def bundled_config(name: str) -> Path:
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"no bundled system {name!r}; bundled: {', '.join(known)}")
    return path


def links_path(name: str) -> Path:
    return CONFIGS / f"{name}.links.safetensors"


def train_bundled_links(name: str, *, steps: int = 150, inner_steps: int = 100, records: int = 600, seed: int = 0,
                        latent_steps: int | None = None, **overrides: Any) -> dict:
    """Train the links of bundled system ``name`` from scratch and ship them; returns the training summary.

    ``latent_steps`` sets the rollout length used in training (default: the system file's), as the
    ``rounds`` override sets the rounds unrolled; the system file keeps its own values, which
    `recursivemas tune` chooses on validation afterwards.
    """
    from recursivemas import System
    from recursivemas.train import TrainConfig, train
    from recursivemas.bundled.world import generate

    path = bundled_config(name)
    data = yaml.safe_load(path.read_text())
    data["links"] = {**data.get("links", {}), "checkpoint": None}  # start from fresh links
    system = System.from_config({**data, "base_dir": str(CONFIGS)})
    # Rollout latents: the outer links train on the free-running thoughts inference will feed them. Teacher-forced
    # latents (the sender's states over its gold text) left the bundled solver at 30% vs 42% (docs/zoo.md).
    settings = dict(stage="all", steps=steps, inner_steps=inner_steps, lr=1e-3, batch_size=8, seed=seed, progress=True,
                    eval_generate=False, latent_source="rollout", latent_steps=latent_steps)
    settings.update(overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(system, generate("train", records, seed=seed), TrainConfig(**settings), tmp)
        ship_links(Path(tmp) / "links.safetensors", links_path(name), half=name in HALF_LINKS)
    summary["train_seconds"] = time.perf_counter() - start
    data["links"]["checkpoint"] = links_path(name).name
    path.write_text(_with_header(path.read_text(), yaml.safe_dump(data, sort_keys=False, allow_unicode=True)))
    return summary


def ship_links(trained: Path, dest: Path, half: bool = False) -> None:
    """Put a trained links file where it ships; ``half`` stores its tensors in float16 (they load as float32), keeping
    the file's metadata (its link ``kind``)."""
    if not half:
        shutil.copyfile(trained, dest)
        return
    from safetensors import safe_open
    from safetensors.torch import load_file

    from recursivemas.linkset import save_tensors

    with safe_open(str(trained), framework="pt") as f:
        metadata = f.metadata()
    save_tensors({k: v.half().contiguous() for k, v in load_file(str(trained)).items()}, dest, metadata=metadata)


def _with_header(old: str, new: str) -> str:
    """Keep the file's leading comment block when rewriting it."""
    header = "".join(line + "\n" for line in old.splitlines() if line.startswith("#"))
    return header + new


def _train_one(job: tuple[str, dict]) -> tuple[str, float]:
    import torch

    torch.set_num_threads(1)  # one thread per process: tiny agents gain nothing from more, and a busy CPU loses a lot
    name, kwargs = job
    return name, train_bundled_links(name, **kwargs)["train_seconds"]


def train_bundled(names: list[str], workers: int = 2, per_system: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> dict[str, float]:
    """Train several bundled systems' links, ``workers`` processes at once; returns seconds per system.

    Every system trains with ``kwargs``, updated by its own entry of ``per_system`` (e.g. ``LINK_RECIPES``).
    """
    for name in names:
        bundled_config(name)  # fail before any training on a typo
    jobs = [(name, {**kwargs, **(per_system or {}).get(name, {})}) for name in names]
    if workers <= 1 or len(names) == 1:
        return dict(map(_train_one, jobs))
    jobs = [(name, {**job, "progress": False}) for name, job in jobs]  # parallel bars would interleave
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(pool.map(_train_one, jobs))
