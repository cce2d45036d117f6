"""Strict grading: adversarial math pairs, no defaulted letters, SQuAD EM/F1, code through the sandbox."""

from __future__ import annotations

import pytest

from recursivemas.eval.grading import (
    exact_match,
    extract_choice,
    extract_code,
    extract_math_answer,
    extract_qa_answer,
    f1_score,
    grade,
    grade_code,
    grade_math,
    grade_mc,
    normalize_answer,
)
from recursivemas.eval.tasks import Example

MUST_NOT_MATCH = [("1/2", "1/3"), (r"3\sqrt{3}", "3"), (r"2\pi", "2"), ("14/3", "4.9"), (r"(3, \pi/2)", "3")]
MUST_MATCH = [("0.5", r"\frac{1}{2}"), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"), ("42", "42.0"),
              (r"\dfrac{14}{3}", "14/3")]


@pytest.mark.parametrize(("a", "b"), MUST_NOT_MATCH)
def test_adversarial_math_pairs_do_not_match(a: str, b: str) -> None:
    assert not grade_math(f"so \\boxed{{{a}}}", b).correct
    assert not grade_math(f"so \\boxed{{{b}}}", a).correct


@pytest.mark.parametrize(("a", "b"), MUST_MATCH)
def test_equivalent_math_answers_match(a: str, b: str) -> None:
    assert grade_math(f"\\boxed{{{a}}}", b).correct
    assert grade_math(f"\\boxed{{{b}}}", a).correct


@pytest.mark.parametrize(("text", "answer"), [
    (r"first \boxed{1} then \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{\sqrt{\frac{1}{2}}}", r"\sqrt{\frac{1}{2}}"),
    ("Final Answer: The final answer is $\\frac12$. I hope it is correct.", r"\frac12"),
    ("work...\n#### 1,234", "1,234"),
    ("The answer is 3.5.", "3.5"),
    ("So the answer is 12. Let me double check.", "12"),
    ("**Final Answer:** 7", "7"),
    ("The answer is: $x=2$", "x=2"),
])
def test_math_answer_extraction(text: str, answer: str) -> None:
    assert extract_math_answer(text) == answer


def test_math_has_no_number_fallback() -> None:
    # the release compared the integer part of the first number: here an unstated answer is wrong
    assert extract_math_answer("I computed 1/2 and then 7") is None
    g = grade_math("I computed 1/2 and then 7", "1/2")
    assert not g.correct and g.extracted is None
    assert grade_math("Final Answer: 1/2", "1/2").correct  # the line the release's regex never matched
    assert not grade_math(r"\boxed{}", "0").correct


def test_text_answers_fall_back_to_strict_string_match() -> None:
    assert grade_math(r"\boxed{\text{Monday}}", "Monday").correct
    assert not grade_math(r"\boxed{\text{Tuesday}}", "Monday").correct


@pytest.mark.parametrize(("text", "letter"), [
    ("The answer is (B) because", "B"), ("B", "B"), ("(C).", "C"), ("**Answer: D**", "D"), (r"\boxed{A}", "A"),
    (r"\boxed{\text{C}}", "C"), ("Reasoning...\nFinal Answer: A", "A"),
    (r"\boxed{E}", None), ("Answer: E", None), ("The answer is Paris", None), ("I pick A or B", None),
    ("", None), ("I am not sure.", None), ("The answer is b", None),
])
def test_choice_extraction_is_strict(text: str, letter: str | None) -> None:
    assert extract_choice(text, 4) == letter


def test_unparsed_choice_is_wrong_never_defaulted() -> None:
    # the release defaulted both prediction and gold to "A" on a parse failure
    g = grade_mc("I cannot decide between the options.", "A", 4)
    assert not g.correct and g.extracted is None
    assert grade_mc(r"\boxed{A}", "A", 4).correct and not grade_mc(r"\boxed{B}", "A", 4).correct


def test_squad_normalisation_em_and_f1() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Eiffel Tower", ["Eiffel Tower", "Paris"]) == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert f1_score("Eiffel", "Eiffel Tower") == pytest.approx(2 / 3)
    assert f1_score("London", ["Paris"]) == 0.0
    assert extract_qa_answer("Thinking...\nFinal Answer: Barack Obama") == "Barack Obama"


def test_qa_grade_uses_explicit_answer() -> None:
    ex = Example("q1", "Who?", ["Barack Obama"], "qa", {})
    g = grade(ex, "He was president.\nFinal Answer: Barack Obama")
    assert g.correct and g.score == 1.0
    g = grade(ex, "Final Answer: Obama")
    assert not g.correct and g.score == pytest.approx(2 / 3)


def test_code_extraction() -> None:
    assert extract_code("```python\nx = 1\n```\ntext\n```py\nx = 2\n```") == "x = 2\n"
    assert extract_code("```cpp\nint main(){}\n```") is None
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_code_grading_runs_tests_in_the_sandbox() -> None:
    gold = {"type": "script", "setup": "import math", "tests": "assert hyp(3, 4) == 5\n"}
    good = "```python\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n```"
    assert grade_code(good, gold).correct
    g = grade_code(good.replace("b * b", "b"), gold)
    assert not g.correct and "AssertionError" in g.detail
    assert not grade_code("no code here, just words", {"type": "script", "tests": "assert False"}).correct


