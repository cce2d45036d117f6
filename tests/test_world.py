"""The procedural arithmetic world: determinism, disjoint splits, hidden facts, consistent role targets, strict grading."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from recursivemas.bundled.world import DOMAINS, FACT_OP, FACTS, extract_answer, generate, is_correct, read_jsonl, split_of, write_jsonl

FIELDS = {"id", "question", "answer", "facts", "plan", "refined_plan", "solution", "expert", "domain", "steps", "hidden", "item"}


def test_deterministic_per_seed() -> None:
    assert generate("train", 50, seed=3) == generate("train", 50, seed=3)
    assert generate("train", 50, seed=3) != generate("train", 50, seed=4)
    # A prefix of a larger draw is the smaller draw.
    assert generate("validation", 100, seed=1)[:20] == generate("validation", 20, seed=1)


def test_splits_disjoint_by_question_text() -> None:
    texts = {s: {r["question"] for r in generate(s, n, seed=0)} for s, n in
             (("train", 4000), ("validation", 800), ("test", 800))}
    # Other seeds draw from the same split's pool, never another split's.
    texts["test"] |= {r["question"] for r in generate("test", 400, seed=7, steps=(2, 3))}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    for split in ("train", "validation", "test"):
        for r in generate(split, 200, seed=5):
            assert split_of(r["domain"], r["start"], [tuple(o) for o in r["ops"]]) == split


def test_distinct_within_split_and_ids_unique() -> None:
    recs = generate("train", 2000, seed=0)
    assert len({r["question"] for r in recs}) == len(recs)
    assert len({r["id"] for r in recs}) == len(recs)


def _evaluate(start: int, ops: list[list]) -> int:
    total = start
    for op, x in ops:
        assert op != "div" or total % x == 0, "division must be exact"
        total = {"add": total + x, "sub": total - x, "mul": total * x, "div": total // x}[op]
    return total


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_role_targets_consistent(split: str) -> None:
    for r in generate(split, 300, seed=2):
        assert FIELDS <= r.keys()
        assert 2 <= r["steps"] <= 5 and r["domain"] in DOMAINS and len(r["ops"]) == r["steps"]
        answer = int(r["answer"])
        assert answer == _evaluate(r["start"], r["ops"]) and answer >= 1
        # One operation is a hidden fact: the question names its item, the world's table gives its value.
        op, value = r["ops"][r["hidden"]]
        assert op == FACT_OP[r["domain"]] and FACTS[r["domain"]][r["item"]] == value
        assert r["item"] in r["question"] and r["facts"].startswith(f"{value} ") and r["item"] in r["facts"]
        # Upstream targets open with the facts line; the plan lists each operation in words.
        for key in ("plan", "refined_plan", "expert", f"{r['domain']}_notes"):
            assert r[key].split("\n")[0] == r["facts"], key
        assert r["plan"].count(";") == r["steps"]
        # The refined plan's equations, evaluated in order, give the answer.
        env: dict[str, int] = {}
        lines = r["refined_plan"].splitlines()[1:]
        for line in lines[:-1]:
            name, expr = line.split(" = ")
            env[name] = eval(expr.replace("/", "//"), {}, dict(env))  # noqa: S307 - our own equations
        assert lines[-1].startswith("answer = ") and env[lines[-1].split(" = ")[1]] == answer
        # Every equation of the worked solution is true, and both worked targets end with the final line.
        text = r["solution"]
        assert text.endswith(f"#### {answer}") and is_correct(text, r["answer"])
        for lhs, rhs in re.findall(r"(\d+ [-+*/] \d+) = (\d+)", text):
            assert eval(lhs.replace("/", "//")) == int(rhs)  # noqa: S307
        # The expert explains every step in words and leaves the arithmetic to the learner.
        assert len(r["expert"].splitlines()) == r["steps"] + 2 and extract_answer(r["expert"]) is None


def test_hidden_fact_values_are_not_in_the_question() -> None:
    for r in generate("validation", 300, seed=0):
        sentence = next(s for s in r["question"].split(". ") if re.search(rf"\b{r['item']}\b", s))
        assert not any(ch.isdigit() for ch in sentence), sentence


def test_the_question_does_not_narrow_the_hidden_value() -> None:
    """Every value 1..9 fits every chain, and the values are uniform: a solver not told the fact guesses, 1 in 9."""
    records = generate("train", 1800, seed=0) + generate("validation", 200, seed=0)
    for r in records:
        op, h = r["ops"][r["hidden"]][0], r["hidden"]
        for v in range(1, 10):
            total = _evaluate(r["start"], r["ops"][:h] + [[op, v]])
            for later_op, x in r["ops"][h + 1:]:
                assert later_op != "div" or total % x == 0, r["question"]
                total = _evaluate(total, [[later_op, x]])
            assert 1 <= total <= 30, r["question"]
    counts = Counter(r["ops"][r["hidden"]][1] for r in records)
    assert set(counts) == set(range(1, 10)) and max(counts.values()) < 1.3 * min(counts.values()), counts
    domains = Counter(r["domain"] for r in records)  # a purchase rejects more chains, yet domains stay even
    assert min(domains.values()) > 0.28 * len(records), domains


def test_random_facts_keep_the_problems_but_not_the_table() -> None:
    world, told = generate("train", 600, seed=0), generate("train", 600, seed=0, facts="random")
    # The same chains and answers; only the named item changes, so its value cannot be looked up.
    assert [(r["start"], r["ops"], r["answer"]) for r in world] == [(r["start"], r["ops"], r["answer"]) for r in told]
    assert all(FACTS[r["domain"]][r["item"]] == r["ops"][r["hidden"]][1] for r in world)
    matches = sum(FACTS[r["domain"]][r["item"]] == r["ops"][r["hidden"]][1] for r in told) / len(told)
    assert matches < 0.25  # about one in nine by chance
    with pytest.raises(ValueError, match="facts"):
        generate("train", 1, facts="secret")


def test_knobs() -> None:
    recs = generate("train", 200, seed=0, steps=3, max_value=5, max_total=20, domains="money")
    assert all(r["steps"] == 3 and r["domain"] == "money" for r in recs)
    for r in recs:
        # max_value bounds what the question states; the hidden fact's value is always one of 1..9.
        stated = [x for i, (op, x) in enumerate(r["ops"]) if op in ("add", "sub") and i != r["hidden"]]
        assert r["start"] <= 5 and all(x <= 5 for x in stated) and 1 <= r["ops"][r["hidden"]][1] <= 9
        total = r["start"]
        for op, x in r["ops"]:
            total = _evaluate(total, [[op, x]])
            assert 1 <= total <= 20
    assert {r["steps"] for r in generate("train", 300, seed=0, steps=(2, 5))} == {2, 3, 4, 5}
    with pytest.raises(ValueError, match="split"):
        generate("dev", 1)
    with pytest.raises(ValueError, match="domain"):
        generate("train", 1, domains="physics")
    with pytest.raises(ValueError, match="steps"):
        generate("train", 1, steps=9)


@pytest.mark.parametrize(
    "prediction, ok",
    [
        ("3 + 4 = 7\n#### 7", True),
        ("#### 7\n", True),
        ("  ####   7  ", True),
        ("so the answer is 7.", True),
        ("The Answer is 7", True),
        ("#### 5\nwait\n#### 7", True),  # the last #### line counts
        ("3 + 4 = 7", False),  # a bare number is never the answer
        ("7", False),
        ("", False),
        ("#### 7.5", False),
        ("#### 7/2", False),
        ("#### 70", False),
        ("#### 07x", False),
        ("the answer is 7.5", False),
        ("the answer is 1/7", False),
        ("#### 8\nthe answer is 7", False),  # a #### line wins over `answer is`
        ("#### -7", False),
    ],
)
def test_grade_strict(prediction: str, ok: bool) -> None:
    assert is_correct(prediction, "7") is ok


def test_grade_integers_and_extract() -> None:
    assert is_correct("#### 007", "7")
    assert not is_correct("#### 7", "not a number")
    assert extract_answer("no answer here") is None
    assert extract_answer("#### 12\n") == "12"


def test_write_read_jsonl(tmp_path) -> None:
    recs = generate("test", 10, seed=0)
    path = write_jsonl(recs, tmp_path / "sub" / "test.jsonl")
    assert read_jsonl(path) == recs
