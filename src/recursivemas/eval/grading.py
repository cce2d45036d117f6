"""Strict graders: an answer that cannot be extracted is wrong, never defaulted or guessed.

- math: the last ``\\boxed{...}``, else the last explicit final-answer statement (``Final Answer: x``,
  ``The answer is x``, ``#### x``), compared with math-verify. No "first number" fallback.
- multiple choice: a letter from the same kind of explicit statement, or a reply that is only a letter.
- short-answer QA: SQuAD-normalised exact match and token F1.
- code: the program and its tests run through :mod:`recursivemas.sandbox`.
"""

from __future__ import annotations

import json
import re
import string
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Grade", "grade", "extract_math_answer", "grade_math", "extract_choice", "grade_mc", "normalize_answer",
    "exact_match", "f1_score", "extract_qa_answer", "extract_code", "grade_code",
]


@dataclass
class Grade:
    """One graded prediction. ``score`` is 1.0/0.0, or token F1 for QA; ``extracted`` is None when unparsed."""

    correct: bool
    score: float
    extracted: str | None
    detail: str = ""


# ------------------------------------------------------------------------------------------- math

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# An explicit final-answer statement: the answer is the rest of that line.
_FINAL = re.compile(
    r"(?:final\s+answer\W{0,3}?\s*(?:is)?\s*[:：]?|\banswer\s+is\s*[:：]?|\banswer\**\s*[:：]|^[ \t]*####)"
    r"[ \t]*(?P<rest>[^\n]*)",
    re.IGNORECASE | re.MULTILINE,
)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")  # a period that ends a sentence, not a decimal point


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces matched; None if there is none or it is unclosed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _final_statement(text: str) -> str | None:
    """The answer part of the last explicit final-answer statement in ``text``."""
    matches = list(_FINAL.finditer(text))
    if not matches:
        return None
    rest = matches[-1].group("rest").strip().lstrip("*:：").strip()
    span = _MATH_SPAN.search(rest)
    if span:
        return next(g for g in span.groups() if g is not None).strip()
    rest = _SENTENCE_END.split(rest, maxsplit=1)[0]
    rest = rest.strip().strip("*").strip()
    return rest.rstrip(".").strip() or None


def extract_math_answer(text: str) -> str | None:
    """The stated final answer: last ``\\boxed{}``, else last final-answer line; None if neither."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed or None
    return _final_statement(text)


def _parse_math(answer: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    answer = answer.strip()
    if not (answer.startswith("$") or answer.startswith("\\(") or answer.startswith("\\[")):
        answer = f"${answer}$"
    timeout = 5 if threading.current_thread() is threading.main_thread() else None  # math-verify uses SIGALRM
    return parse(answer, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 fallback_mode="no_fallback", parsing_timeout=timeout)


def _plain(s: str) -> str:
    """Last-resort normal form for answers math-verify cannot parse (text answers): no spaces, markup."""
    s = re.sub(r"\\text\{([^}]*)\}|\\mathrm\{([^}]*)\}", lambda m: m.group(1) or m.group(2) or "", s)
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\$|\s+", "", s)
    return s.rstrip(".").lower()


def grade_math(prediction: str, gold: str) -> Grade:
    """Correct iff the prediction states a final answer and math-verify finds it equal to ``gold``."""
    from math_verify import verify

    answer = extract_math_answer(prediction)
    if answer is None:
        return Grade(False, 0.0, None, "no \\boxed{} answer or final-answer statement found")
    gold_parsed, pred_parsed = _parse_math(str(gold)), _parse_math(answer)
    if gold_parsed and pred_parsed:
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
        return Grade(ok, float(ok), answer, "math-verify")
    ok = _plain(answer) == _plain(str(gold)) and _plain(answer) != ""
    return Grade(ok, float(ok), answer, "string match (math-verify could not parse both sides)")


# -------------------------------------------------------------------------------- multiple choice

_LETTER_ONLY = re.compile(r"^\W*\(?\s*([A-Z])\s*\)?[\s.:)\]*]*$")


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    """The chosen letter, from a ``\\boxed{}``, a final-answer statement or a reply that is only a letter.

    Letters beyond the ``n_choices`` offered count as unparsed. Nothing is ever defaulted.
    """
    valid = string.ascii_uppercase[:n_choices]
    explicit = _last_boxed(text)
    if explicit is None:
        explicit = _final_statement(text)
    candidate = text.strip() if explicit is None else explicit
    candidate = re.sub(r"\\text\{([^}]*)\}", r"\1", candidate).replace("*", "").strip()
    m = _LETTER_ONLY.match(candidate)
    if m is None and explicit is not None:  # "The answer is (B) because ..." names its letter first
        m = re.match(r"^\(?([A-Z])\)?(?:[\s.:)]|$)", candidate)
    return m.group(1) if m and m.group(1) in valid else None


def grade_mc(prediction: str, gold: str, n_choices: int = 4) -> Grade:
    """Correct iff a valid letter can be extracted and equals ``gold``."""
    letter = extract_choice(prediction, n_choices)
    if letter is None:
        return Grade(False, 0.0, None, f"no answer letter A-{string.ascii_uppercase[n_choices - 1]} found")
    ok = letter == gold.strip().upper()
    return Grade(ok, float(ok), letter)


# ------------------------------------------------------------------------------------ short answer


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: str | list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    golds = [golds] if isinstance(golds, str) else golds
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: str | list[str]) -> float:
    """Best SQuAD token F1 of the prediction against the gold answers."""
    golds = [golds] if isinstance(golds, str) else golds
    pred = normalize_answer(prediction).split()
    best = 0.0
    for g in golds:
        gold = normalize_answer(g).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def extract_qa_answer(text: str) -> str:
    """The explicit final answer if stated (boxed or final-answer line), else the whole reply."""
    return _last_boxed(text) or _final_statement(text) or text.strip()


# ------------------------------------------------------------------------------------------- code

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The last fenced Python (or untagged) code block; the whole reply if it has no fence at all."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3", "")]
    if python:
        return python[-1]
    if blocks:
        return None  # only blocks in other languages
    return text if text.strip() else None


_FUNCTIONAL_DRIVER = """

