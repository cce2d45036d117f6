"""Text decoding from input embeddings with one KV cache per call, counting every forward call and position.

A ``DecodeSession`` owns the cache of one batch: prefill it with embeddings, sample tokens, feed extra
text (tool results) and keep sampling. ``decode_batch`` is the common case in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from recursivemas.kv import Past, new_cache, positions_from_mask


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy when ``temperature == 0``, else nucleus sampling. ``logits`` is ``[batch, vocab]``."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class DecodeSession:
    """Incremental decoding state for one batch on one model."""

    model: nn.Module
    eos_token_ids: set[int]
    forward_calls: int = 0
    positions: list[int] = field(default_factory=list)  # input positions processed, per row
    _cache: DynamicCache | None = None
    _mask: torch.Tensor | None = None
    _pos: torch.Tensor | None = None
    _logits: torch.Tensor | None = None
    _unfed: list[int] = field(default_factory=list)  # the last sampled token is not yet in the cache

    def _forward(self, mask_new: torch.Tensor, counted: list[int] | None = None, **inputs) -> None:
        self._mask = mask_new if self._mask is None else torch.cat([self._mask, mask_new], dim=1)
        if self._pos is None:
            self._pos = positions_from_mask(self._mask)
        else:
            self._pos = self._pos[:, -1:] + mask_new.long().cumsum(-1)
        out = self.model(
            **inputs,
            attention_mask=self._mask,
            position_ids=self._pos[:, -mask_new.shape[1] :],
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._logits = out.logits[:, -1]
        self.forward_calls += 1
        counts = mask_new.long().sum(-1).tolist() if counted is None else counted
        self.positions = counts if not self.positions else [a + b for a, b in zip(self.positions, counts)]

    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, past: Past | None = None) -> None:
        """Encode the prompt; ``past`` (``recursivemas.prefix``) already holds its start and is extended in place."""
        self._cache = new_cache(self.model) if past is None else past.cache
        if past is not None:
            self._mask = past.mask.long()
            self._pos = positions_from_mask(self._mask)
        self._forward(attention_mask.long(), inputs_embeds=inputs_embeds)

    def feed(self, ids: list[int]) -> None:
        """Append tokens to a batch of one (tool results) without sampling, after the last sampled token."""
        device = self._mask.device
        ids, self._unfed = self._unfed + list(ids), []
        self._forward(torch.ones(1, len(ids), dtype=torch.long, device=device), input_ids=torch.tensor([ids], device=device))

    def sample(
        self,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        stop=None,
    ) -> list[list[int]]:
        """Sample up to ``max_new_tokens`` per row, stopping rows at an end-of-sequence token.

        ``stop(row_ids) -> bool`` may end a row early (used for tool-call closing tags). Returned ids
        include a final end-of-sequence token when one was produced. Rows leave the batch as they finish,
        so a session of more than one row is done after ``sample``.
        """
        batch = self._logits.shape[0]
        device = self._logits.device
        eos = torch.tensor(sorted(self.eos_token_ids), device=device)
        live = list(range(batch))  # the original row of each row still in the cache
        out: list[list[int]] = [[] for _ in range(batch)]
        for step in range(max_new_tokens):
            token = sample_next(self._logits, temperature, top_p, generator)
            for row, t in zip(live, token.tolist()):
                out[row].append(t)
            finished = torch.isin(token, eos)
            if stop is not None:
                finished |= torch.tensor([stop(out[row]) for row in live], device=device)
            if bool(finished.all()) or step + 1 == max_new_tokens:
                self._unfed = [int(token[0])] if batch == 1 else []
                break
            if bool(finished.any()):
                # Drop finished rows from the batch and its cache: a long message no longer makes every
                # short one pay for its steps. A batch of one never shrinks, so `feed` can follow it.
                keep = (~finished).nonzero().squeeze(1)
                self._cache.batch_select_indices(keep)
                self._mask, self._pos, token = self._mask[keep], self._pos[keep], token[keep]
                live = [live[k] for k in keep.tolist()]
            counted = [0] * batch
            for row in live:
                counted[row] = 1
            self._forward(torch.ones(len(live), 1, dtype=torch.long, device=device), counted=counted, input_ids=token.unsqueeze(1))
        return out


def stop_check(decode: Callable[[list[int]], str], stops: Sequence[str]) -> Callable[[list[int]], bool] | None:
    """A ``stop`` for :meth:`DecodeSession.sample`: true once a row's text holds one of ``stops`` (None without stops)."""
    if not stops:
        return None
    return lambda ids: any(s in decode(ids) for s in stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of ``stops`` it holds (the stop string itself dropped, as OpenAI's ``stop``)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def decode_batch(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    eos_token_ids: set[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    past: Past | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> tuple[list[list[int]], DecodeSession]:
    """Decode a left-padded batch from embeddings (after ``past``, when given); returns the new token ids per row and the session's counts."""
    session = DecodeSession(model, eos_token_ids)
    session.prefill(inputs_embeds, attention_mask, past)
    return session.sample(max_new_tokens, temperature, top_p, generator, stop=stop), session
