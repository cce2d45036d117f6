"""A report run's work directory: one run at a time, resumed only by a run of the same identity.

It holds the harness records and training runs, so a rerun reuses finished work; ``ReportRun`` is the state one
invocation shares between stages (data, timings, and the evaluate / train calls that write there).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recursivemas.bundled import world
from recursivemas.config import CONFIG_NAME, ConfigError, load_config
from recursivemas.eval.harness import evaluate
from recursivemas.results.protocol import Budget, world_examples


@contextmanager
def locked(work_dir: Path) -> Iterator[None]:
    """One report run per work directory at a time: two would append to the same records and training runs."""
    path = work_dir / "lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = int(path.read_text().strip() or 0)
            if pid and _alive(pid):
                raise RuntimeError(f"{work_dir} is in use by report run {pid}; wait for it, or pass another work directory")
            path.unlink(missing_ok=True)  # left by a run that died
    else:
        raise RuntimeError(f"could not lock {work_dir}")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(system_path: Path, seed: int) -> str:
    """A digest of what a report's answers depend on besides budget and seed: the system file (or saved directory),
    every local model and links file it names, and the world's problems. A work directory made before any of them
    changed (new weights, retrained links, another world) is refused, never silently resumed."""
    digest = hashlib.sha256()
    config_file = system_path / CONFIG_NAME if system_path.is_dir() else system_path
    files = sorted(system_path.rglob("*")) if system_path.is_dir() else [system_path]
    try:
        config = load_config(config_file) if config_file.is_file() else None
    except ConfigError:  # a broken system file fails with its own error when the run loads it
        config = None
    if config is not None:
        named = [config.resolve(a.model) for a in config.agents.values()]
        named += [config.resolve(config.links.checkpoint)] if config.links.checkpoint else []
        for path in map(Path, named):  # hub ids and package names are not local paths: nothing to read
            files += sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    for split in ("validation", "test"):
        digest.update(json.dumps(world.generate(split, 8, seed), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def claim(work_dir: Path, identity: dict[str, Any]) -> None:
    """Resume only a run of the same system, budget and seed: anything else would mix their results."""
    path = work_dir / "run.json"
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as read back
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != identity:
            diff = ", ".join(k for k in identity if previous.get(k) != identity[k])
            raise ValueError(f"{work_dir} holds a report run with a different {diff}; pass another work directory "
                             f"(--work) or delete {work_dir} to start over")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1))


class ReportRun:
    """Shared state of one report invocation: budget, paths, data, timings, logging."""

    def __init__(self, system_path: Path, out_dir: Path, work_dir: Path, budget: Budget, seed: int, threads: int,
                 progress: bool, log: Callable[[str], None]) -> None:
        self.system_path, self.out_dir, self.work, self.budget = system_path, out_dir, work_dir, budget
        self.seed, self.threads, self.progress, self.log = seed, threads, progress, log
        self.plots = out_dir / "results"
        for d in (self.work, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        steps = budget.world_steps
        self.train_records = world.generate("train", budget.train_records, seed, steps=steps)
        validation = world.generate("validation", budget.val_n + budget.heldout_n, seed, steps=steps)
        self.val = world_examples("validation", budget.val_n, seed, steps)  # the first val_n of `validation`
        self.heldout = validation[budget.val_n :]  # distinct problems, for training diagnostics only
        self.test_records = world.generate("test", budget.test_n, seed, steps=steps)  # with gold role texts
        self.test = world_examples("test", budget.test_n, seed, steps)
        self.timings_path = self.work / "timings.json"
        self.timings: dict[str, float] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Log the stage and add its wall time to ``timings.json`` when it finishes (cumulative over resumed runs)."""
        self.log(f"== {stage}")
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
        self.timings_path.write_text(json.dumps(self.timings, indent=1))

    def evaluate(self, system, label: str, split: str, **kw) -> list[dict[str, Any]]:
        """Harness records of ``system`` on ``split`` (reused from ``records/SPLIT_LABEL.jsonl`` when already there)."""
        examples = self.val if split == "validation" else self.test
        return evaluate(system, examples, split, out_path=self.work / "records" / f"{split}_{label}.jsonl",
                        batch_size=self.budget.eval_batch, progress=self.progress, extra={"system": label}, **kw)

    def train(self, system, name: str, **overrides) -> dict[str, Any]:
        """Train (or resume, or reuse a finished run in ``work/train/name``); returns its summary."""
        from recursivemas.train import TrainConfig, train

        out = self.work / "train" / name
        summary_path = out / "summary.json"
        cfg = TrainConfig(batch_size=self.budget.batch_size, seed=self.seed, warmup_steps=min(10, max(1, overrides["steps"] // 10)),
                          eval_generate=False, progress=self.progress, checkpoint_every=25, keep_checkpoints=1, **overrides)
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            done = (out / "links.safetensors").is_file() or (out / "model").is_dir()
            if done and set(summary.get("stages", {})) == set(cfg.stages()):
                self.log(f"   {name}: already trained in {out}")
                return summary
        resume = (out / "checkpoints").is_dir()
        return train(system, self.train_records, cfg, out, eval_records=[], resume=resume)  # held-out: see heldout_gap

    def cached(self, name: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()``'s JSON result, stored as ``work/NAME.json`` and reused while ``key`` is the same."""
        path = self.work / f"{name}.json"
        key = json.loads(json.dumps(key))
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                self.log(f"   {name}: reused from {path}")
                return stored["value"]
        value = compute()
        path.write_text(json.dumps({"key": key, "value": value}, indent=1, default=str))
        return value
