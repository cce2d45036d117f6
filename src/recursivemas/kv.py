"""KV-cache plumbing shared by rollouts, prefix reuse, decoding and training: the lowest engine module.

- ``backbone_of(model)``: the LM-head-free decoder stack of a causal LM, whose ``last_hidden_state`` is the
  LM-head input (after the final norm) in every family we support (docs/method.md#latent-rollout);
- ``positions_from_mask``: position ids of a left-padded batch, counting real tokens only;
- ``Past`` / ``encode_past``: a cache over already-encoded positions and its attention mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache


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
        """An independent copy (a pass extends its cache in place)."""
        return Past(copy.deepcopy(self.cache), self.mask)


def encode_past(model: nn.Module, embeds: torch.Tensor, mask: torch.Tensor) -> Past:
    """Run the backbone (no LM head) over a left-padded batch and keep its cache."""
    cache = new_cache(model)
    backbone_of(model)(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), past_key_values=cache, use_cache=True)
    return Past(cache, mask)
