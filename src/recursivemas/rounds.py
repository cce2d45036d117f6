"""The round schedule (docs/method.md#rounds): who runs when, and what each slot holds.

This is the only place that knows it. ``System.run`` and the outer training loop both walk
``Mailbox.turns`` and route every payload through ``Mailbox.fills`` / ``Mailbox.post``; a test
compares the two walks' traces on the same systems.

- In round ``r`` agents run stage by stage (depth in the forward DAG). Before the final round an
  agent runs when it has an edge to send on; in the final round only the decoder's ancestors run.
- The decoding agent answers once, in the final round.
- A forward edge fills its slot within the round; a feedback edge carries its sender's output into
  the next round's slot; nothing leaves on a feedback edge in the final round.
- A slot nothing has reached yet (round-1 feedback) holds ``None``: it vanishes from the prompt.

Channel probes (docs/method.md#channel-tests) change what a slot delivers, never the schedule:
``shuffle`` hands each row what the same edge produced for another row of the batch (a seeded
derangement), ``zero`` hands zeros of the same shape (an empty message in text mode).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from recursivemas.config import EdgeConfig
from recursivemas.graph import Graph, edge_name
from recursivemas.slots import SlotFill

MODES = ("single", "text", "latent")  # the decoding agent alone; the agents in text; RecursiveMAS
PROBES = ("none", "shuffle", "zero", "gold")


@dataclass(frozen=True)
class Turn:
    """One stage of one round: the agents that pass something on, and whether the decoder answers."""

    round: int
    final: bool
    senders: tuple[str, ...]
    answers: bool


def schedule(graph: Graph, rounds: int) -> Iterator[Turn]:
    """Every turn of an ``rounds``-round run, in order."""
    for r in range(1, rounds + 1):
        final = r == rounds
        for stage in graph.stages():
            active = [a for a in stage if graph.active(a, final)]
            answers = final and graph.decoder in active
            senders = tuple(a for a in active if not (final and a == graph.decoder))
            if senders or answers:
                yield Turn(r, final, senders, answers)


def derangement(n: int, seed: int | str) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one n-cycle)."""
    if n < 2:
        raise ValueError(f"a shuffle probe needs a batch of at least 2 inputs, got {n}; raise batch_size")
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


class Mailbox:
    """What every slot holds during one run over a batch of ``batch`` inputs."""

    def __init__(self, graph: Graph, batch: int, probe: str = "none", probe_seed: int | str = 0, trace: list | None = None) -> None:
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
        self.graph, self.batch, self.probe, self.trace = graph, batch, probe, trace
        self._perm = derangement(batch, probe_seed) if probe == "shuffle" else None
        self._now: dict[str, list[SlotFill]] = {}  # forward edges, this round
        self._feedback: dict[str, list[SlotFill]] = {}  # feedback edges, sent last round
        self._next: dict[str, list[SlotFill]] = {}  # feedback edges, sent this round
        self.round, self.final = 0, False

    def turns(self, rounds: int) -> Iterator[Turn]:
        """Walk the schedule; feedback posted in one round is delivered in the next."""
        for turn in schedule(self.graph, rounds):
            if turn.round != self.round:
                self._feedback, self._next, self._now = self._next, {}, {}
                self.round, self.final = turn.round, turn.final
            yield turn

    def fills(self, agent: str) -> dict[str, list[SlotFill]]:
        """Per slot of ``agent``'s prompt, one entry per row: what its incoming edge delivers now."""
        out = {}
        for e in self.graph.incoming(agent):
            values = (self._feedback if e.feedback else self._now).get(edge_name(e))
            out[e.slot] = [None] * self.batch if values is None else self._deliver(values)
            self._log("fill", agent, e.slot, edge_name(e) if values is not None else None)
        return out

    def edges_out(self, agent: str) -> list[EdgeConfig]:
        """The edges ``agent``'s output travels on in the current round."""
        return [e for e in self.graph.outgoing(agent) if not (self.final and e.feedback)]

    def post(self, edge: EdgeConfig, values: Sequence[SlotFill]) -> None:
        """``edge`` carries ``values`` (one per row): into this round's slot, or the next round's if feedback."""
        if len(values) != self.batch:
            raise ValueError(f"edge {edge_name(edge)} got {len(values)} values for a batch of {self.batch}")
        (self._next if edge.feedback else self._now)[edge_name(edge)] = list(values)
        self._log("post", edge.src, edge_name(edge))

    def answered(self) -> None:
        """Mark the decoder's answer in the trace."""
        self._log("answer", self.graph.decoder)

    def _deliver(self, values: list[SlotFill]) -> list[SlotFill]:
        if self.probe == "shuffle":
            return [values[j] for j in self._perm]
        if self.probe == "zero":
            return [_zero(v) for v in values]
        return values

    def _log(self, *event) -> None:
        if self.trace is not None:
            self.trace.append((self.round, *event))


def _zero(value: SlotFill) -> SlotFill:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return "" if isinstance(value, str) else value
