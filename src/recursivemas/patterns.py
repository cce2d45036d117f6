"""The paper's four collaboration patterns (docs/method.md#patterns), each an instance of one graph type.

A pattern only names roles, edges (with the slot each fills) and the decoding agent; the engine
runs any graph the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from recursivemas.validation import ConfigError

PATTERNS = ("sequential", "distillation", "mixture", "deliberation")


@dataclass
class EdgeConfig:
    """One edge of the graph: ``src``'s latents (or text) fill slot ``<<slot>>`` of ``dst``'s prompt."""

    src: str
    dst: str
    slot: str
    feedback: bool = False  # carried to the next round (docs/method.md#rounds)


def _fixed(roles: tuple[str, ...], agents: list[str], pattern: str) -> None:
    if sorted(agents) != sorted(roles):
        raise ConfigError(f"pattern {pattern!r} needs exactly the agents {', '.join(roles)}; got {', '.join(agents)}")


def expand_pattern(pattern: str, agents: list[str]) -> tuple[list[EdgeConfig], str, dict[str, str]]:
    """Return (edges, decoding agent, training target field per role) for a named pattern."""
    if pattern == "sequential":
        _fixed(("planner", "critic", "solver"), agents, pattern)
        edges = [
            EdgeConfig("planner", "critic", "PLAN"),
            EdgeConfig("critic", "solver", "REFINED_PLAN"),
            EdgeConfig("solver", "planner", "FEEDBACK", feedback=True),
        ]
        return edges, "solver", {"planner": "plan", "critic": "refined_plan", "solver": "answer"}
    if pattern == "distillation":
        _fixed(("expert", "learner"), agents, pattern)
        edges = [EdgeConfig("expert", "learner", "EXPERT"), EdgeConfig("learner", "expert", "FEEDBACK", feedback=True)]
        return edges, "learner", {"expert": "expert", "learner": "answer"}
    if pattern == "deliberation":
        _fixed(("reflector", "tool_caller"), agents, pattern)
        edges = [EdgeConfig("reflector", "tool_caller", "REFLECTION"), EdgeConfig("tool_caller", "reflector", "FEEDBACK", feedback=True)]
        return edges, "tool_caller", {"reflector": "reflection", "tool_caller": "answer"}
    if pattern == "mixture":
        if "summarizer" not in agents or len(agents) < 2:
            raise ConfigError("pattern 'mixture' needs a 'summarizer' agent and at least one expert agent")
        experts = [a for a in agents if a != "summarizer"]
        edges = [EdgeConfig(e, "summarizer", e.upper()) for e in experts]
        edges += [EdgeConfig("summarizer", e, "FEEDBACK", feedback=True) for e in experts]
        return edges, "summarizer", {**{e: e for e in experts}, "summarizer": "answer"}
    raise ConfigError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)} or give 'edges'")
