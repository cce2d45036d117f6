"""Accounting: what every agent did in every round, so efficiency claims are measured, not asserted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

COUNTERS = ("generated_tokens", "latent_steps", "forward_calls", "input_positions", "cached_positions", "wall_time_s")


@dataclass
class StepUsage:
    """One agent's work in one round for one question.

    ``forward_calls`` and ``wall_time_s`` are shared by the questions batched together: calls count the
    batched forward passes the question took part in, time is the batch's time divided by its size.
    ``input_positions`` are the positions this step encoded; ``cached_positions`` those it read from a KV
    cache an earlier step of the same agent encoded (its prompt prefix, ``recursivemas.prefix``).
    """

    agent: str
    round: int
    action: str  # "latent" rollout, "text" hand-off, or "answer" (the final decode)
    generated_tokens: int = 0
    latent_steps: int = 0
    forward_calls: int = 0
    input_positions: int = 0
    wall_time_s: float = 0.0
    cached_positions: int = 0


@dataclass
class Usage:
    steps: list[StepUsage] = field(default_factory=list)

    def total(self, counter: str) -> float:
        return sum(getattr(s, counter) for s in self.steps)

    @property
    def generated_tokens(self) -> int:
        return int(self.total("generated_tokens"))

    @property
    def latent_steps(self) -> int:
        return int(self.total("latent_steps"))

    @property
    def forward_calls(self) -> int:
        return int(self.total("forward_calls"))

    @property
    def input_positions(self) -> int:
        return int(self.total("input_positions"))

    @property
    def cached_positions(self) -> int:
        return int(self.total("cached_positions"))

    @property
    def wall_time_s(self) -> float:
        return float(self.total("wall_time_s"))

    def totals(self) -> dict[str, float]:
        return {c: getattr(self, c) for c in COUNTERS}

    def to_dict(self) -> dict:
        return {"totals": self.totals(), "steps": [asdict(s) for s in self.steps]}
