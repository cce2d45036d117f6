"""One reader for data records, shared by training (``train/data.py``) and evaluation (``eval/tasks.py``).

A source is a JSONL file (``.jsonl`` / ``.ndjson``, or a ``.json`` file holding one object per line), a JSON
file holding a list (or ``{"data": [...]}``), a Parquet file, a ``datasets.save_to_disk`` directory (a
``DatasetDict`` needs ``split``), or a folder holding ``{split}.jsonl|.json|.parquet``. Every record comes with
where it came from: ``path:LINE`` for line-based files, ``path record N`` otherwise, so every error
downstream can name the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = ".jsonl, .json, .parquet, a saved `datasets` directory, or a folder of {split}.jsonl files"


class RecordError(ValueError):
    """A data source that cannot be read as records."""


def read_records(path: str | Path, split: str | None = None, error: type[Exception] = RecordError) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs of ``path``; ``error`` (a ValueError subclass of the caller's) names file and line."""
    path = Path(path)
    if not path.exists():
        raise error(f"data source {str(path)!r} does not exist; pass {FORMATS}")
    if path.is_dir():
        yield from _read_dir(path, split, error)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_lines(path, error)
    elif suffix == ".json":
        yield from _read_json(path, error)
    elif suffix == ".parquet":
        yield from _read_parquet(path, error)
    else:
        raise error(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use {FORMATS}")


def _read_lines(path: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise error(f"{path}:{number}: line {number} is not valid JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason}); is it really JSONL?") from err


def _read_json(path: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason}); is it really JSON?") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{") and err.msg == "Extra data":  # one object per line in a .json file
            yield from _read_lines(path, error)
            return
        raise error(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise error(f"{path}: expected a JSON list of records (or {{'data': [...]}}), got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        yield f"{path} record {number}", record


def _read_parquet(path: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise error(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    for number, record in enumerate(rows, start=1):
        yield f"{path} record {number}", record


def _read_dir(path: Path, split: str | None, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    if any((path / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # noqa: BLE001 - any failure means "not a saved dataset"
            raise error(f"{path} is a directory but not a `datasets.save_to_disk` dataset: {err}") from err
        if isinstance(ds, datasets.DatasetDict):
            if split is None or split not in ds:
                wanted = f"no split {split!r}" if split else "several splits"
                raise error(f"{path}: {wanted}; it has {', '.join(ds)} (point at one split's directory, or name the split)")
            ds = ds[split]
        for number, record in enumerate(ds, start=1):
            yield f"{path} record {number}", dict(record)
        return
    for ext in (".jsonl", ".json", ".parquet"):
        if split and (path / f"{split}{ext}").is_file():
            yield from read_records(path / f"{split}{ext}", None, error)
            return
    wanted = f"no {split}.jsonl / {split}.json / {split}.parquet and" if split else ""
    raise error(f"{path}: {wanted} not a `datasets.save_to_disk` directory; pass {FORMATS}".replace(":  not", ": not"))
