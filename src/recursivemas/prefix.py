"""Encode each agent's prompt prefix once per batch and reuse its KV cache in later rounds.

Everything in an agent's prompt before its first slot (chat template, system prompt, the question) is
the same in every round; only the slots and what follows them change. ``PrefixStore`` encodes those
prefixes once per (batch, group of agents) and hands each pass a copy of the cache, so a pass encodes
only its slots and the rest. The prefix stops one position short of the first slot, so every pass
encodes at least one position of its own and ends on the prompt's true last position.

Padding: the prefixes are encoded by ``kv.encode_rows`` (their shared start once, the rest in
length-sorted chunks, laid out as one left-padded batch), and the tail is left-padded again, so a row
reads ``[pads, prefix, pads, tail]``; the attention mask marks both pad runs and positions count real
tokens only (``positions_from_mask``), which is what encoding the whole row at once sees. A sliding
window, though, counts the middle pads as positions, so a pass whose rows may reach past one instead
encodes each short row's last prefix positions again in place of its tail's pads (``kv.drop_last``):
``[pads, prefix, tail]``, exactly a left-padded batch (docs/engine.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from recursivemas.agent import Agent, Slot
from recursivemas.kv import Past, check_room, drop_last, encode_rows, keeps_every_position, reaches_a_window
from recursivemas.slots import Input, SlotFill, left_pad, row_embeddings


@dataclass
class Tail:
    """What a pass still has to encode after its prefix: left-padded ``embeds`` / ``mask``, the ``past`` to
    start from (``None``: encode the rows whole), and per row the prefix positions this call ``encoded``
    (its group's first call) or ``reused`` from an earlier call, for usage accounting."""

    embeds: torch.Tensor
    mask: torch.Tensor
    past: Past | None
    encoded: list[int]
    reused: list[int]


def prefix_length(agent: Agent, inputs: Input) -> int:
    """Token positions of ``agent``'s prompt reused across rounds: those before its first slot, less one."""
    text = ""
    for segment in agent.segments(inputs):
        if isinstance(segment, Slot):
            break
        text += segment
    return max(len(agent.encode(text)) - 1, 0)


class PrefixStore:
    """The prompt-prefix caches of one batch of inputs, one per group of agents that run together."""

    def __init__(self, inputs: Sequence[Input], reuse: bool = True) -> None:
        self.inputs_, self.reuse = list(inputs), reuse
        self._pasts: dict[tuple[str, ...], Past] = {}
        self._cuts: dict[str, list[int]] = {}  # per agent, each question's prefix length (tokenized once)

    def inputs(self, agents: Sequence[Agent], fills: dict[str, dict[str, Sequence[SlotFill]]], more: int = 0,
               what: str = "nothing more", horizon: int | None = None) -> Tail:
        """Rows for ``agents`` (agent-major) minus their prefixes, with a fresh copy of the prefix cache.

        Refuses rows that, with ``more`` positions still to come (``what``), would run past the model's
        positions (``kv.check_room``), before anything is encoded. ``horizon`` (default ``more``) is the
        most positions a pass may add after its rows (an answer's token budget): rows that may reach past
        a sliding window are laid out without padding between prefix and tail.
        """
        cuts = []
        for agent in agents:
            if agent.name not in self._cuts:
                self._cuts[agent.name] = [prefix_length(agent, q) if self.reuse else 0 for q in self.inputs_]
            cuts += self._cuts[agent.name]
        key, model, n = tuple(a.name for a in agents), agents[0].model, len(cuts)
        fresh = key not in self._pasts or min(cuts) == 0
        entries = [(agent, i, q) for agent in agents for i, q in enumerate(self.inputs_)]

        def embed(skips: Sequence[int]) -> list[torch.Tensor]:
            return [row_embeddings(agent, q, fills[agent.name], i, s) for (agent, i, q), s in zip(entries, skips)]

        rows = embed([0] * n if fresh else cuts)  # a stored prefix is neither embedded nor encoded again
        longest = max(r.shape[0] + (0 if fresh else c) for r, c in zip(rows, cuts))
        check_room(agents[0].name, model, longest, more, what)
        if min(cuts) == 0:  # reuse is off, or some row has no prefix: encode every row whole
            return _whole(rows)
        tails = [r[c:] for r, c in zip(rows, cuts)] if fresh else rows
        # Left-padding tails of unequal length leaves a pad run after a short row's prefix; past a sliding window
        # it would stand in for real positions, so there each row's last prefix positions move into its tail.
        width = max(len(t) for t in tails)
        moved = [min(width - len(t), c) for t, c in zip(tails, cuts)]
        if not any(moved) or not reaches_a_window(model, max(cuts) + width + (more if horizon is None else horizon)):
            moved = [0] * n
        elif not keeps_every_position(model, max(cuts)):  # the window already dropped prefix positions: encode whole
            return _whole(rows if fresh else embed([0] * n))
        if fresh:
            self._pasts[key] = encode_rows(model, [r[:c] for r, c in zip(rows, cuts)])
        past = self._pasts[key]
        if any(moved):
            past = drop_last(past, moved)
            tails = [r[c - m :] for r, c, m in zip(rows, cuts, moved)] if fresh else embed([c - m for c, m in zip(cuts, moved)])
        embeds, mask = left_pad(tails)
        none = [0] * n
        reused = none if fresh else [c - m for c, m in zip(cuts, moved)]
        return Tail(embeds, mask, past.copy(), cuts if fresh else none, reused)


def _whole(rows: list[torch.Tensor]) -> Tail:
    """Every row encoded whole, from no cache."""
    embeds, mask = left_pad(rows)
    return Tail(embeds, mask, None, [0] * len(rows), [0] * len(rows))
