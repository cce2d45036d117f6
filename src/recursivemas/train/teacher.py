"""Teacher-forced passes through a frozen agent: its prompt (slots filled), then a target text.

Shared by the inner loop (states predicting the next target embedding), the outer loop (role latents
and the answer's cross-entropy) and the baselines. Rows are left-padded, so every row's target ends at
the last position: the state at position ``L - 1 - n + j`` predicts target token ``j`` of a row with
``n`` target tokens ("predictor positions", the first one is the prompt's last position).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recursivemas.agent import Agent
from recursivemas.kv import backbone_of, positions_from_mask
from recursivemas.slots import Input, SlotFill, left_pad, row_embeddings


def target_ids(agent: Agent, texts: Sequence[str], max_tokens: int, eos: bool = False) -> list[list[int]]:
    """Token ids of each target text in ``agent``'s tokenizer, cut to ``max_tokens`` (then eos appended if asked)."""
    out = []
    for text in texts:
        ids = agent.encode(text)[:max_tokens]
        if eos:
            ids = ids + [agent.tokenizer.eos_token_id if agent.tokenizer.eos_token_id is not None else min(agent.eos_token_ids)]
        if not ids:
            raise ValueError(f"agent {agent.name!r}: target text {text!r} has no tokens")
        out.append(ids)
    return out


def prompt_ids(agent: Agent, inputs: Input) -> list[int]:
    """The agent's prompt with every slot empty, as token ids (pieces tokenized separately, as ``build_inputs`` does)."""
    ids: list[int] = []
    for segment in agent.segments(inputs):
        if isinstance(segment, str) and segment:
            ids += agent.encode(segment)
    return ids


@dataclass
class Forced:
    """Result of a teacher-forced pass: last-layer states and where each row's target sits."""

    hidden: torch.Tensor  # [B, L, d], the LM-head input at every position
    mask: torch.Tensor  # [B, L]
    targets: list[list[int]]  # per row, the target ids the predictor positions predict

    @property
    def span(self) -> int:
        return max(len(t) for t in self.targets)

    def predictor_states(self, limit: int | None = None) -> list[torch.Tensor]:
        """Per row, ``[n_i, d]`` states at the predictor positions (first ``limit`` of them)."""
        length = self.hidden.shape[1]
        rows = []
        for i, ids in enumerate(self.targets):
            start = length - 1 - len(ids)
            stop = start + (len(ids) if limit is None else min(limit, len(ids)))
            rows.append(self.hidden[i, start:stop])
        return rows

    def labels(self) -> torch.Tensor:
        """``[B, K]`` next-token labels for the last ``K = span`` predictor positions, -100 where a row has none."""
        k = self.span
        labels = torch.full((len(self.targets), k), -100, dtype=torch.long, device=self.hidden.device)
        for i, ids in enumerate(self.targets):
            labels[i, k - len(ids) :] = torch.tensor(ids, device=self.hidden.device)
        return labels


def _checkpoint_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextmanager
def checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Gradient checkpointing of a frozen model's decoder layers for the passes inside the block.

    Hugging Face layers only checkpoint when ``layer.training`` is set; we set that flag on the decoder
    layers alone (attention and dropout modules stay in eval mode, so nothing random happens) and restore
    it afterwards, so KV-cached rollouts and inference outside the block are untouched. Non-reentrant
    checkpointing passes gradients to ``inputs_embeds`` without the input-embedding hook, which we remove.
    Yields whether checkpointing is active (False for models that do not support it).
    """
    if not enabled or not getattr(model, "supports_gradient_checkpointing", False):
        yield False
        return
    if not getattr(model, "_recursivemas_checkpointing", False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()  # our inputs_embeds already carry gradients where they should
        model._recursivemas_checkpointing = True
    layers = _checkpoint_layers(model)
    before = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True
    try:
        yield bool(layers)
    finally:
        for layer, flag in zip(layers, before):
            layer.training = flag


def forced_pass(
    agent: Agent,
    inputs: Sequence[Input],
    fills: dict[str, Sequence[SlotFill]],
    targets: list[list[int]],
    *,
    model: nn.Module | None = None,
    checkpoint: bool = False,
    prompts: list[list[int]] | None = None,
) -> Forced:
    """Run ``agent`` over (prompt with ``fills``, target ids); differentiable in any tensor fill.

    ``model`` replaces the agent's frozen model (a LoRA or fully fine-tuned copy); ``prompts`` gives the
    prompt as token ids instead (slots empty), embedded with ``model``'s own (maybe trained) table.
    """
    model = agent.model if model is None else model
    table = model.get_input_embeddings()
    rows = []
    for i, row_inputs in enumerate(inputs):
        if prompts is None:
            prompt = row_embeddings(agent, row_inputs, fills, i)
            ids = torch.tensor(targets[i], dtype=torch.long, device=agent.device)
            rows.append(torch.cat([prompt, table(ids).to(prompt.dtype)], dim=0))
        else:
            ids = torch.tensor(prompts[i] + targets[i], dtype=torch.long, device=agent.device)
            rows.append(table(ids))
    embeds, mask = left_pad(rows)
    with checkpointing(model, checkpoint):
        out = backbone_of(model)(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False)
    return Forced(out.last_hidden_state, mask, targets)


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on last-layer states, with the final logit soft-capping some families use."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def answer_ce(model: nn.Module, forced: Forced) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row mean next-token cross-entropy over the target tokens, and per-row token accuracy.

    Returns ``(ce_rows [B], acc_rows [B], all_correct [B])``. Only the last ``span`` positions reach the LM
    head, so the vocabulary projection costs ``B * span`` rows, not the whole sequence.
    """
    k = forced.span
    logits = lm_logits(model, forced.hidden[:, -k - 1 : -1]).float()  # predictor positions of the longest target
    labels = forced.labels()
    ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B, K]
    valid = labels != -100
    counts = valid.sum(-1).clamp_min(1)
    correct = (logits.argmax(-1) == labels) & valid
    return ce.sum(-1) / counts, correct.sum(-1) / counts, correct.sum(-1) == valid.sum(-1)