def test_code_grading_stdin_and_functional_tests() -> None:
    io = {"type": "io", "cases": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -1\n", "output": "9"}]}
    assert grade_code("```python\na, b = map(int, input().split())\nprint(a + b)\n```", io).correct
    assert not grade_code("```python\na, b = map(int, input().split())\nprint(a * b)\n```", io).correct
    fn = {"type": "functional", "func_name": "add", "cases": [{"input": "1\n2", "output": "3"}]}
    assert grade_code("```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```", fn).correct
    assert not grade_code("```python\nclass Solution:\n    def add(self, a, b):\n        return a - b\n```", fn).correct
    with pytest.raises(ValueError, match="type"):
        grade_code("```python\npass\n```", {"type": "mystery"})


def test_grade_dispatch_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        grade(Example("x", "q", "1", "essay", {}), "1")


# ------------------------------------------------------------- code grading that cannot be gamed

_HYP_GOLD = {"type": "script", "setup": "import math",
             "tests": "def check(candidate):\n    assert candidate(3, 4) == 5\n"
                      "    assert abs(candidate(5, 12) - 13) < 1e-9\n    assert isinstance(candidate(6, 8), (int, float))\n\n"
                      "check(hyp)\n"}
_WRONG = "def hyp(a, b):\n    return 0\n"
# Each one is a wrong solution plus a trick to be graded correct anyway; all must be graded wrong.
ADVERSARIAL = {
    "sys.exit(0)": _WRONG + "import sys\nsys.exit(0)\n",
    "os._exit(0)": _WRONG + "import os\nos._exit(0)\n",
    "raise SystemExit": _WRONG + "raise SystemExit\n",
    "atexit handler": _WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n"
                      "atexit.register(print, 'all tests passed')\n",
    "patch builtins": _WRONG + "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
                      "builtins.AssertionError = type('Nope', (Exception,), {})\n",
    "redefine check": _WRONG + "def check(candidate):\n    pass\n",
    "fake pass marker": _WRONG + "import sys, secrets\nprint('PASSED')\nsys.stdout.write(secrets.token_hex(16) + '\\n')\n"
                        "import os\nos.write(1, b'ok\\n')\n",
    "always-equal result": "class E(float):\n    def __eq__(self, o):\n        return True\n    def __sub__(self, o):\n"
                           "        return 0.0\n    __hash__ = float.__hash__\n"
                           "def hyp(a, b):\n    return E(0)\n",
    "read the nonce from stdin": _WRONG + "import sys, os\nprint(sys.stdin.read())\nos.write(1, os.read(0, 100))\n"
                                 "os._exit(0)\n",
    "kill the parent": _WRONG + "import ctypes, os, signal\nlibc = ctypes.CDLL(None)\nlibc.kill(os.getppid(), 9)\n"
                       "libc.kill(0, 9)\n",
    "trace the parent": _WRONG + "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.ptrace(16, os.getppid(), 0, 0)\n"
                        "libc.syscall(310, os.getppid(), 0, 0, 0, 0, 0)\nos._exit(0)\n",
    "settrace skips asserts": _WRONG + "import sys\nsys.settrace(lambda *a: None)\n",
    "raw exit syscall": _WRONG + "import ctypes\nctypes.CDLL(None).syscall(231, 0)\n",
    "shadow a builtin the tests use": _WRONG + "def abs(x):\n    return 0\ndef isinstance(*a):\n    return True\n"
                                      "def hyp(a, b):\n    return 5 if (a, b) == (3, 4) else 0\n",
    "hardcode answers read from the tests": r"""
import gc, linecache, re, sys
seen = " ".join(str(o) for o in gc.get_objects() if isinstance(o, (str, dict, tuple)))
seen += " ".join("".join(v[2]) for v in linecache.cache.values() if v[2])
found = {(int(a), int(b)): r for a, b, r in re.findall(r"candidate\((\d+), (\d+)\)\D+(\d+)", seen)}
def hyp(a, b):
    return float(found.get((a, b), 0))
""",
}


@pytest.mark.parametrize("trick", sorted(ADVERSARIAL))
def test_code_grading_cannot_be_gamed(trick: str) -> None:
    g = grade_code(f"```python\n{ADVERSARIAL[trick]}```", _HYP_GOLD)
    assert not g.correct and g.score == 0.0, (trick, g)


def test_code_grading_passes_honest_solutions_that_print_and_exit_normally() -> None:
    honest = ("import sys, math\nprint('debug output')\nprint('noise', file=sys.stderr)\n"
              "def hyp(a, b):\n    return math.sqrt(a * a + b * b)\n")
    assert grade_code(f"```python\n{honest}```", _HYP_GOLD).correct
    assert not grade_code(f"```python\n{honest.replace('b * b', 'b')}```", _HYP_GOLD).correct


def test_functional_grading_cannot_be_gamed() -> None:
    fn = {"type": "functional", "func_name": "add", "cases": [{"input": "1\n2", "output": "3"}]}
    good = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert grade_code(f"```python\n{good}```", fn).correct
    for trick in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                  ("class E:\n    def __eq__(self, o):\n        return True\n"
                   "class Solution:\n    def add(self, a, b):\n        return E()\n")):
        bad = "class Solution:\n    def add(self, a, b):\n        return a - b\n" + trick
        assert not grade_code(f"```python\n{bad}```", fn).correct, trick
