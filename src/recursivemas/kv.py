"""KV-cache plumbing shared by rollouts, prefix reuse, decoding and training: the lowest engine module.

- ``backbone_of(model)``: the LM-head-free decoder stack of a causal LM, whose ``last_hidden_state`` is the
  LM-head input (after the final norm) in every family we support (docs/method.md#latent-rollout);
- ``positions_from_mask``: position ids of a left-padded batch, counting real tokens only;
- ``Past`` / ``encode_past``: a cache over already-encoded positions and its attention mask;
- ``encode_rows``: the same cache for rows of unequal length, encoded without most of their padding;
- ``drop_last``: a cache without each row's last few positions, so that a pass can encode them again.
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


def _holds_every_position(layer, length: int) -> bool:
    """Whether a cache layer keeps all of ``length`` positions, so chunks' caches can be joined or re-laid."""
    if type(layer) is DynamicLayer:
        return True
    return type(layer) is DynamicSlidingWindowLayer and length < layer.sliding_window  # it keeps window - 1


def keeps_every_position(model: nn.Module, length: int) -> bool:
    """Whether every layer of ``model``'s cache keeps all of ``length`` positions (no sliding window drops any)."""
    return all(_holds_every_position(layer, length) for layer in new_cache(model).layers)


def reaches_a_window(model: nn.Module, length: int) -> bool:
    """Whether rows of ``length`` positions reach past one of ``model``'s sliding windows.

    Within every window a run of padding inside a row is harmless (the mask hides it and position ids
    count real tokens); past a window it takes the place of real positions the window would hold.
    """
    return any(getattr(layer, "is_sliding", False) and length >= layer.sliding_window for layer in new_cache(model).layers)


def drop_last(past: Past, counts: list[int]) -> Past:
    """A copy of ``past`` without row ``i``'s last ``counts[i]`` positions, each row still right-aligned.

    A pass then encodes those positions again in front of its own, so rows whose new parts differ in
    length need no padding between what is cached and what follows (``recursivemas.prefix``). Every
    layer must hold all of ``past``'s positions (``keeps_every_position``).
    """
    width = past.mask.shape[1]
    shift = torch.tensor(counts, device=past.mask.device)[:, None]
    source = torch.arange(width, device=past.mask.device)[None, :] - shift  # where position j of each row comes from
    mask = torch.where(source >= 0, past.mask.gather(1, source.clamp_min(0)), 0)
    index = source.clamp_min(0)[:, None, :, None]
    cache = copy.copy(past.cache)
    cache.layers = [copy.copy(layer) for layer in past.cache.layers]
    for layer in cache.layers:
        if not _holds_every_position(layer, width) or layer.keys.shape[2] != width:
            raise ValueError("drop_last needs a cache whose every layer holds all of its positions")
        keep = mask[:, None, :, None].to(layer.keys.dtype)  # zeros at the pads, as encode_rows leaves them
        layer.keys = layer.keys.gather(2, index.expand_as(layer.keys)) * keep
        layer.values = layer.values.gather(2, index.expand_as(layer.values)) * keep
    return Past(cache, mask)


def encode_rows(model: nn.Module, rows: list[torch.Tensor], chunk: int = ROW_CHUNK) -> Past:
    """The ``Past`` that ``encode_past`` gives for ``left_pad(rows)``, computed with less work.

    Positions every row starts with (a chat template's opening and system prompt) are encoded once, at
    batch 1; the rest of each row is encoded in chunks of rows of similar length, so a chunk pads only to
    its own longest row, and small chunks also run faster per row on a CPU. Each row's keys and values
    are then laid out as in one left-padded batch (``[pads, shared, rest]``, zeros at the pads, the same
    mask), so sliding-window layers drop the same positions later. Caches with a layer that does not
    hold every position (a row reaching its sliding window, or a non-plain layer) are encoded as one
    padded batch.
    """
    from recursivemas.slots import left_pad  # slots builds on agent, which this lowest module must not import

    longest, n = max(r.shape[0] for r in rows), len(rows)
    if n == 1 or not keeps_every_position(model, longest):
        return encode_past(model, *left_pad(rows))
    first = rows[0]
    shared = min(r.shape[0] for r in rows) - 1  # every row keeps at least one position of its own
    for r in rows[1:]:
        differs = (r[:shared] != first[:shared]).any(-1).nonzero()
        shared = int(differs[0]) if len(differs) else shared
    ones = torch.ones(1, shared, dtype=torch.long, device=first.device)
    head = encode_past(model, first[None, :shared], ones) if shared else None
    order = sorted(range(n), key=lambda i: rows[i].shape[0])
    caches, sources = [], torch.empty(n, longest, dtype=torch.long)
    offset = 0  # of each chunk's first position in every layer's positions flattened over its chunks' rows
    for start in range(0, n, chunk):
        part = order[start : start + chunk]
        embeds, mask = left_pad([rows[i][shared:] for i in part])
        cache = new_cache(model) if head is None else head.copy().cache
        if head is not None:
            cache.batch_repeat_interleave(len(part))  # rebinds each layer's tensors: the head stays as it was
        full = torch.cat([ones.expand(len(part), -1), mask], dim=1)
        backbone_of(model)(inputs_embeds=embeds, attention_mask=full, position_ids=positions_from_mask(full)[:, shared:],
                           past_key_values=cache, use_cache=True)
        width = full.shape[1]  # a chunk's row reads [shared, pads up to its chunk's longest, rest]
        lengths = torch.tensor([rows[i].shape[0] for i in part])
        source = _left_pad_source(lengths, shared, width, longest)
        sources[part] = torch.where(source < 0, -1, offset + torch.arange(len(part))[:, None] * width + source)
        caches.append(cache)
        offset += len(part) * width
    mask = (sources >= 0).long().to(first.device)  # exactly left_pad's mask
    sources[sources < 0] = offset  # left padding reads the zero position after every chunk's
    index = sources.flatten().to(first.device)
    # Lay every row out as one left-padded batch would ([pads, shared, rest]), so that sliding-window layers
    # drop the same positions later; the last chunk's cache object, holding the longest row (its sliding
    # layers already count ``longest`` positions), takes every row.
    for k, layer in enumerate(cache.layers):
        layer.keys = _gather_positions([c.layers[k].keys for c in caches], index, n)
        layer.values = _gather_positions([c.layers[k].values for c in caches], index, n)
    return Past(cache, mask)


def _left_pad_source(lengths: torch.Tensor, shared: int, width: int, longest: int) -> torch.Tensor:
    """``[rows, longest]``: for each left-padded position of rows of ``lengths``, where it sits in its chunk's
    ``width``-position row ``[shared, pads, rest]`` (-1: padding)."""
    own = torch.arange(longest) - (longest - lengths[:, None])  # position among the row's own tokens
    return torch.where(own < 0, -1, torch.where(own < shared, own, own + width - lengths[:, None]))


def _gather_positions(chunks: list[torch.Tensor], index: torch.Tensor, rows: int) -> torch.Tensor:
    """``[rows, heads, len, dim]`` states picked by flat ``index`` from the chunks' ``[batch, heads, width, dim]``
    states, flattened over (row, position) in chunk order, and one zero position after them."""
    heads, dim = chunks[0].shape[1], chunks[0].shape[3]
    flat = [c.transpose(1, 2).reshape(-1, heads, dim) for c in chunks] + [chunks[0].new_zeros(1, heads, dim)]
    return torch.cat(flat).index_select(0, index).view(rows, -1, heads, dim).transpose(1, 2)
