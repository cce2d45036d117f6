"""A procedural world of multi-step arithmetic word problems (the bundled default's task).

Every problem is a chain: a start quantity, then 2 to 5 operations on it (add, subtract,
multiply by 2 or 3, divide by 2 or 3 when exact), told as a short story in one of three
sub-domains (``money``, ``counting``, ``time``). Numbers stay small so that models of a
few hundred thousand parameters can learn the task from scratch on a CPU in minutes.

Each record carries a target for every role a bundled system uses:

- ``plan``: the problem decomposed into operations in words (planner).
- ``refined_plan``: the same, ordered as explicit equations over named results (critic).
- ``solution``: worked arithmetic, one equation a line, ending ``#### <n>`` (solver/learner).
- ``expert``: a longer worked solution that names each step and its unit, ending ``#### <n>`` (distillation expert).
- ``answer``: the final number alone, as a string (what :func:`grade` compares against).
- ``<domain>_notes`` for each of ``DOMAINS`` (mixture experts): the ``solution`` when the problem is in
  that domain, else ``Not a <domain> problem.``; a domain expert solves its own domain and declines others.
- ``program``: the chain as a short Python program (``x = 6`` / ``x = x // 2`` / ... / ``print(x)``).
- ``tool_call``: the deliberation tool-caller's transcript: ``<python>`` program ``</python>``, the
  ``<result>`` block the engine appends (exactly ``recursivemas.tools.loop.format_result``), ``#### <n>``.

Splits are disjoint by construction: a problem belongs to the split that a hash of its
arithmetic signature (domain, start value, operations) picks, so a test question never
shares its arithmetic chain, let alone its text, with a training question. ``seed`` only
chooses which problems of a split are drawn.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

DOMAINS = ("money", "counting", "time")
SPLITS = ("train", "validation", "test")
# Share of the signature-hash space each split owns (per mille): train 90%, validation 5%, test 5%.
_SPLIT_BUCKETS = {"train": (0, 900), "validation": (900, 950), "test": (950, 1000)}

_NAMES = (("Ann", "she", "her"), ("Ben", "he", "his"), ("Cara", "she", "her"), ("Dan", "he", "his"),
          ("Eva", "she", "her"), ("Finn", "he", "his"), ("Gia", "she", "her"), ("Hugo", "he", "his"))

# Per domain: the opening sentence, the question, the unit, and sentences for each operation.
# `{x}` is the operand, `{n}`/`{p}`/`{q}` the name / pronoun / possessive, `{thing}` a counted object.
_STORY: dict[str, dict[str, Any]] = {
    "money": {
        "start": "{n} has {x} dollars.",
        "ask": "How many dollars does {n} have now?",
        "unit": "dollars",
        "add": ("{P} earns {x} dollars.", "{P} finds {x} dollars.", "{P} gets {x} dollars as a gift."),
        "sub": ("{P} spends {x} dollars.", "{P} pays {x} dollars for lunch.", "{P} loses {x} dollars."),
        "mul2": ("{P} doubles {q} money.",),
        "mul3": ("{P} triples {q} money.",),
        "div2": ("{P} gives half of {q} money away.",),
        "div3": ("{P} keeps one third of {q} money.",),
    },
    "counting": {
        "start": "A box holds {x} {thing}.",
        "ask": "How many {thing} are in the box now?",
        "unit": "{thing}",
        "add": ("{x} more {thing} are put in.", "{n} adds {x} {thing}."),
        "sub": ("{x} {thing} are taken out.", "{n} removes {x} {thing}."),
        "mul2": ("The number of {thing} doubles.",),
        "mul3": ("The number of {thing} triples.",),
        "div2": ("Half of the {thing} are taken out.",),
        "div3": ("Only one third of the {thing} stay.",),
    },
    "time": {
        "start": "A trip takes {x} minutes.",
        "ask": "How many minutes does the trip take now?",
        "unit": "minutes",
        "add": ("Traffic adds {x} minutes.", "A stop adds {x} minutes."),
        "sub": ("A shortcut saves {x} minutes.", "A fast road saves {x} minutes."),
        "mul2": ("The trip time doubles.",),
        "mul3": ("The trip time triples.",),
        "div2": ("A fast train cuts the time in half.",),
        "div3": ("A plane cuts the time to one third.",),
    },
}
_THINGS = ("apples", "balls", "cards", "pens", "shells", "stones")
_PLAN_WORDS = {"add": "add {x}", "sub": "subtract {x}", "mul": "multiply by {x}", "div": "divide by {x}"}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_LETTERS = "ABCDE"
_OP_WEIGHTS = {"add": 0.35, "sub": 0.3, "mul": 0.2, "div": 0.15}
_PYTHON_OP = {"add": "+", "sub": "-", "mul": "*", "div": "//"}  # exact division, so print shows an integer


def _apply(op: str, a: int, x: int) -> int:
    return {"add": a + x, "sub": a - x, "mul": a * x, "div": a // x}[op]


def _draw_chain(rng: random.Random, steps: int, max_value: int, max_total: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value and `steps` operations keeping every running total in [1, max_total], exact."""
    start = rng.randint(2, max_value)
    total, ops = start, []
    for _ in range(steps):
        options: dict[str, list[int]] = {
            "add": list(range(1, min(max_value, max_total - total) + 1)),
            "sub": list(range(1, min(max_value, total - 1) + 1)),
            "mul": [k for k in (2, 3) if total * k <= max_total],
            "div": [k for k in (2, 3) if total % k == 0],
        }
        kinds = [k for k in options if options[k]]
        op = rng.choices(kinds, weights=[_OP_WEIGHTS[k] for k in kinds])[0]
        x = rng.choice(options[op])
        ops.append((op, x))
        total = _apply(op, total, x)
    return start, ops


