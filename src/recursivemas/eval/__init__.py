"""Evaluation: benchmark tasks, strict grading, the run harness, reports and tuning.

Model-written code is only ever run through :mod:`recursivemas.sandbox`.
"""

from recursivemas.eval.grading import Grade, grade
from recursivemas.eval.harness import evaluate, read_records
from recursivemas.eval.tasks import TASKS, Example, TaskDataError, get_task, load_examples

__all__ = ["Example", "Grade", "TASKS", "TaskDataError", "evaluate", "get_task", "grade", "load_examples",
           "read_records"]
