"""KV-cache plumbing shared by rollouts, prefix reuse, decoding and training: the lowest engine module.

- ``backbone_of(model)``: the LM-head-free decoder stack of a causal LM, whose ``last_hidden_state`` is the
  LM-head input (after the final norm) in every family we support (docs/method.md#latent-rollout);
- ``positions_from_mask``: position ids of a left-padded batch, counting real tokens only;
- ``Past`` / ``encode_past``: a cache over already-encoded positions and its attention mask;
- ``encode_rows``: the same cache for rows of unequal length, encoded without most of their padding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


def backbone_of(model: nn.Module) -> nn.Module:
    """The LM-head-free decoder stack of a Hugging Face causal LM (``LlamaModel``, ``GPT2Model``, ...)."""
    return model.base_model


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: real tokens count from 0, pads are clamped to 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def position_limit(model: nn.Module) -> int | None:
    """The most positions ``model`` takes: its config's ``max_position_embeddings`` (``n_positions`` for GPT-2)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_room(name: str, model: nn.Module, used: int, more: int, what: str) -> None:
    """Refuse a pass that would run past ``model``'s positions: ``used`` already taken, ``more`` to come."""
    limit = position_limit(model)
    if limit is not None and used + more > limit:
        raise ValueError(f"agent {name!r} would need {used + more} positions ({used} for its prompt and slots, {more} for "
                         f"{what}), past its model's {limit}; shorten the input or use fewer latent steps")


def new_cache(model: nn.Module) -> DynamicCache:
    """An empty KV cache laid out for ``model`` (sliding-window layers included)."""
    return DynamicCache(config=model.config)


@dataclass
class Past:
    """A KV cache holding ``mask.shape[1]`` positions per row (some of them padding, ``mask == 0``)."""

    cache: DynamicCache
    mask: torch.Tensor

    def row(self, i: int) -> "Past":
        """A copy holding row ``i`` alone (per-row decoding, e.g. with tools)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(torch.tensor([i], device=self.mask.device))
        return Past(cache, self.mask[i : i + 1])

    def copy(self) -> "Past":
        """An independent copy (a pass extends its cache in place).

        Dynamic layers extend by concatenation, never writing into the tensors they hold, so a copy of
        the layer objects suffices for them (the tensors are shared, not copied: ~15 ms a pass at batch
        200); any other layer kind is copied whole.
        """
        if not all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in self.cache.layers):
            return Past(copy.deepcopy(self.cache), self.mask)
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        return Past(cache, self.mask)


def encode_past(model: nn.Module, embeds: torch.Tensor, mask: torch.Tensor) -> Past:
    """Run the backbone (no LM head) over a left-padded batch and keep its cache."""
    cache = new_cache(model)
    backbone_of(model)(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), past_key_values=cache, use_cache=True)
    return Past(cache, mask)


ROW_CHUNK = 32  # rows encoded together by ``encode_rows``: 200 prefixes in chunks of 25-50 took ~0.6x the time of one batch


def encode_rows(model: nn.Module, rows: list[torch.Tensor], chunk: int = ROW_CHUNK) -> Past:
    """The ``Past`` that ``encode_past`` gives for ``left_pad(rows)``, computed with less work.

    Positions every row starts with (a chat template's opening and system prompt) are encoded once, at
    batch 1; the rest of each row is encoded in chunks of rows of similar length, so a chunk pads only to
    its own longest row, and small chunks also run faster per row on a CPU. The chunks' caches are then
    joined with zero keys and values at the padding, which the mask hides: rows read ``[shared, pads, rest]``.
    Caches with sliding-window (or other non-plain) layers are encoded as one padded batch.
    """
    from recursivemas.slots import left_pad  # slots builds on agent, which this lowest module must not import

    longest, n = max(r.shape[0] for r in rows), len(rows)
    if n == 1 or not all(type(layer) is DynamicLayer for layer in new_cache(model).layers):
        return encode_past(model, *left_pad(rows))
    first = rows[0]
    shared = min(r.shape[0] for r in rows) - 1  # every row keeps at least one position of its own
    for r in rows[1:]:
        differs = (r[:shared] != first[:shared]).any(-1).nonzero()
        shared = int(differs[0]) if len(differs) else shared
    ones = torch.ones(1, shared, dtype=torch.long, device=first.device)
    head = encode_past(model, first[None, :shared], ones) if shared else None
    order = sorted(range(n), key=lambda i: rows[i].shape[0])
    keys: list[list[torch.Tensor]] = []
    values: list[list[torch.Tensor]] = []
    masks = []
    for start in range(0, n, chunk):
        part = order[start : start + chunk]
        embeds, mask = left_pad([rows[i][shared:] for i in part])
        cache = new_cache(model) if head is None else head.copy().cache
        if head is not None:
            cache.batch_repeat_interleave(len(part))  # rebinds each layer's tensors: the head stays as it was
        full = torch.cat([ones.expand(len(part), -1), mask], dim=1)
        backbone_of(model)(inputs_embeds=embeds, attention_mask=full, position_ids=positions_from_mask(full)[:, shared:],
                           past_key_values=cache, use_cache=True)
        pad = longest - shared - mask.shape[1]  # zero positions between the shared run and this chunk's own
        keys.append([_pad_at(layer.keys, shared, pad) for layer in cache.layers])
        values.append([_pad_at(layer.values, shared, pad) for layer in cache.layers])
        masks.append(torch.cat([full[:, :shared], mask.new_zeros(len(part), pad), mask], dim=1))
    back = torch.tensor(sorted(range(n), key=order.__getitem__), device=first.device)  # chunk order -> row order
    for k, layer in enumerate(cache.layers):  # reuse the last chunk's cache object, filled with every row
        layer.keys = torch.cat([chunk_keys[k] for chunk_keys in keys])[back]
        layer.values = torch.cat([chunk_values[k] for chunk_values in values])[back]
    return Past(cache, torch.cat(masks)[back])


def _pad_at(states: torch.Tensor, at: int, pad: int) -> torch.Tensor:
    """``[batch, heads, len, dim]`` states with ``pad`` zero positions inserted before position ``at``."""
    if pad == 0:
        return states
    zeros = states.new_zeros(states.shape[0], states.shape[1], pad, states.shape[3])
    return torch.cat([states[:, :, :at], zeros, states[:, :, at:]], dim=2)
