"""Procedural reader -> answerer problems: facts that must cross from one agent to the other.

Each problem is a short passage of generated facts about people (where they live, their pet, their
favourite colour, what they own, their locker code; one fact of each kind) and a question about one
of them with four options of the asked kind, exactly one of which appears in the passage. The
reader's prompt holds the passage and the question (field ``passage``); the answerer's only the
question, so the answerer alone is at chance (25%) and anything above it came through the channel.

The answer is the option itself (``Oslo``, ``parrot``, ``4821``), graded strictly by :func:`grade`:
the first line of the output must name exactly one of the four options (as a whole word, case aside),
the gold one; a line naming none or several is wrong. Small models copy an option (often inside a
sentence: "Ines lives in Oslo.") far more reliably than they map it to a letter.

Splits are disjoint by construction: a problem's split is chosen by a hash of its content (people,
facts, question), so no test passage is ever a training passage; ``seed`` picks which problems are drawn.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

SPLITS = ("train", "validation", "test")
_SPLIT_BUCKETS = {"train": (0, 900), "validation": (900, 950), "test": (950, 1000)}

PEOPLE = (
    "Mara", "Tobias", "Ines", "Kofi", "Lena", "Ravi", "Sofia", "Omar", "Yuki", "Pavel", "Amara", "Jonas",
    "Nadia", "Felix", "Priya", "Hugo", "Elena", "Tariq", "Greta", "Mateo", "Leila", "Oscar", "Zara", "Emil",
)
# kind -> (values, fact template, question template)
KINDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "city": (("Oslo", "Lima", "Cairo", "Perth", "Dublin", "Quito", "Seoul", "Lagos", "Porto", "Hanoi", "Denver", "Vienna"),
             "{person} lives in {value}.", "Where does {person} live?"),
    "pet": (("cat", "dog", "parrot", "rabbit", "horse", "goat", "turtle", "hamster", "owl", "frog", "duck", "snake"),
            "{person} has a pet {value}.", "What pet does {person} have?"),
    "color": (("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown", "gray", "gold"),
              "{person}'s favorite color is {value}.", "What is {person}'s favorite color?"),
    "object": (("kite", "drum", "lamp", "clock", "bicycle", "guitar", "camera", "violin", "telescope", "kayak", "piano", "tent"),
               "{person} owns a {value}.", "What does {person} own?"),
    "code": (tuple(str(n) for n in range(1000, 10000, 373))[:12], "{person}'s locker code is {value}.", "What is {person}'s locker code?"),
}
N_OPTIONS = 4


def _draw(rng: random.Random, facts: int) -> dict[str, Any]:
    people = rng.sample(PEOPLE, facts)
    kinds = rng.sample(list(KINDS), facts)  # one fact of each kind, so the asked kind picks one sentence
    values = [rng.choice(KINDS[k][0]) for k in kinds]
    asked = rng.randrange(facts)
    kind, gold = kinds[asked], values[asked]
    options = [gold] + rng.sample([v for v in KINDS[kind][0] if v != gold], N_OPTIONS - 1)
    rng.shuffle(options)
    sentences = [KINDS[k][1].format(person=p, value=v) for p, k, v in zip(people, kinds, values)]
    ask = KINDS[kind][2].format(person=people[asked])
    return {
        "passage": " ".join(sentences),
        "question": f"{ask} Options: {', '.join(options)}.",
        "ask": ask,  # the question without its options: what the reader is told (options distract a small reader)
        "options": options,
        "answer": gold,
        # the reader's hand-off as a base model writes it after "Answer:": with its leading space the value is one
        # token in both real models' vocabularies for most values, so one latent can carry it (docs/real_models.md)
        "reply": " " + gold,
        "fact": sentences[asked],  # the one sentence the answerer needs
        "kind": kind,
    }


def split_of(record: dict[str, Any]) -> str:
    """The split a problem belongs to, from a hash of its passage and question."""
    digest = hashlib.sha256(f"{record['passage']}|{record['question']}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 1000
    return next(name for name, (lo, hi) in _SPLIT_BUCKETS.items() if lo <= bucket < hi)


def generate(split: str, n: int, seed: int = 0, facts: int = 4) -> list[dict[str, Any]]:
    """``n`` distinct problems of ``split``, drawn reproducibly from ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 1 <= facts <= len(KINDS):
        raise ValueError(f"facts must be between 1 and {len(KINDS)} (one per kind), got {facts}")
    rng = random.Random(f"facts/{split}/{seed}/{facts}")
    out, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        record = _draw(rng, facts)
        key = (record["passage"], record["question"])
        if key in seen or split_of(record) != split:
            continue
        seen.add(key)
        record["id"] = f"facts/{split}/{len(out)}"
        out.append(record)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} distinct {split} problems; ask for fewer")
    return out


_STRIP = re.compile(r"^[\s\"'*:.,;!()\[\]-]+|[\s\"'*:.,;!()\[\]-]+$")


def first_line(text: str) -> str:
    """The graded part of an output: its first non-empty line without surrounding spaces and punctuation."""
    for line in text.splitlines():
        if line.strip():
            return _STRIP.sub("", line)
    return ""


def extract_answer(text: str, options: list[str]) -> str | None:
    """The one option the output's first line names (as a whole word), or None when it names none or several."""
    line = first_line(text).lower()
    named = [o for o in options if re.search(rf"(?<![\w]){re.escape(o.lower())}(?![\w])", line)]
    return named[0] if len(named) == 1 else None


def grade(prediction: str, record: dict[str, Any]) -> bool:
    """Strict: the first line must name exactly one of the options, the gold one ("Oslo", "She lives in Oslo.")."""
    return extract_answer(prediction, record["options"]) == record["answer"]
