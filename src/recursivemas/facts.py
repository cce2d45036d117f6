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

# Names and values no problem of any split uses (the links never saw them): ``with_vocabulary`` swaps them in,
# one for one by position, to ask whether what crosses the channel is the passage's value or a learned guess.
UNSEEN_PEOPLE = (
    "Anya", "Bruno", "Chloe", "Dmitri", "Esme", "Farid", "Gina", "Henrik", "Iris", "Jamal", "Kira", "Luca",
    "Mina", "Nils", "Olga", "Pablo", "Rosa", "Sami", "Tessa", "Umar", "Vera", "Wanda", "Xenia", "Yusuf",
)
UNSEEN_VALUES: dict[str, tuple[str, ...]] = {
    "city": ("Paris", "Tokyo", "Madrid", "Nairobi", "Boston", "Sydney", "Berlin", "Havana", "Mumbai", "Athens", "Dakar", "Kyoto"),
    "pet": ("ferret", "pony", "lizard", "crab", "mouse", "pig", "sheep", "bat", "eel", "toad", "swan", "llama"),
    "color": ("violet", "silver", "beige", "navy", "teal", "maroon", "ivory", "olive", "coral", "amber", "cyan", "lime"),
    "object": ("radio", "sofa", "lantern", "flute", "ladder", "helmet", "wallet", "canoe", "banjo", "mirror", "candle", "sled"),
    "code": tuple(str(n) for n in range(1111, 10000, 719))[:12],
}
VOCABULARIES = ("seen", "names", "values", "both")


def _draw(rng: random.Random, facts: int) -> dict[str, Any]:
    people = rng.sample(PEOPLE, facts)
    kinds = rng.sample(list(KINDS), facts)  # one fact of each kind, so the asked kind picks one sentence
    values = [rng.choice(KINDS[k][0]) for k in kinds]
    asked = rng.randrange(facts)
    kind, gold = kinds[asked], values[asked]
    options = [gold] + rng.sample([v for v in KINDS[kind][0] if v != gold], N_OPTIONS - 1)
    rng.shuffle(options)
    return _record(people, kinds, values, asked, options)


def _record(people: list[str], kinds: list[str], values: list[str], asked: int, options: list[str]) -> dict[str, Any]:
    sentences = [KINDS[k][1].format(person=p, value=v) for p, k, v in zip(people, kinds, values)]
    ask = KINDS[kinds[asked]][2].format(person=people[asked])
    return {
        "passage": " ".join(sentences),
        "question": f"{ask} Options: {', '.join(options)}.",
        "ask": ask,  # the question without its options: what the reader is told (options distract a small reader)
        "options": options,
        "answer": values[asked],
        # the reader's hand-off as a base model writes it after "Answer:": with its leading space the value is one
        # token in both real models' vocabularies for most values, so one latent can carry it (docs/real_models.md)
        "reply": " " + values[asked],
        "fact": sentences[asked],  # the one sentence the answerer needs
        "kind": kinds[asked],
    }


_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_KNOWN = {v.lower() for values, _, _ in KINDS.values() for v in values} | {v.lower() for values in UNSEEN_VALUES.values() for v in values}


def _made_up_values(rng: random.Random, kind: str, k: int) -> list[str]:
    """``k`` distinct made-up values of ``kind`` (``wide`` problems): pseudo-words of two or three syllables
    (capitalised for a city), or any four-digit code, never one of the named values of either list, so the
    links meet many token sequences instead of 60 fixed values."""
    out: list[str] = []
    while len(out) < k:
        if kind == "code":
            value = str(rng.randrange(1000, 10000))
        else:
            value = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3))))
            value = value + rng.choice(_CONSONANTS) if rng.random() < 0.5 else value
            value = value.capitalize() if kind == "city" else value
        if value.lower() not in _KNOWN and value not in out:
            out.append(value)
    return out


def _draw_wide(rng: random.Random, facts: int) -> dict[str, Any]:
    """A problem like ``_draw``'s whose values are made up (``_made_up_values``), options included."""
    people = rng.sample(PEOPLE, facts)
    kinds = rng.sample(list(KINDS), facts)
    asked = rng.randrange(facts)
    options = _made_up_values(rng, kinds[asked], N_OPTIONS)
    values = [options[0] if i == asked else _made_up_values(rng, k, 1)[0] for i, k in enumerate(kinds)]
    rng.shuffle(options)
    return _record(people, kinds, values, asked, options)


def split_of(record: dict[str, Any]) -> str:
    """The split a problem belongs to, from a hash of its passage and question."""
    digest = hashlib.sha256(f"{record['passage']}|{record['question']}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 1000
    return next(name for name, (lo, hi) in _SPLIT_BUCKETS.items() if lo <= bucket < hi)


def generate(split: str, n: int, seed: int = 0, facts: int = 4, values: str = "named") -> list[dict[str, Any]]:
    """``n`` distinct problems of ``split``, drawn reproducibly from ``seed``; ``values="made-up"`` draws every value
    (options too) as a made-up word or code instead of from the named lists (training for values never seen)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 1 <= facts <= len(KINDS):
        raise ValueError(f"facts must be between 1 and {len(KINDS)} (one per kind), got {facts}")
    if values not in ("named", "made-up"):
        raise ValueError(f"unknown values {values!r}; choose 'named' or 'made-up'")
    rng = random.Random(f"facts/{split}/{seed}/{facts}" + ("" if values == "named" else "/made-up"))
    draw = _draw if values == "named" else _draw_wide
    out, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        record = draw(rng, facts)
        key = (record["passage"], record["question"])
        if key in seen or split_of(record) != split:
            continue
        seen.add(key)
        record["id"] = f"facts/{split}/{len(out)}" + ("" if values == "named" else "/made-up")
        out.append(record)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} distinct {split} problems; ask for fewer")
    return out


def with_vocabulary(records: list[dict[str, Any]], vocabulary: str) -> list[dict[str, Any]]:
    """The same problems with unseen names (``names``), unseen values (``values``), both, or as they are (``seen``).

    Each name and value is replaced by the unseen one at its position in its list, everywhere it appears
    (passage, questions, options, answer), so problem ``i`` keeps its structure and the arms can be paired.
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; choose one of {', '.join(VOCABULARIES)}")
    swap: dict[str, str] = {}
    if vocabulary in ("names", "both"):
        swap.update(zip(PEOPLE, UNSEEN_PEOPLE))
    if vocabulary in ("values", "both"):
        for kind, (values, _, _) in KINDS.items():
            swap.update(zip(values, UNSEEN_VALUES[kind]))
    if not swap:
        return [dict(r) for r in records]
    word = re.compile(r"(?<![\w])(" + "|".join(re.escape(w) for w in sorted(swap, key=len, reverse=True)) + r")(?![\w])")
    sub = lambda text: word.sub(lambda m: swap[m.group(1)], text)  # noqa: E731
    out = []
    for r in records:
        new = {k: sub(v) if isinstance(v, str) and k not in ("id", "kind") else v for k, v in r.items()}
        new["options"] = [sub(o) for o in r["options"]]
        new["id"] = f"{r['id']}/{vocabulary}"
        out.append(new)
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
