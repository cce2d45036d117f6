"""Run a system on a task under several (mode, rounds) configurations and record every answer.

One JSONL record per question and configuration is appended (and flushed) as soon as it is graded,
so a crash loses nothing; a rerun with the same output file skips what is already there. While one
evaluation writes an output file, a lock file beside it (``records.jsonl.lock``, ``fcntl.flock``) keeps a
second one out, with an error naming the holder's pid; records are read back one per key (the latest),
so a file that still holds duplicates (from before the lock) is never counted twice.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from recursivemas.eval.grading import Grade, grade
from recursivemas.eval.tasks import Example, load_examples
from recursivemas.rounds import MODES

# Channel probes (docs/method.md#channel-tests) run as extra arms; a record's mode is then e.g. "latent/shuffle".
ARM_PROBES = ("shuffle", "zero", "gold")


class SystemLike(Protocol):
    """What the harness needs from a system: ``run`` returning one result (``.text``, ``.usage``) per question."""

    def run(self, questions: list[str], mode: str = ..., rounds: int = ..., latent_steps: int = ...,
            batch_size: int = ...) -> list[Any]: ...


class OutputLockedError(ValueError):
    """Another evaluation is writing the same output file."""


@contextmanager
def lock_output(out_path: str | Path) -> Iterator[Path]:
    """Hold ``out_path``'s lock file for the duration; an OutputLockedError naming the holder's pid if taken.

    The lock is ``flock`` on ``<out>.lock``: the kernel drops it when the holder exits or is killed, so a
    crashed evaluation never leaves a stale lock (the file stays; its pid line is only informative).
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked, as before
        yield Path(out_path)
        return
    lock = Path(out_path).with_name(Path(out_path).name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise OutputLockedError(
                f"{out_path} is being written by another evaluation (pid {holder}, lock {lock}); wait for it to "
                f"finish, or give this one another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def unique_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key (task, split, id, mode, rounds, latent steps): the last one wins; keyless ones kept."""
    keyed: dict[tuple, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for rec in records:
        if isinstance(rec, dict) and _KEY_FIELDS <= set(rec):
            keyed[record_key(rec)] = rec
        else:
            others.append(rec)
    return [*keyed.values(), *others]


def read_records(path: str | Path, unique: bool = True) -> list[dict[str, Any]]:
    """Records of a JSONL file, one per key unless ``unique=False``; a torn line (a crash mid-write) is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path} line {n}: not valid JSON (interrupted write?); skipped", stacklevel=2)
    return unique_records(records) if unique else records


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


_KEY_FIELDS = {"task", "split", "id", "mode", "rounds"}


def _key(task: str, split: str, rid: str, mode: str, rounds: int, latent_steps: int | None) -> tuple:
    return (task, split, str(rid), mode, int(rounds), latent_steps)


def record_key(rec: dict[str, Any]) -> tuple:
    """The identity of a record for resuming: task, split, id, mode, rounds, latent steps."""
    return _key(rec["task"], rec["split"], rec["id"], rec["mode"], rec["rounds"], rec.get("latent_steps"))


def parse_list(value: str | Iterable, cast: type = str, *, name: str = "value") -> list:
    """'a,b,c' (or an iterable) -> [cast(a), cast(b), cast(c)], with an error naming the bad item."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if item == "":
            continue
        try:
            out.append(cast(item))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {item!r} is not a valid {cast.__name__}") from exc
    if not out:
        raise ValueError(f"{name}: empty list")
    return out


def _check(modes: Sequence[str], rounds: Sequence[int], latent_steps: int | None, probes: Sequence[str] = ()) -> None:
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for probe in probes:
        if probe not in ARM_PROBES:
            raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(ARM_PROBES)}")
    if "gold" in probes and "text" not in modes:
        raise ValueError("probe 'gold' is a text-mode arm (the decoder reads gold upstream text); add mode 'text'")
    for r in rounds:
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"rounds must be integers >= 1, got {r!r}")
    if latent_steps is not None and (not isinstance(latent_steps, int) or latent_steps < 0):
        raise ValueError(f"latent_steps must be an integer >= 0 or None (system default), got {latent_steps!r}")


def _usage(result: Any, fallback_time: float) -> dict[str, Any]:
    usage = getattr(result, "usage", None)

    def num(name: str, default: float = 0) -> Any:
        value = getattr(usage, name, None)
        return default if value is None else value

    wall = num("wall_time_s", fallback_time)
    return {
        "generated_tokens": int(num("generated_tokens")),
        "latent_steps_total": int(num("latent_steps")),
        "forward_calls": int(num("forward_calls")),
        "wall_time_s": float(wall),
        "usage": usage.to_dict() if hasattr(usage, "to_dict") else None,
    }


def _grade_all(examples: list[Example], texts: list[str], workers: int) -> list[Grade]:
    if workers > 1 and any(e.kind == "code" for e in examples):  # sandbox runs overlap; math stays in this thread
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(grade, examples, texts))
    return [grade(e, t) for e, t in zip(examples, texts)]