import json as _json
_cases = _json.loads({cases!r})
_solution = Solution()
for _i, _case in enumerate(_cases):
    _args = [_json.loads(line) for line in _case["input"].splitlines() if line.strip()]
    _got = getattr(_solution, {func!r})(*_args)
    _want = _json.loads(_case["output"])
    if _got != _want:
        raise SystemExit(f"case {{_i}}: got {{_got!r}}, expected {{_want!r}}")
"""


def _same_output(got: str, want: str) -> bool:
    lines = lambda s: [ln.rstrip() for ln in s.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(want)


def grade_code(prediction: str, gold: dict[str, Any], *, timeout_s: float = 10.0, memory_mb: int = 1024) -> Grade:
    """Run the extracted program against ``gold`` tests in the sandbox.

    ``gold`` is one of ``{"type": "script", "tests": str, "setup": str}`` (setup + program + tests must
    exit 0), ``{"type": "io", "cases": [{"input", "output"}]}`` (stdin in, stdout compared line by line)
    or ``{"type": "functional", "func_name": str, "cases": [...]}`` (``Solution().func(*json args)``).
    """
    from recursivemas.sandbox import run_python

    code = extract_code(prediction)
    if code is None:
        return Grade(False, 0.0, None, "no Python code block found")
    kind = gold.get("type")
    if kind == "script":
        program = f"{gold.get('setup', '')}\n{code}\n\n{gold['tests']}\n"
        res = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
        return Grade(res.ok, float(res.ok), code, "" if res.ok else _why(res))
    if kind == "functional":
        program = code + _FUNCTIONAL_DRIVER.format(cases=json.dumps(gold["cases"]), func=gold["func_name"])
        res = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
        return Grade(res.ok, float(res.ok), code, "" if res.ok else _why(res))
    if kind == "io":
        for i, case in enumerate(gold["cases"]):
            res = run_python(code, stdin=case["input"], timeout_s=timeout_s, memory_mb=memory_mb)
            if not res.ok:
                return Grade(False, 0.0, code, f"case {i}: {_why(res)}")
            if not _same_output(res.stdout, case["output"]):
                return Grade(False, 0.0, code, f"case {i}: wrong output")
        return Grade(True, 1.0, code)
    raise ValueError(f"code gold has type {kind!r}; expected 'script', 'io' or 'functional'")


def _why(res: Any) -> str:
    last = (res.stderr.strip().splitlines() or [""])[-1]
    return f"{res.error}: {last}"[:300]


# ------------------------------------------------------------------------------------------- all


def grade(example: Any, prediction: str, *, timeout_s: float = 10.0) -> Grade:
    """Grade ``prediction`` for an example with ``kind``, ``gold`` and ``meta`` (see ``tasks.Example``)."""
    kind = example.kind
    if kind == "math":
        return grade_math(prediction, example.gold)
    if kind == "mc":
        return grade_mc(prediction, example.gold, int(example.meta.get("n_choices", 4)))
    if kind == "qa":
        golds = example.gold if isinstance(example.gold, list) else [example.gold]
        answer = extract_qa_answer(prediction)
        em = exact_match(answer, golds)
        return Grade(bool(em), f1_score(answer, golds), answer, "score is token F1; correct is exact match")
    if kind == "code":
        return grade_code(prediction, example.gold, timeout_s=timeout_s)
    raise ValueError(f"unknown example kind {kind!r}; expected math, mc, qa or code")
