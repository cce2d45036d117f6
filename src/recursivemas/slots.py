"""Building an agent's input embeddings: its rendered prompt with what arrived at each slot spliced in (docs/method.md#slots).

Text pieces are tokenized and embedded with the receiver's own tokenizer and embedding table; latents
(already mapped into the receiver's space by an outer link) take ordinary positions with mask 1; text
hand-offs (text mode) are tokenized like any other text. Rows are left-padded at the embedding level.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import torch

from recursivemas.agent import Agent, PromptText, Slot

Input = Union[str, Mapping[str, Any]]  # one input of a run: a question, or a mapping of input fields

# Per slot, one entry per question: a [m, hidden] latent tensor, a text hand-off, or None (nothing yet).
SlotFill = Union[torch.Tensor, str, None]


def row_embeddings(agent: Agent, inputs: Input, fills: dict[str, Sequence[SlotFill]], row: int, skip: int = 0) -> torch.Tensor:
    """``[len, hidden]`` embeddings of one row: ``agent``'s prompt for ``inputs`` with row ``row`` of each fill spliced in.

    ``skip`` leaves out the row's first positions (a prefix already in a cache) without embedding them.
    """
    parts = []
    for segment in agent.segments(inputs):
        value = fills[segment.name][row] if isinstance(segment, Slot) and segment.name in fills else segment
        if isinstance(value, Slot) or value is None or (isinstance(value, str) and not value):
            continue  # an empty slot (round-1 feedback, single mode) vanishes from the prompt
        text = isinstance(value, str)  # a text hand-off is another agent's output: never a role boundary
        piece = agent.encode(value, untrusted=not isinstance(value, PromptText)) if text else value
        dropped = min(skip, len(piece))
        skip -= dropped
        if dropped < len(piece):
            parts.append(agent.embed(piece[dropped:]) if text else piece[dropped:].to(agent.device, agent.dtype))
    if not parts:
        raise ValueError(f"agent {agent.name!r}: nothing of this row is left after skipping its first positions")
    return torch.cat(parts, dim=0)


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[len_i, d]`` rows into ``[batch, max_len, d]`` with zeros on the left and a 0/1 mask."""
    longest = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        embeds[i, longest - r.shape[0] :] = r
        mask[i, longest - r.shape[0] :] = 1
    return embeds, mask


def build_inputs(agent: Agent, inputs: Sequence[Input], fills: dict[str, Sequence[SlotFill]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(inputs_embeds, attention_mask)`` for a batch of inputs at ``agent``."""
    return left_pad([row_embeddings(agent, x, fills, i) for i, x in enumerate(inputs)])