def _signature(domain: str, start: int, ops: Sequence[tuple[str, int]]) -> str:
    return domain + ":" + str(start) + ":" + ",".join(f"{op}{x}" for op, x in ops)


def split_of(domain: str, start: int, ops: Sequence[tuple[str, int]]) -> str:
    """The split that owns a problem, from a hash of its arithmetic signature."""
    bucket = int(hashlib.sha256(_signature(domain, start, ops).encode()).hexdigest()[:8], 16) % 1000
    return next(s for s, (lo, hi) in _SPLIT_BUCKETS.items() if lo <= bucket < hi)


def _render(rng: random.Random, domain: str, start: int, ops: Sequence[tuple[str, int]], rid: str) -> dict[str, Any]:
    story = _STORY[domain]
    name, pron, poss = rng.choice(_NAMES)
    thing = rng.choice(_THINGS)
    fill = {"n": name, "P": pron.capitalize(), "q": poss, "thing": thing}
    unit = story["unit"].format(**fill)

    sentences = [story["start"].format(x=start, **fill)]
    plan = [f"start with {start}"]
    refined, solution, expert = [], [], [f"Start: {start} {unit}."]
    total = start
    for i, (op, x) in enumerate(ops):
        key = op if op in ("add", "sub") else f"{op}{x}"
        sentence = rng.choice(story[key]).format(x=x, **fill)
        sentences.append(sentence)
        plan.append(_PLAN_WORDS[op].format(x=x))
        prev = "%d" % start if i == 0 else _LETTERS[i - 1]
        refined.append(f"{_LETTERS[i]} = {prev} {_SYMBOL[op]} {x}")
        new = _apply(op, total, x)
        solution.append(f"{total} {_SYMBOL[op]} {x} = {new}")
        expert.append(f"{_PLAN_WORDS[op].format(x=x).capitalize()}: {total} {_SYMBOL[op]} {x} = {new} {unit}.")
        total = new
    sentences.append(story["ask"].format(**fill))
    expert.append(f"The answer is {total}.")
    final = f"#### {total}"
    solution_text = "\n".join(solution) + "\n" + final
    return {
        "id": rid,
        "question": " ".join(sentences),
        "answer": str(total),
        "plan": "; ".join(plan),
        "refined_plan": "\n".join(refined) + f"\nanswer = {_LETTERS[len(ops) - 1]}",
        "solution": solution_text,
        "expert": "\n".join(expert) + "\n" + final,
        "domain": domain,
        "steps": len(ops),
        "ops": [[op, x] for op, x in ops],
        "start": start,
        # Pattern targets below are pure functions of the fields above: no rng draws, so every
        # field above stays identical for a given seed.
        **{f"{d}_notes": solution_text if d == domain else f"Not a {d} problem." for d in DOMAINS},
        "program": (program := _program(start, ops)),
        "tool_call": f"<python>\n{program}\n</python>\n<result>\n{total}\n</result>\n{final}",
    }


