"""The inner loop (docs/method.md#training): each agent's ``R_in`` learns to predict the next true token's embedding.

Per agent, independently: run the frozen agent teacher-forced on (role prompt, role target). Its slots
hold the upstream roles' gold target text on forward edges and stay empty on feedback edges (what the
agent sees in round 1), or all stay empty with ``inner_slots: empty``. For every predictor position ``k``
(the prompt's last position and the target's positions but the last) minimise
``1 - cos(R_in(h_k), Emb(x_{k+1}))`` (+ ``inner_mse_weight * mse``). The frozen pass needs no gradient,
so a step costs one forward per agent plus the links. Losses are per-row means, then a mean over rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recursivemas.links import InnerLink
from recursivemas.slots import SlotFill
from recursivemas.train.data import role_targets
from recursivemas.train.teacher import forced_pass, target_ids


def gold_fills(system: Any, agent: str, records: Sequence[dict], slots: str = "gold") -> dict[str, list[SlotFill]]:
    """Slot fills for ``agent`` in round 1 of a text-mode run with gold hand-offs (forward edges only)."""
    if slots not in ("gold", "empty"):
        raise ValueError(f"inner_slots {slots!r} is unknown; choose 'gold' or 'empty'")
    targets = role_targets(system)
    fills: dict[str, list[SlotFill]] = {}
    for e in system.graph.incoming(agent):
        gold = slots == "gold" and not e.feedback
        fills[e.slot] = [r[targets[e.src]] if gold else None for r in records]
    return fills


def _pairs(system: Any, agent: str, records: Sequence[dict], cfg: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen states at predictor positions, the next tokens' embeddings, and each pair's row index."""
    a = system.agents[agent]
    field = role_targets(system)[agent]
    ids = target_ids(a, [r[field] for r in records], cfg.max_target_tokens)
    with torch.no_grad():
        forced = forced_pass(a, records, gold_fills(system, agent, records, cfg.inner_slots), ids)
        states = torch.cat(forced.predictor_states(), dim=0).float()
        targets = a.embed([t for row in ids for t in row]).float()
    rows = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(ids)]).to(states.device)
    return states, targets, rows


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    sums = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def agent_loss(system: Any, agent: str, records: Sequence[dict], cfg: Any, link: nn.Module | None = None) -> tuple[torch.Tensor, float]:
    """``(loss, mean cosine)`` of one agent's inner link on a batch."""
    states, targets, rows = _pairs(system, agent, records, cfg)
    link = system.links.inner[agent] if link is None else link
    pred = link(states)
    cos = F.cosine_similarity(pred, targets, dim=-1)
    per_pair = 1 - cos
    if cfg.inner_mse_weight:
        per_pair = per_pair + cfg.inner_mse_weight * (pred - targets).pow(2).mean(-1)
    return _row_mean(per_pair, rows, len(records)).mean(), float(cos.detach().mean())


@torch.no_grad()
def ridge_init_inner(system: Any, records: Sequence[dict], cfg: Any) -> dict[str, float]:
    """Fit each sending agent's (linear) inner link by least squares on the inner loop's pairs; returns each fit's cosine.

    The same pairs as :func:`agent_loss` (frozen states at predictor positions -> the next true token's
    embedding), solved in closed form instead of by gradient steps on ``1 - cos``: a latent rollout through
    such a link follows the agent's own greedy text closely (docs/real_models.md#how-the-links-were-made).
    Agents whose inner link is not a trained ``InnerLink`` (``links.inner: latentmas``) are left alone.
    """
    fits = {}
    for name in system.agents:
        link = system.links.inner[name]
        if not isinstance(link, InnerLink) or not system.graph.outgoing(name):
            continue
        parts = [_pairs(system, name, records[i : i + cfg.eval_batch_size], cfg) for i in range(0, len(records), cfg.eval_batch_size)]
        states, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        link.ridge_init_(states, targets, lam=cfg.ridge_lambda)
        fits[name] = float(F.cosine_similarity(link(states), targets, dim=-1).mean())
    return fits


class InnerStage:
    """All agents' inner links, trained side by side on independent losses (gradients never mix)."""

    name = "inner"

    def __init__(self, system: Any, cfg: Any) -> None:
        self.system, self.cfg = system, cfg
        system.links.requires_grad_(False)
        system.links.inner.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        """Trainable parts by name; each is clipped on its own, so one agent's loss never scales another's step."""
        return {f"inner.{name}": link for name, link in self.system.links.inner.items()}

    clip_separately = True

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.system.links.state_dict())

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.system.links.load_state_dict({k: v.float() for k, v in state.items()})

    def loss(self, records: Sequence[dict], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        total, metrics = 0.0, {}
        for name in self.system.agents:
            loss, cos = agent_loss(self.system, name, records, self.cfg)
            total = total + loss
            metrics[f"loss/{name}"] = float(loss.detach())
            metrics[f"cos/{name}"] = cos
        return total, metrics

    @torch.no_grad()
    def evaluate(self, records: Sequence[dict]) -> dict[str, float]:
        """Held-out mean cosine per agent: how well ``R_in`` predicts the next token's embedding."""
        out: dict[str, float] = {}
        bs = self.cfg.eval_batch_size
        for name in self.system.agents:
            cos_sum = 0.0
            for start in range(0, len(records), bs):
                chunk = records[start : start + bs]
                states, targets, rows = _pairs(self.system, name, chunk, self.cfg)
                cos = F.cosine_similarity(self.system.links.inner[name](states), targets, dim=-1)
                cos_sum += float(_row_mean(cos, rows, len(chunk)).sum())
            out[f"cos/{name}"] = cos_sum / len(records)
        out["cos/mean"] = sum(out[f"cos/{n}"] for n in self.system.agents) / len(self.system.agents)
        return out
