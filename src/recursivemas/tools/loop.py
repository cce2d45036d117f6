"""The tool loop: run `<python>`/`<search>` calls found in decoded text and append `<result>` blocks.

The decoding agent (the tool-caller in the deliberation pattern) generates until it closes a
tool tag; the engine hands that text to `ToolLoop.step`, appends what it returns to the context
and keeps decoding. `run_tool_loop` is that driver written once, for engines and tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable


@runtime_checkable
class Tool(Protocol):
    """A tool the model calls as `<name>payload</name>`; returns the text to show it."""

    name: str

    def __call__(self, payload: str) -> str: ...


@dataclass(frozen=True)
class ToolCall:
    """One executed call: which tool, what it got, what it returned (before cutting), how long it took."""

    tool: str
    payload: str
    result: str
    seconds: float


def limit_message(max_calls: int) -> str:
    """The result text sent, once, for the first call past the limit."""
    return f"Tool call limit ({max_calls}) reached; answer now without tools."


def format_result(text: str) -> str:
    """Wrap a tool's output the way it is appended to the context."""
    return f"\n<result>\n{text}\n</result>\n"


def cut(text: str, limit: int) -> str:
    """Cut `text` to `limit` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n... [cut: {len(text) - limit} more characters not shown]"


class ToolLoop:
    """Finds complete tool calls in generated text, runs them, and counts them against a limit.

    One loop serves one decoded answer; call `reset()` (or make a new loop) for the next.
    """

    def __init__(self, tools: dict[str, Tool], max_calls: int = 5, result_chars: int = 6000) -> None:
        for key, tool in tools.items():
            if key != getattr(tool, "name", None):
                raise ValueError(f"tool registered as {key!r} has name {getattr(tool, 'name', None)!r}; they must match")
            if not key.isidentifier():
                raise ValueError(f"tool name {key!r} is not usable as a tag; use letters, digits and '_'")
        if max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {max_calls}")
        if result_chars < 1:
            raise ValueError(f"result_chars must be >= 1, got {result_chars}")
        self.tools = dict(tools)
        self.max_calls = max_calls
        self.result_chars = result_chars
        self.reset()

    def reset(self) -> None:
        """Forget calls and pending text, for the next answer."""
        self.calls: list[ToolCall] = []
        self.limit_reached = False
        self._pending = ""

    @property
    def stop_strings(self) -> list[str]:
        """Closing tags the engine must stop decoding at; empty once the limit message was sent."""
        if self.limit_reached:
            return []
        return [f"</{name}>" for name in self.tools]

    def find_call(self, text: str) -> tuple[str, str] | None:
        """Return (tool, payload) if `text` ends (up to whitespace) with a complete call, else None."""
        stripped = text.rstrip()
        for name in self.tools:
            close = f"</{name}>"
            if not stripped.endswith(close):
                continue
            end = len(stripped) - len(close)
            start = stripped.rfind(f"<{name}>", 0, end)
            if start < 0:
                return None
            return name, stripped[start + len(name) + 2 : end]
        return None

    def step(self, segment: str) -> str | None:
        """Run the call that `segment` ends with; return the text to append, or None if there is none.

        Text without a complete call is kept, so a call split over several segments still counts.
        After `max_calls` calls, the next call gets the limit message (the tool does not run),
        and every later call gets None.
        """
        self._pending += segment
        found = self.find_call(self._pending)
        if found is None or self.limit_reached:
            return None
        self._pending = ""
        if len(self.calls) >= self.max_calls:
            self.limit_reached = True
            return format_result(limit_message(self.max_calls))
        name, payload = found
        t0 = time.perf_counter()
        try:
            result = self.tools[name](payload)
        except Exception as exc:  # a tool failure is shown to the model, never ends the loop
            result = f"Error: the {name} tool failed: {type(exc).__name__}: {exc}"
        self.calls.append(ToolCall(name, payload, result, time.perf_counter() - t0))
        return format_result(cut(result, self.result_chars))

    def summary(self) -> dict[str, object]:
        """Counts and seconds per tool, for run reports."""
        by_tool: dict[str, dict[str, float]] = {}
        for call in self.calls:
            entry = by_tool.setdefault(call.tool, {"calls": 0, "seconds": 0.0})
            entry["calls"] += 1
            entry["seconds"] += call.seconds
        return {
            "calls": len(self.calls),
            "seconds": sum(c.seconds for c in self.calls),
            "limit_reached": self.limit_reached,
            "by_tool": by_tool,
        }


def run_tool_loop(generate: Callable[[str], tuple[str, bool]], loop: ToolLoop) -> str:
    """Decode with tools until the model stops without a call; return the full transcript.

    `generate(appended)` appends `appended` to the context, continues decoding and returns
    (new_segment, stopped_at_stop_string). The first call appends "". The number of rounds is
    bounded: at most `max_calls` tool runs plus one limit message.
    """
    transcript = ""
    appended = ""
    while True:
        segment, _stopped = generate(appended)
        transcript += segment
        next_text = loop.step(segment)
        if next_text is None:
            return transcript
        transcript += next_text
        appended = next_text