def _program(start: int, ops: Sequence[tuple[str, int]]) -> str:
    """The chain as a Python program, one statement per operation (a tiny model writes it left to right)."""
    return "\n".join([f"x = {start}", *(f"x = x {_PYTHON_OP[op]} {x}" for op, x in ops), "print(x)"])


def generate(
    split: str,
    n: int,
    seed: int = 0,
    *,
    steps: int | tuple[int, int] = (2, 5),
    max_value: int = 10,
    max_total: int = 60,
    domains: str | Iterable[str] = DOMAINS,
) -> list[dict[str, Any]]:
    """`n` distinct problems of `split`, the same for the same arguments.

    Knobs: ``steps`` (an int, or an inclusive ``(lo, hi)`` range drawn uniformly per problem),
    ``max_value`` (largest start value and add/subtract operand), ``max_total`` (no running
    total exceeds it), ``domains`` (one name or several from ``DOMAINS``, drawn uniformly).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    lo, hi = (steps, steps) if isinstance(steps, int) else tuple(steps)
    if not 1 <= lo <= hi <= len(_LETTERS):
        raise ValueError(f"steps={steps!r} must lie within 1..{len(_LETTERS)} (the bundled world uses 2..5)")
    if max_value < 2 or max_total < max_value:
        raise ValueError(f"need 2 <= max_value <= max_total, got max_value={max_value}, max_total={max_total}")
    names = (domains,) if isinstance(domains, str) else tuple(domains)
    for d in names:
        if d not in DOMAINS:
            raise ValueError(f"unknown domain {d!r}; choose from {', '.join(DOMAINS)}")
    rng = random.Random(f"recursivemas-world:{split}:{seed}:{lo}-{hi}:{max_value}:{max_total}:{','.join(names)}")
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    tries = 0
    while len(records) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"could not draw {n} distinct {split} problems with these knobs; widen max_value or steps")
        domain = rng.choice(names)
        start, ops = _draw_chain(rng, rng.randint(lo, hi), max_value, max_total)
        sig = _signature(domain, start, ops)
        if sig in seen or split_of(domain, start, ops) != split:
            continue
        seen.add(sig)
        records.append(_render(rng, domain, start, ops, f"{split}-{seed}-{len(records):06d}"))
    return records


_FINAL_RE = re.compile(r"^[ \t]*####[ \t]*(-?\d+)[ \t]*$", re.MULTILINE)
_ANSWER_IS_RE = re.compile(r"\banswer is[ \t]*(-?\d+)(?!\d|[.,/]\d)\.?(?=\s|$)", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The final answer in a model's output, or None when it states none.

    Strict on purpose: the last line of the form ``#### <integer>`` (nothing else on the
    line); failing that, the last ``answer is <integer>``. A bare number elsewhere in the
    text is never taken as the answer.
    """
    found = _FINAL_RE.findall(text)
    if found:
        return found[-1]
    found = _ANSWER_IS_RE.findall(text)
    return found[-1] if found else None


def grade(prediction: str, answer: str) -> bool:
    """True when the prediction's stated final answer (see :func:`extract_answer`) equals `answer` as an integer."""
    got = extract_answer(prediction)
    if got is None:
        return False
    try:
        return int(got) == int(str(answer).strip())
    except ValueError:
        return False


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records one JSON object a line (UTF-8); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read records written by :func:`write_jsonl`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
