"""Strict graders: an answer that cannot be extracted is wrong, never defaulted or guessed.

- math: the last ``\\boxed{...}``, else the last explicit final-answer statement (``Final Answer: x``,
  ``The answer is x``, ``#### x``), compared with math-verify. No "first number" fallback.
- multiple choice: a letter from the same kind of explicit statement, or a reply that is only a letter.
- short-answer QA: SQuAD-normalised exact match and token F1.
- code: the program runs through :mod:`recursivemas.sandbox`; script and functional tests run in a
  split harness whose verdict the solution cannot forge (``docs/sandbox.md#grading``).
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


# Code grading never trusts the exit status of a process the solution runs in. The harness below
# forks: the child (model side) runs the setup and the solution under the sandbox's Python guard and
# then only answers calls; the parent (grader side) never runs a line of model code. It reads a
# per-run nonce and the tests from stdin only after the fork (the child closed its stdin first and
# the sandbox unlinked the file), so the solution sees neither; it runs the tests with pristine builtins, calling into the child over a pipe and
# getting back only plain ``marshal`` data (no objects with a custom ``__eq__``), and prints the
# nonce only when every test passed. The grader requires exactly that nonce on stdout; the model
# side's stdout is redirected to stderr. The argument is in docs/sandbox.md#grading.
_HARNESS = r"""
import builtins, ctypes, json, marshal, os, struct, sys
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the model side cannot trace or read us
SETUP, SOLUTION, FUNC = {setup!r}, {solution!r}, {func!r}  # the tests and the nonce come on stdin
_req_r, _req_w = os.pipe()
_rep_r, _rep_w = os.pipe()

def _send(fd, obj):
    data = marshal.dumps(obj)
    data = struct.pack("<Q", len(data)) + data
    while data:
        data = data[os.write(fd, data):]

def _recv(fd):
    head = b""
    while len(head) < 8:
        chunk = os.read(fd, 8 - len(head))
        if not chunk:
            raise EOFError("the solution's process ended")
        head += chunk
    (n,), parts = struct.unpack("<Q", head), []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the solution's process ended")
        parts.append(chunk)
        n -= len(chunk)
    return marshal.loads(b"".join(parts))

_pid = os.fork()
if _pid == 0:  # ---- model side: nothing secret is, or ever was, in this process
    os.close(_req_w); os.close(_rep_r)
    _null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(_null, 0)
    os.dup2(2, 1)  # its prints cannot reach the grader's stdout
    os.close(_null)
    __sandbox_guard__()
    ns = {{"__name__": "__main__", "__builtins__": builtins}}
    try:
        exec(compile(SETUP + "\n" + SOLUTION, "solution.py", "exec"), ns)
    except BaseException as exc:
        _send(_rep_w, ("error", type(exc).__name__, str(exc)[:500]))
        os._exit(1)
    table = {{}}
    for k, v in list(ns.items()):
        if k.startswith("__"):
            continue
        if type(v).__name__ == "module":
            table[k] = ("module", getattr(v, "__name__", ""))
        elif callable(v):
            table[k] = ("callable",)
        else:
            try:
                table[k] = ("value", marshal.dumps(v))
            except Exception:
                pass
    _send(_rep_w, ("ready", table))
    _instance = []
    while True:
        try:
            name, args, kwargs = _recv(_req_r)
        except EOFError:
            os._exit(0)
        try:
            if name is None:  # functional tests: a method of one Solution() instance
                if not _instance:
                    _instance.append(ns["Solution"]())
                fn = getattr(_instance[0], FUNC)
            else:
                fn = ns[name]
            reply = ("ok", marshal.dumps(fn(*args, **kwargs)))
        except BaseException as exc:
            reply = ("raise", type(exc).__name__, str(exc)[:500])
        _send(_rep_w, reply)

# ---- grader side: never runs model code, holds the nonce and the tests only from here on
os.close(_req_r); os.close(_rep_w)
_given = json.loads(sys.stdin.read())
_nonce, TESTS = _given["nonce"], _given["tests"]
_out = os.dup(1)
os.dup2(2, 1)  # whatever the tests print goes to stderr; stdout carries only the nonce

class SolutionError(Exception):
    pass

