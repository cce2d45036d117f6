"""Accuracy of a tool-calling zoo agent with the real ``<python>`` tool, and without it.

With the tool, decoding stops at ``</python>``, the program runs in the sandbox (the same
``PythonTool`` the engine uses), its output is appended as ``recursivemas.tools.loop.format_result``
does (through ``ToolLoop``), and decoding resumes. Without it, the model writes straight on: its ``<result>`` block and
``#### n`` line are then its own arithmetic. Batched (unlike the engine's per-question loop) so a
zoo build measures 200 problems in seconds; tests/test_bundled_patterns.py checks the engine path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recursivemas.tools.loop import ToolLoop
from recursivemas.tools.python_tool import PythonTool
from recursivemas.bundled.world import is_correct
from recursivemas.bundled.zoo.pretrain import generate_texts
from recursivemas.bundled.zoo.roles import ROLES, render_prompt

CLOSE = "</python>"


def answer_with_tool(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 96, tool: PythonTool | None = None) -> list[str]:
    """Transcripts: the model's text up to its python call, the tool's result block, then the model's answer."""
    loop = ToolLoop({"python": tool or PythonTool(timeout_s=10)}, max_calls=1)
    first = generate_texts(model, tokenizer, prompts, max_new_tokens, stop_strings=[CLOSE])  # up to the first call
    results = []
    for text in first:  # the engine's own call parsing and result formatting
        loop.reset()
        results.append(loop.step(text))
    pending = [i for i, r in enumerate(results) if r is not None]
    rest = generate_texts(model, tokenizer, [prompts[i] + first[i].rstrip() + results[i] for i in pending], max_new_tokens=24)
    out = list(first)
    for i, tail in zip(pending, rest):
        out[i] = first[i].rstrip() + results[i] + tail
    return out


def tool_accuracy(model, tokenizer, records: Sequence[dict[str, Any]], *, use_tool: bool, gold: bool = False,
                  role: str = "tool_caller") -> float:
    """Share of `records` answered right playing `role` with the python tool, or computing alone (``use_tool=False``)."""
    r = ROLES[role]
    prompts = [render_prompt(tokenizer, r, rec, r.gold_fill(rec) if gold else None) for rec in records]
    texts = answer_with_tool(model, tokenizer, prompts) if use_tool else generate_texts(model, tokenizer, prompts, 96)
    return sum(is_correct(t, rec["answer"]) for t, rec in zip(texts, records)) / max(1, len(records))
