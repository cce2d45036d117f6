"""Latent rollout inside one agent (docs/method.md#latent-rollout), with the KV cache.

The prompt is encoded once; every latent step then feeds one position (``R_in(h)``) through the
decoder stack. We call the model's decoder (``model.base_model``), whose ``last_hidden_state`` is the
LM-head input (after the final norm) for every family we support; the LM head runs only for a latent stop.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from recursivemas.kv import Past, backbone_of, new_cache, positions_from_mask

Link = Callable[[torch.Tensor], torch.Tensor]


def _last_hidden(decoder: nn.Module, embeds, mask, positions, cache) -> torch.Tensor:
    out = decoder(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=cache is not None
    )
    return out.last_hidden_state[:, -1]


def latent_rollout(
    model: nn.Module,
    inner_link: Link,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    steps: int = 16,
    past: Past | None = None,
) -> torch.Tensor:
    """Run ``steps`` latent thoughts with the KV cache; return ``R_in(H)`` as ``[batch, steps, hidden]``.

    ``inputs_embeds`` is ``[batch, t, hidden]`` in the model's dtype, left-padded when ``attention_mask``
    marks pads with 0. The result is in the link's dtype (float32 for our links). Differentiable: wrap in
    ``torch.no_grad()`` for inference. Costs ``steps`` forward calls: one over the prompt, then one position each.
    ``past`` (``recursivemas.kv``) holds the prompt's already-encoded start; it is extended in place.
    """
    return latent_message(model, inner_link, inputs_embeds, attention_mask, steps, past)[0]


def latent_message(
    model: nn.Module,
    inner_link: Link,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    steps: int = 16,
    past: Past | None = None,
    stop_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """:func:`latent_rollout` whose messages may end early: ``(thoughts [batch, <= steps, hidden], each row's length)``.

    With ``stop_ids`` (token ids: the sender's eos and stop strings), a row's message ends before the first
    thought whose state's greedy next token is one of them, where a text hand-off would have stopped
    (docs/engine.md#latent-stop); a row that ended leaves the batch (and the cache), and the rollout ends once
    every row has. Without, every row has ``steps`` thoughts. Thoughts past a row's length are placeholders.
    """
    batch, length, _ = inputs_embeds.shape
    if steps < 0:
        raise ValueError(f"latent steps must be >= 0, got {steps}")
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    no_message = (inputs_embeds.new_zeros(batch, 0, inputs_embeds.shape[-1], dtype=torch.float32), [0] * batch)
    if steps == 0:
        return no_message
    mask = torch.ones(batch, length, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
    if past is not None:
        mask = torch.cat([past.mask.long(), mask], dim=1)
    positions = positions_from_mask(mask)[:, -length:]
    decoder = backbone_of(model)
    cache = new_cache(model) if past is None else past.cache
    head = model.get_output_embeddings() if stop_ids is not None else None
    lengths = torch.full((batch,), steps, dtype=torch.long)
    live = torch.arange(batch, device=device)  # the rows still in the batch (and the cache)

    h = _last_hidden(decoder, inputs_embeds, mask, positions, cache)
    thoughts = []
    for step in range(steps):
        if head is not None:
            with torch.no_grad():  # where the sender's own next token would end a text hand-off
                greedy = head(h.detach()).argmax(-1)
                stop_ids = stop_ids.to(greedy.device)  # copied on the first thought only, then a no-op
                stops = torch.isin(greedy, stop_ids)
            if bool(stops.any()):
                lengths[live[stops].cpu()] = step
                if bool(stops.all()):
                    break
                # rows whose message ended leave the batch and its cache, as in text decoding (generation.py)
                keep = (~stops).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                live, h, mask, positions = live[keep], h[keep], mask[keep], positions[keep]
        # the link sees the whole batch in its order (one link per row group may share a model); a row that
        # left gets a placeholder, cut off by its length
        whole = h if len(live) == batch else h.new_zeros(batch, h.shape[-1]).index_copy(0, live, h)
        thought = inner_link(whole)
        thoughts.append(thought)
        if step + 1 == steps:  # the last thought is returned, not fed back
            break
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = positions[:, -1:] + 1
        fed = thought if len(live) == batch else thought[live]
        h = _last_hidden(decoder, fed.to(dtype).unsqueeze(1), mask, positions, cache)
    if not thoughts:  # every row stopped before its first thought
        return no_message
    return torch.stack(thoughts, dim=1), lengths.tolist()


def reencode_rollout(
    model: nn.Module,
    inner_link: Link,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    steps: int = 16,
) -> torch.Tensor:
    """The public release's way: re-encode the whole sequence at every step, no cache.

    O(steps * (t + steps)) positions. Kept as the reference the cached rollout is tested and benchmarked against.
    """
    batch, length, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    mask = torch.ones(batch, length, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
    decoder = backbone_of(model)
    x, thoughts = inputs_embeds, []
    for _ in range(steps):
        h = _last_hidden(decoder, x, mask, positions_from_mask(mask), None)
        thought = inner_link(h)
        thoughts.append(thought)
        x = torch.cat([x, thought.to(dtype).unsqueeze(1)], dim=1)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long, device=device)], dim=1)
    return torch.stack(thoughts, dim=1)