def _remote(name):
    def call(*args, **kwargs):
        _send(_req_w, (name, args, kwargs))
        reply = _recv(_rep_r)
        if reply[0] == "ok":
            return marshal.loads(reply[1])
        raise SolutionError(f"{{name or FUNC}} raised {{reply[1]}}: {{reply[2]}}")
    call.__name__ = name or FUNC
    return call

def _fail(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    os._exit(1)

try:
    first = _recv(_rep_r)
except EOFError:
    _fail("the solution exited or crashed before the tests ran")
if first[0] != "ready":
    _fail(f"the solution raised {{first[1]}}: {{first[2]}}")
g = {{"__name__": "__main__", "__builtins__": builtins}}
_builtin_names = set(vars(builtins))
for k, entry in first[1].items():
    if k in _builtin_names:  # a solution's own `abs` or `isinstance` must not answer for the tests'
        continue
    if entry[0] == "callable":
        g[k] = _remote(k)
    elif entry[0] == "value":
        g[k] = marshal.loads(entry[1])
    elif entry[0] == "module" and entry[1].partition(".")[0] in sys.stdlib_module_names:
        import importlib
        g[k] = importlib.import_module(entry[1])
try:
    exec(compile(SETUP, "setup.py", "exec"), g)
    if FUNC is not None:
        g["_method"] = _remote(None)
    exec(compile(TESTS, "tests.py", "exec"), g)
except BaseException as exc:
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    _fail(f"tests failed: {{type(exc).__name__}}: {{exc}}"[:500])
os.write(_out, (_nonce + "\n").encode())
os._exit(0)
"""

_FUNCTIONAL_TESTS = """
for _i, _case in enumerate(_json.loads({cases!r})):
    _args = [_json.loads(line) for line in _case["input"].splitlines() if line.strip()]
    _got, _want = _method(*_args), _json.loads(_case["output"])
    if _got != _want:
        raise AssertionError(f"case {{_i}}: got {{_got!r}}, expected {{_want!r}}")
"""


def _same_output(got: str, want: str) -> bool:
    lines = lambda s: [ln.rstrip() for ln in s.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(want)


def _run_harness(code: str, setup: str, tests: str, func: str | None, timeout_s: float, memory_mb: int) -> Grade:
    """Grade ``code`` with the split harness: correct iff the grader side printed this run's nonce."""
    import secrets

    from recursivemas.sandbox import run_python

    nonce = secrets.token_hex(16)
    program = _HARNESS.format(setup=setup, solution=code, func=func)
    given = json.dumps({"nonce": nonce, "tests": tests})
    res = run_python(program, stdin=given, timeout_s=timeout_s, memory_mb=memory_mb, harness=True)
    ok = res.ok and res.stdout == nonce + "\n"
    return Grade(ok, float(ok), code, "" if ok else _why(res))


def grade_code(prediction: str, gold: dict[str, Any], *, timeout_s: float = 10.0, memory_mb: int = 1024) -> Grade:
    """Run the extracted program against ``gold`` tests in the sandbox.

    ``gold`` is one of ``{"type": "script", "tests": str, "setup": str}`` (the tests' asserts must all
    pass), ``{"type": "io", "cases": [{"input", "output"}]}`` (stdin in, stdout compared line by line)
    or ``{"type": "functional", "func_name": str, "cases": [...]}`` (``Solution().func(*json args)``).
    Script and functional tests run in a harness whose verdict the solution cannot forge by exiting
    early, printing, or patching (see ``docs/sandbox.md#grading``).
    """
    from recursivemas.sandbox import run_python

    code = extract_code(prediction)
    if code is None:
        return Grade(False, 0.0, None, "no Python code block found")
    kind = gold.get("type")
    if kind == "script":
        return _run_harness(code, gold.get("setup", ""), gold["tests"], None, timeout_s, memory_mb)
    if kind == "functional":
        tests = "import json as _json\n" + _FUNCTIONAL_TESTS.format(cases=json.dumps(gold["cases"]))
        return _run_harness(code, "", tests, gold["func_name"], timeout_s, memory_mb)
    if kind == "io":  # the verdict is the printed output itself, so an early exit cannot fake it
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
