"""Task registry: field mappings, offline sources, deterministic option shuffles, HumanEval for real."""

from __future__ import annotations

import importlib.util
import json
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recursivemas.eval.grading import grade
from recursivemas.eval.tasks import TASKS, TaskDataError, get_task, load_examples, shuffle_options

EXPECTED = {"MATH500", "GSM8K", "AIME2024", "AIME2025", "GPQA-Diamond", "MedQA", "MBPP+", "HumanEval",
            "LiveCodeBench", "HotpotQA", "Bamboogle", "world"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_registry_has_every_task_with_a_kind_and_splits() -> None:
    assert set(TASKS) == EXPECTED
    for task in TASKS.values():
        assert task.kind in ("math", "mc", "code", "qa") and "test" in task.splits
        assert task.hub_id or task.records, task.name


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known tasks: MATH500, GSM8K"):
        get_task("MATH5000")
    assert get_task("math500").name == "MATH500" and get_task("gpqa_diamond").name == "GPQA-Diamond"
    assert get_task("mbpp_plus").name == get_task("MBPP+").name == "MBPP+"


def test_local_jsonl_math_task(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "m.jsonl", [{"unique_id": "a/1", "problem": "What is 1+1?", "answer": "2"},
                                         {"unique_id": "a/2", "problem": "Half of 1?", "answer": "\\frac{1}{2}"}])
    exs = load_examples("MATH500", "test", source=src)
    assert [e.id for e in exs] == ["a/1", "a/2"] and exs[1].gold == "\\frac{1}{2}" and exs[0].kind == "math"
    assert exs[0].question.startswith("What is 1+1?") and "\\boxed{}" in exs[0].question
    assert len(load_examples("MATH500", "test", source=src, limit=1)) == 1


def test_missing_field_names_file_record_and_field(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, {"problem": "no answer here"}])
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:2: missing field 'answer'"):
        load_examples("MATH500", "test", source=src)
    with pytest.raises(TaskDataError, match="does not exist"):
        load_examples("MATH500", "test", source=tmp_path / "nope.jsonl")


def test_gsm8k_gold_is_the_number_after_hashes(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "3 + 4 = 7\n#### 1,007"}])
    assert load_examples("GSM8K", "test", source=src)[0].gold == "1007"


def _gpqa_rows(n: int) -> list[dict]:
    return [{"Record ID": f"r{i}", "Question": f"Q{i}?", "Correct Answer": f"right{i}",
             "Incorrect Answer 1": f"w1-{i}", "Incorrect Answer 2": f"w2-{i}", "Incorrect Answer 3": f"w3-{i}"}
            for i in range(n)]


def test_mc_options_shuffled_per_question_and_gold_follows(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "gpqa.jsonl", _gpqa_rows(12))
    exs = load_examples("GPQA-Diamond", "test", source=src)
    again = load_examples("GPQA-Diamond", "test", source=src)
    assert [e.question for e in exs] == [e.question for e in again]  # deterministic
    for i, e in enumerate(exs):
        opts = e.meta["options"]
        assert opts[string.ascii_uppercase.index(e.gold)] == f"right{i}"
        assert f"({e.gold}) right{i}" in e.question
    assert len({e.gold for e in exs}) > 1, "the correct option always lands on the same letter"
    assert grade(exs[0], f"\\boxed{{{exs[0].gold}}}").correct
    wrong = "A" if exs[0].gold != "A" else "B"
    assert not grade(exs[0], f"\\boxed{{{wrong}}}").correct


def test_shuffle_depends_only_on_the_key() -> None:
    a = shuffle_options(["x", "y", "z", "w"], 2, "T:id1")
    assert a == shuffle_options(["x", "y", "z", "w"], 2, "T:id1")
    assert a[0][string.ascii_uppercase.index(a[1])] == "z"