def _run_batch(system: SystemLike, batch: list[Example], mode: str, rounds: int, steps: int | None,
               grade_workers: int) -> list[dict[str, Any]]:
    """Ask the system one batch of questions and grade the answers: one record body per question."""
    base, _, probe = mode.partition("/")
    kwargs: dict[str, Any] = {"mode": base, "rounds": rounds, "batch_size": len(batch)}  # the harness batch runs as one
    if steps is not None:
        kwargs["latent_steps"] = steps
    if probe:
        kwargs["probe"] = probe
    if probe == "gold":
        from recursivemas.channel import gold_texts

        kwargs["gold"] = [gold_texts(system, e.fields or {}) for e in batch]
    t0 = time.perf_counter()
    results = system.run([e.inputs for e in batch], **kwargs)
    elapsed = time.perf_counter() - t0
    if len(results) != len(batch):
        raise RuntimeError(f"system.run returned {len(results)} results for {len(batch)} questions")
    texts = [str(getattr(r, "text", r)) for r in results]
    grades = _grade_all(batch, texts, grade_workers)
    return [{
        "id": ex.id, "kind": ex.kind, "mode": mode, "probe": probe or "none", "rounds": rounds, "latent_steps": steps,
        "prediction": text,
        "extracted": g.extracted, "gold": ex.gold if ex.kind != "code" else None,  # code gold = tests: by id
        "correct": g.correct, "score": g.score, "grade_detail": g.detail, **_usage(res, elapsed / len(batch)),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    } for ex, res, text, g in zip(batch, results, texts, grades)]


def evaluate(
    system: SystemLike,
    task: str | Sequence[Example],
    split: str = "test",
    limit: int | None = None,
    modes: Sequence[str] = ("latent",),
    rounds: Sequence[int] = (3,),
    out_path: str | Path = "records.jsonl",
    latent_steps: int | None = None,
    *,
    source: str | Path | None = None,
    batch_size: int = 8,
    grade_workers: int = 2,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    probes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Run every (mode, rounds) on the same questions; append one record per question and configuration.

    ``probes`` adds channel-test arms (docs/method.md#channel-tests): ``shuffle`` and ``zero`` for each
    latent and text configuration (records of mode ``latent/shuffle``, ...), ``gold`` once for text mode
    (``text/gold``: the decoder reads the gold upstream text; needs tasks whose examples carry it).

    ``task`` is a task name (see ``tasks.TASKS``) or a list of Examples. ``latent_steps=None`` uses the
    system's default (``system.config.latent_steps``); it only applies to latent mode (text and single
    records store None). Single mode is one agent, so it runs once, as rounds=1. Returns the records of
    this evaluation, including those found already done in ``out_path``.
    """
    modes, rounds, probes = list(modes), [int(r) for r in rounds], list(probes)
    _check(modes, rounds, latent_steps, probes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(task, str):
        examples = load_examples(task, split, limit=limit, source=source)
        task_name = examples[0].meta.get("task", task) if examples else task
    else:
        examples = list(task)[:limit] if limit is not None else list(task)
        task_name = examples[0].meta.get("task", "custom") if examples else "custom"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_output(out_path):  # read what is done and append under one lock: no second writer in between
        return _evaluate_locked(system, examples, task_name, split, modes, rounds, out_path, latent_steps,
                                batch_size, grade_workers, progress, extra, probes)


def _evaluate_locked(system: SystemLike, examples: list[Example], task_name: str, split: str, modes: list[str],
                     rounds: list[int], out_path: Path, latent_steps: int | None, batch_size: int, grade_workers: int,
                     progress: bool, extra: dict[str, Any] | None, probes: list[str]) -> list[dict[str, Any]]:
    existing = {record_key(r): r for r in read_records(out_path) if _KEY_FIELDS <= set(r)}
    if latent_steps is None:  # record the m actually used, so a later change of the default is not "already done"
        latent_steps = getattr(getattr(system, "config", None), "latent_steps", None)
    configs = [(mode, r, latent_steps if mode == "latent" else None)
               for mode in modes for r in (rounds if mode != "single" else [1])]  # single agent: no rounds
    configs += [(f"{mode}/{p}", r, steps) for mode, r, steps in list(configs) if mode != "single"
                for p in probes if p != "gold"]
    if "gold" in probes:
        configs.append(("text/gold", 1, None))  # the decoder alone, once, on gold upstream text
    todo = [(c, [e for e in examples if _key(task_name, split, e.id, *c) not in existing]) for c in configs]
    total = sum(len(pending) for _, pending in todo)

    from tqdm.auto import tqdm

    records: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc=f"{task_name} {split}", unit="q", disable=not progress or total == 0)
    with out_path.open("a", encoding="utf-8") as out:
        if out.tell() > 0 and not _ends_with_newline(out_path):
            out.write("\n")  # end a line torn by a crash, so the next record starts clean
        for (mode, n_rounds, steps), pending in todo:
            bar.set_postfix(mode=mode, rounds=n_rounds, m=steps)
            for start in range(0, len(pending), batch_size):
                batch = pending[start : start + batch_size]
                for rec in _run_batch(system, batch, mode, n_rounds, steps, grade_workers):
                    rec = {"task": task_name, "split": split, **rec, **(extra or {})}
                    out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                    out.flush()
                    existing[record_key(rec)] = rec
                    bar.update(1)
    bar.close()
    for mode, n_rounds, steps in configs:
        records += [existing[k] for e in examples if (k := _key(task_name, split, e.id, mode, n_rounds, steps)) in existing]
    return records


def accuracy(records: Iterable[dict[str, Any]]) -> float:
    """Share of records graded correct (0.0 for none)."""
    records = list(records)
    return sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0


__all__ = ["MODES", "OutputLockedError", "SystemLike", "accuracy", "evaluate", "lock_output", "parse_list", "read_records",
           "record_key", "unique_records"]
