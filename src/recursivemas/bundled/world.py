"""A procedural world of multi-step arithmetic word problems with hidden facts (the bundled default's task).

Every problem is a chain: a start quantity, then 2 to 5 operations on it (add, subtract,
multiply by 2 or 3, divide by 2 or 3 when exact), told as a short story in one of three
sub-domains (``money``, ``counting``, ``time``). Numbers stay small so that models of a
few hundred thousand parameters can learn the task from scratch on a CPU in minutes.

One operation of every problem names a fact the question does not state (docs/zoo.md#the-world):
the price of an item (``He buys a kite.``), the contents of a coloured bag (``Ann empties the red bag
into the box.``), the length of a stop (``The bus stops at the bakery.``). The world's facts are fixed
(``FACTS``); an agent that memorised them (a planner, an expert) can tell, an agent that did not has to be
told. The fact's value is uniform over 1..9 and every one of the nine fits the chain, so the question
alone narrows nothing down: untold, an agent guesses right one time in nine. ``facts="random"`` draws
the same kind of problems with each named fact's value drawn at random per problem (the item is picked
independently of its value): receivers pretrained on those learn to read the fact from their slot and
cannot learn the world's table.

Each record carries a target for every role a bundled system uses:

- ``facts``: the hidden fact, value first (``7 dollars for the kite``): the compact hand-off every upstream role starts with.
- ``world_facts``: the same line with the value ``FACTS`` gives the named item (equal to ``facts`` on world
  problems; on ``facts="random"`` ones, the correction a clerk who knows the table writes back).
- ``request``: the fact the question names but does not state, item first (``kite``, ``red bag of cards``,
  ``bakery stop``): what the roundtrip asker writes and the clerk answers (docs/zoo.md#roundtrip).
- ``plan``: the facts line, then the problem decomposed into operations in words (planner).
- ``refined_plan``: the facts line, then explicit equations over named results (critic).
- ``solution``: worked arithmetic, one equation a line, ending ``#### <n>`` (solver/learner).
- ``expert``: the facts line, then each step in words with its unit, no arithmetic (distillation expert: it
  explains what happens; the learner computes).
- ``answer``: the final number alone, as a string (what :func:`is_correct` compares against).
- ``<domain>_notes`` for each of ``DOMAINS`` (mixture experts): the facts line when the problem is in
  that domain, else ``Not a <domain> problem.``; a domain expert knows its own domain's facts.
- ``program``: the chain as a short Python program (``x = 6`` / ``x = x - 7`` / ... / ``print(x)``).
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
# The world's hidden facts: per domain, which operation a fact stands for, its sentence, and nine items
# with the values 1..9 (a fixed permutation, so neighbouring items do not have neighbouring values).
FACT_OP = {"money": "sub", "counting": "add", "time": "add"}
_FACT_SENTENCE = {
    "money": "{P} buys a {item}.",
    "counting": "{n} empties the {item} bag into the box.",
    "time": "The bus stops at the {item}.",
}
_FACT_LINE = {
    "money": "{v} dollars for the {item}",
    "counting": "{v} {thing} in the {item} bag",
    "time": "{v} minutes at the {item}",
}
_FACT_NAME = {"money": "{item}", "counting": "{item} bag", "time": "stop at the {item}"}
# How an asker names the fact it lacks: the item first (the first token a latent hand-off carries).
_REQUEST = {"money": "{item}", "counting": "{item} bag of {thing}", "time": "{item} stop"}
_FACT_ITEMS = {
    "money": ("kite", "pen", "book", "cap", "mug", "ball", "lamp", "sock", "bell"),
    "counting": ("red", "blue", "green", "pink", "gray", "gold", "white", "black", "brown"),
    "time": ("bakery", "bank", "park", "zoo", "farm", "pier", "mall", "lake", "fort"),
}
_FACT_VALUES = (7, 2, 5, 4, 3, 6, 8, 1, 9)
FACTS: dict[str, dict[str, int]] = {d: dict(zip(items, _FACT_VALUES)) for d, items in _FACT_ITEMS.items()}
FACT_MODES = ("world", "random")
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


def _valid(start: int, ops: Sequence[tuple[str, int]], max_total: int) -> bool:
    """Every running total stays in [1, max_total] and every division is exact."""
    total = start
    for op, x in ops:
        if op == "div" and total % x:
            return False
        total = _apply(op, total, x)
        if not 1 <= total <= max_total:
            return False
    return True


def _fact_position(rng: random.Random, domain: str, start: int, ops: Sequence[tuple[str, int]],
                   max_total: int) -> int | None:
    """Which operation the hidden fact stands for: one of the domain's fact kind that every fact value fits.

    The chain must stay valid whichever of the values 1..9 the fact has, so that nothing the question
    states (a later halving that needs an even total, a purchase that must leave money) narrows the
    value down: an agent that is not told it can only guess, one in nine (docs/zoo.md#the-world).
    """
    options = [i for i, (op, _) in enumerate(ops) if op == FACT_OP[domain] and all(
        _valid(start, [*ops[:i], (op, v), *ops[i + 1:]], max_total) for v in _FACT_VALUES)]
    return rng.choice(options) if options else None


def _signature(domain: str, start: int, ops: Sequence[tuple[str, int]]) -> str:
    return domain + ":" + str(start) + ":" + ",".join(f"{op}{x}" for op, x in ops)


def split_of(domain: str, start: int, ops: Sequence[tuple[str, int]]) -> str:
    """The split that owns a problem, from a hash of its arithmetic signature."""
    bucket = int(hashlib.sha256(_signature(domain, start, ops).encode()).hexdigest()[:8], 16) % 1000
    return next(s for s, (lo, hi) in _SPLIT_BUCKETS.items() if lo <= bucket < hi)


def _render(rng: random.Random, domain: str, start: int, ops: Sequence[tuple[str, int]], rid: str,
            hidden: int, item: str) -> dict[str, Any]:
    story = _STORY[domain]
    name, pron, poss = rng.choice(_NAMES)
    thing = rng.choice(_THINGS)
    fill = {"n": name, "P": pron.capitalize(), "q": poss, "thing": thing}
    unit = story["unit"].format(**fill)
    # The value comes first: the first latent step of a hand-off already carries it.
    facts = _FACT_LINE[domain].format(v=ops[hidden][1], item=item, thing=thing)

    sentences = [story["start"].format(x=start, **fill)]
    plan = [f"start with {start}"]
    refined, solution, expert = [], [], [f"Start with {start} {unit}."]
    total = start
    for i, (op, x) in enumerate(ops):
        key = op if op in ("add", "sub") else f"{op}{x}"
        sentence = rng.choice(story[key]).format(x=x, **fill)
        if i == hidden:  # the fact's value is not in the question: only its name
            sentence = _FACT_SENTENCE[domain].format(item=item, **fill)
        sentences.append(sentence)
        plan.append(_PLAN_WORDS[op].format(x=x))
        prev = "%d" % start if i == 0 else _LETTERS[i - 1]
        refined.append(f"{_LETTERS[i]} = {prev} {_SYMBOL[op]} {x}")
        new = _apply(op, total, x)
        solution.append(f"{total} {_SYMBOL[op]} {x} = {new}")
        expert.append(f"Then {_PLAN_WORDS[op].format(x=x)}" + (f" {unit} for the {_FACT_NAME[domain].format(item=item)}." if i == hidden else "."))
        total = new
    sentences.append(story["ask"].format(**fill))
    final = f"#### {total}"
    solution_text = "\n".join(solution) + "\n" + final
    return {
        "id": rid,
        "question": " ".join(sentences),
        "answer": str(total),
        "facts": facts,
        "world_facts": _FACT_LINE[domain].format(v=FACTS[domain][item], item=item, thing=thing),
        "request": _REQUEST[domain].format(item=item, thing=thing),
        # Upstream targets open with the facts line: a latent hand-off of a few steps carries it.
        "plan": facts + "\n" + "; ".join(plan),
        "refined_plan": facts + "\n" + "\n".join(refined) + f"\nanswer = {_LETTERS[len(ops) - 1]}",
        "solution": solution_text,
        "expert": facts + "\n" + "\n".join(expert),
        "domain": domain,
        "steps": len(ops),
        "ops": [[op, x] for op, x in ops],
        "start": start,
        "hidden": hidden,
        "item": item,
        # Pattern targets below are pure functions of the fields above: no rng draws, so every
        # field above stays identical for a given seed.
        **{f"{d}_notes": facts if d == domain else f"Not a {d} problem." for d in DOMAINS},
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
    steps: int | tuple[int, int] = (2, 3),
    max_value: int = 9,
    max_total: int = 30,
    domains: str | Iterable[str] = DOMAINS,
    facts: str = "world",
) -> list[dict[str, Any]]:
    """`n` distinct problems of `split`, the same for the same arguments.

    Knobs: ``steps`` (an int, or an inclusive ``(lo, hi)`` range drawn uniformly per problem),
    ``max_value`` (largest start value and stated add/subtract operand; the hidden value is always
    1..9), ``max_total`` (no running total exceeds it), ``domains`` (one name or several from
    ``DOMAINS``, drawn uniformly), ``facts`` (``world``: the hidden fact's item is the one whose value ``FACTS`` gives; ``random``:
    any item, so the value cannot be looked up; for pretraining agents that must read it).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if facts not in FACT_MODES:
        raise ValueError(f"unknown facts mode {facts!r}; choose one of {', '.join(FACT_MODES)}")
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
    # Random-mode items come from their own stream, so both modes draw the same chains and stories.
    item_rng = random.Random(f"recursivemas-world-items:{split}:{seed}")
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    tries = 0
    domain = None
    while len(records) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"could not draw {n} distinct {split} problems with these knobs; widen max_value or steps")
        # A record's domain is drawn once and kept until a chain fits it: domains stay uniform although
        # some reject more chains than others (a purchase needs 10 dollars or more to spend).
        domain = domain or rng.choice(names)
        start, ops = _draw_chain(rng, rng.randint(lo, hi), max_value, max_total)
        hidden = _fact_position(rng, domain, start, ops, max_total)
        if hidden is None:  # every problem needs one fact the question only names
            continue
        # The fact's value is drawn afresh, uniform and independent of everything the question states
        # (the chain's later operations were drawn for the old value, so they cannot hint at the new one).
        x = rng.choice(_FACT_VALUES)
        ops[hidden] = (ops[hidden][0], x)
        sig = _signature(domain, start, ops)
        if sig in seen or split_of(domain, start, ops) != split:
            continue
        seen.add(sig)
        item = (item_rng.choice(_FACT_ITEMS[domain]) if facts == "random"
                else _FACT_ITEMS[domain][_FACT_VALUES.index(x)])
        records.append(_render(rng, domain, start, ops, f"{split}-{seed}-{len(records):06d}", hidden, item))
        domain = None
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


def is_correct(prediction: str, answer: str) -> bool:
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