def test_medqa_options_mapping_and_bad_letter(tmp_path: Path) -> None:
    row = {"question": "Which?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "C"}
    ex = load_examples("MedQA", "test", source=_jsonl(tmp_path / "m.jsonl", [row]))[0]
    assert ex.meta["options"][string.ascii_uppercase.index(ex.gold)] == "c" and ex.meta["n_choices"] == 4
    bad = _jsonl(tmp_path / "bad.jsonl", [{**row, "answer_idx": "F"}])
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:1: answer letter 'F'"):
        load_examples("MedQA", "test", source=bad)


def test_json_parquet_and_datasets_sources(tmp_path: Path) -> None:
    rows = [{"Question": "Who?", "Answer": "Ada"}, {"Question": "Where?", "Answer": "Paris"}]
    (tmp_path / "b.json").write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    folder = tmp_path / "splits"
    folder.mkdir()
    _jsonl(folder / "test.jsonl", rows)
    for source in ("b.json", "b.parquet", "ds", "splits"):
        exs = load_examples("Bamboogle", "test", source=tmp_path / source)
        assert [e.gold for e in exs] == [["Ada"], ["Paris"]] and exs[0].kind == "qa", source
    with pytest.raises(TaskDataError, match="no split 'validation'"):
        load_examples("Bamboogle", "validation", source=tmp_path / "ds")


def test_missing_split_without_local_data_is_an_error() -> None:
    with pytest.raises(TaskDataError, match="no 'validation' split"):
        load_examples("MATH500", "validation")


def test_livecodebench_io_and_pickled_private_tests_ignored(tmp_path: Path) -> None:
    row = {"question_id": "lcb1", "question_content": "Add two numbers.", "starter_code": "",
           "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
           "private_test_cases": "eJyLjgUAARUAuQ==",  # base64 of compressed bytes: never unpickled
           "metadata": "{}"}
    ex = load_examples("LiveCodeBench", "test", source=_jsonl(tmp_path / "l.jsonl", [row]))[0]
    assert ex.kind == "code" and ex.gold["type"] == "io" and len(ex.gold["cases"]) == 1
    assert grade(ex, "```python\nprint(sum(map(int, input().split())))\n```").correct
    assert not grade(ex, "```python\nprint(0)\n```").correct


def test_mbpp_plus_record(tmp_path: Path) -> None:
    row = {"task_id": "Mbpp/2", "prompt": '"""\nWrite a function to add.\nassert add(1, 2) == 3\n"""\n',
           "code": "def add(a, b):\n    return a + b", "test_imports": [], "test": "assert add(2, 2) == 4\n"}
    ex = load_examples("MBPP+", "test", source=_jsonl(tmp_path / "m.jsonl", [row]))[0]
    assert ex.id == "Mbpp/2" and "Write a function to add." in ex.question
    assert grade(ex, f"```python\n{ex.meta['canonical_solution']}\n```").correct


@pytest.mark.skipif(importlib.util.find_spec("recursivemas.bundled.world") is None,
                    reason="recursivemas.bundled.world (the bundled procedural world) is not in this checkout yet")
def test_world_task_loads_lazily_and_grades_its_own_solutions() -> None:
    from recursivemas.bundled import world

    exs = load_examples("world", "validation", limit=5)
    recs = world.generate("validation", 5, seed=0)
    assert len(exs) == 5 and all(e.kind == "math" for e in exs)
    assert [e.question for e in exs] == [r["question"] for r in recs]
    assert all(grade(e, r["solution"]).correct for e, r in zip(exs, recs))
    assert not grade(exs[0], f"#### {int(exs[0].gold) + 1}").correct


def test_humaneval_canonical_solutions_pass_and_corrupted_fail() -> None:
    exs = load_examples("HumanEval", "test")
    assert len(exs) == 164 and exs[0].id == "HumanEval/0"

    def solve(ex, body=None):  # noqa: ANN001, ANN202
        code = ex.meta["prompt"] + (body if body is not None else ex.meta["canonical_solution"])
        return grade(ex, f"```python\n{code}\n```")

    with ThreadPoolExecutor(max_workers=4) as pool:
        grades = list(pool.map(solve, exs))
        failed = [e.id for e, g in zip(exs, grades) if not g.correct]
        assert failed == [], f"canonical solutions failed: {failed}"
        corrupted = list(pool.map(lambda e: solve(e, "    return None\n"), exs[:4]))
    assert not any(g.correct for g in corrupted)


def test_one_record_reader_for_training_and_evaluation(tmp_path: Path) -> None:
    """Training and evaluation read sources through recursivemas.records with the same rules and file:line errors."""
    from recursivemas.records import read_records
    from recursivemas.train.data import DataError, load_records

    rows = [{"question": "What is 1+1?", "answer": "2"}, {"question": "Half of 4?", "answer": "2"}]
    lines_json = tmp_path / "lines.json"  # a .json file holding one object per line reads as JSONL in both
    lines_json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrapped = tmp_path / "wrapped.json"  # {"data": [...]} reads in both
    wrapped.write_text(json.dumps({"data": rows}))
    for source in (lines_json, wrapped):
        assert [e.gold for e in load_examples("Bamboogle", "test", source=_rename(source, tmp_path))] == [["2"], ["2"]]
        assert load_records(source, ["answer"]) == rows
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "q",\n "answer": }]')
    with pytest.raises(TaskDataError, match=r"broken\.json:2: not valid JSON"):
        load_examples("MATH500", "test", source=broken)
    with pytest.raises(DataError, match=r"broken\.json:2: not valid JSON"):
        load_records(broken, ["answer"])
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(TaskDataError, match=r"torn\.jsonl:2: line 2 is not valid JSON"):
        load_examples("MATH500", "test", source=torn)
    with pytest.raises(DataError, match=r"torn\.jsonl:2: line 2 is not valid JSON"):
        load_records(torn, ["answer"])
    (tmp_path / "d.csv").write_text("question,answer\n")
    for load in (lambda p: load_examples("MATH500", "test", source=p), lambda p: load_records(p)):
        with pytest.raises(ValueError, match="unknown data format '.csv'"):
            load(tmp_path / "d.csv")
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="several splits; it has train, test"):
        load_records(tmp_path / "dd", ["answer"])
    assert [w for w, _ in read_records(tmp_path / "dd", "test")] == [f"{tmp_path / 'dd'} record 1", f"{tmp_path / 'dd'} record 2"]


def _rename(source: Path, tmp_path: Path) -> Path:
    """Bamboogle's fields are Question / Answer: a copy of ``source`` with them renamed."""
    text = source.read_text().replace('"question"', '"Question"').replace('"answer"', '"Answer"')
    out = tmp_path / f"bamboogle-{source.name}"
    out.write_text(text)
    return out
