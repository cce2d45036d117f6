"""The outer loop (docs/method.md#training): the whole system unrolled over n rounds, only the outer links train.

Rounds follow ``recursivemas.rounds``, the schedule ``System.run`` walks too (a test compares the two
walks): forward edges fill slots within a round, feedback edges carry to the next round, and the
decoding agent speaks only in the final round. What crosses an edge is ``R_out(R_in(H))`` where ``H`` is, per ``latent_source``:

- ``teacher``: the sender's teacher-forced last-layer states over its own target text (its prompt holds
  whatever latents it received), at the predictor positions, cut to ``max_latent_tokens`` (default 80).
  The first of them is the prompt's last position, so ``H`` lines up with what a free-running rollout
  would produce if every latent thought were exactly the next target token.
- ``rollout``: ``latent_message`` of ``latent_steps`` free-running thoughts, as at inference (ending early at a latent stop).
- ``mixed``: per step, rollout with a probability that rises linearly from 0 to ``rollout_share``.

The loss is the decoding agent's next-token cross-entropy on its answer tokens (+ eos), teacher-forced
after its prompt, in the final round; ``nonfinal_weight`` adds that weight times the mean CE of the
decoder's passes in earlier rounds; ``upstream_weight`` adds that weight times the mean CE of every other
agent's own target (its ``target`` field, teacher-forced after what reached its slots) in each round where all
its slots hold something: a direct signal for the links into an agent that must read a message before it can
answer (the roundtrip clerk, docs/zoo.md#roundtrip), which the answer loss reaches only through several rounds. Gradients reach every outer link through every frozen LLM (via
``inputs_embeds``) and through the frozen inner links. A hook on each link's output in each round
records the gradient norm arriving there, so vanishing early-round credit shows in the log.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from recursivemas.graph import edge_name
from recursivemas.rollout import latent_message
from recursivemas.rounds import Mailbox
from recursivemas.slots import build_inputs
from recursivemas.train.data import role_targets
from recursivemas.train.inner import gold_fills
from recursivemas.train.teacher import answer_ce, forced_pass, target_ids

LATENT_SOURCES = ("teacher", "rollout", "mixed")


def rollout_probability(cfg: Any, step: int, steps: int) -> float:
    """Chance that step ``step`` (0-based) forms latents by rollout."""
    if cfg.latent_source == "teacher":
        return 0.0
    if cfg.latent_source == "rollout":
        return 1.0
    if cfg.latent_source == "mixed":
        return cfg.rollout_share * step / max(1, steps - 1)
    raise ValueError(f"latent_source {cfg.latent_source!r} is unknown; choose one of {', '.join(LATENT_SOURCES)}")


def source_at(cfg: Any, step: int, steps: int) -> str:
    """``teacher`` or ``rollout`` for this step; fixed by (seed, step) so resumed and data-parallel runs agree."""
    p = rollout_probability(cfg, step, steps)
    if p in (0.0, 1.0):
        return "rollout" if p == 1.0 else "teacher"
    return "rollout" if random.Random(f"{cfg.seed}:latent-source:{step}").random() < p else "teacher"


@dataclass
class Unrolled:
    """What one unrolled batch produced."""

    loss: torch.Tensor
    ce_rows: torch.Tensor  # [B] final-round answer CE per row
    acc_rows: torch.Tensor  # [B] final-round answer token accuracy per row
    nonfinal_ce: list[torch.Tensor] = field(default_factory=list)  # per earlier decoder pass, mean over rows
    upstream_ce: list[torch.Tensor] = field(default_factory=list)  # per upstream agent pass with full slots, mean over rows
    latent_grad_sq: dict[str, float] = field(default_factory=dict)  # "edge/rR" -> squared grad norm (after backward)


def unroll(system: Any, records: Sequence[dict], cfg: Any, source: str = "teacher", track_grads: bool = False,
           trace: list | None = None) -> Unrolled:
    """Run all rounds on a batch and return the loss (differentiable in the outer links).

    The rounds are ``recursivemas.rounds``' schedule, the one ``System.run`` walks; ``trace`` collects its events.
    """
    graph, links = system.graph, system.links
    targets = role_targets(system)
    inputs = list(records)  # each agent reads the input fields its prompt names
    batch = len(records)
    ids = {}
    for name, agent in system.agents.items():
        ids[name] = target_ids(agent, [r[targets[name]] for r in records], cfg.max_target_tokens, eos=name == graph.decoder)
    result = Unrolled(loss=torch.zeros(()), ce_rows=torch.zeros(batch), acc_rows=torch.zeros(batch))
    steps = system.config.latent_steps if cfg.latent_steps is None else cfg.latent_steps
    mail = Mailbox(graph, batch, trace=trace)
    for turn in mail.turns(cfg.rounds or system.config.rounds):
        stage = {name: mail.fills(name) for name in ([graph.decoder] if turn.answers else []) + list(turn.senders)}
        for name, fills in stage.items():
            agent = system.agents[name]
            sends = [] if turn.answers and name == graph.decoder else mail.edges_out(name)
            wants_ce = name == graph.decoder and (turn.final or cfg.nonfinal_weight > 0)
            wants_own = cfg.upstream_weight > 0 and name != graph.decoder and _all_filled(fills)
            forced = None
            if wants_ce or wants_own or (sends and source == "teacher"):
                forced = forced_pass(agent, inputs, fills, ids[name], checkpoint=cfg.gradient_checkpointing)
            if wants_own:
                result.upstream_ce.append(answer_ce(agent.model, forced)[0].mean())
            if wants_ce:
                ce, acc, _ = answer_ce(agent.model, forced)
                if turn.final:
                    result.ce_rows, result.acc_rows = ce, acc
                    mail.answered()
                else:
                    result.nonfinal_ce.append(ce.mean())
            if not sends:
                continue
            inner = links.inner[name]
            if source == "teacher":
                states = forced.predictor_states(cfg.max_latent_tokens)
                counts = [s.shape[0] for s in states]
                thoughts = inner(torch.cat(states, dim=0))
            else:
                embeds, mask = build_inputs(agent, inputs, fills)
                gen = system.config.generation  # a latent stop ends messages here exactly as in System.run
                stop_ids = agent.stop_token_ids(gen.stop) if gen.latent_stop else None
                rolled, counts = latent_message(agent.model, inner, embeds, mask, steps=steps, stop_ids=stop_ids)
                thoughts = torch.cat([row[:k] for row, k in zip(rolled, counts)])
            for e in sends:
                key = edge_name(e)
                mapped = links.outer[key](thoughts.to(system.agents[e.dst].device))
                if track_grads and mapped.requires_grad:
                    mapped.register_hook(_recorder(result.latent_grad_sq, f"{key}/r{turn.round}"))
                mail.post(e, list(mapped.split(counts, dim=0)))
    loss = result.ce_rows.mean()
    if result.nonfinal_ce and cfg.nonfinal_weight:
        loss = loss + cfg.nonfinal_weight * torch.stack(result.nonfinal_ce).mean()
    if result.upstream_ce:
        loss = loss + cfg.upstream_weight * torch.stack(result.upstream_ce).mean()
    result.loss = loss
    return result


def _all_filled(fills: dict) -> bool:
    """Whether every slot holds something for every row (a round-1 feedback slot holds None)."""
    return bool(fills) and all(v is not None for values in fills.values() for v in values)


def _recorder(store: dict[str, float], key: str):
    def hook(grad: torch.Tensor) -> None:
        store[key] = store.get(key, 0.0) + float(grad.detach().float().pow(2).sum())

    return hook


@torch.no_grad()
def answer_metrics(system: Any, records: Sequence[dict], cfg: Any, source: str = "teacher") -> dict[str, float]:
    """Held-out final-round answer loss and token accuracy of the decoding agent, latents from ``source``."""
    ce_sum = acc_sum = 0.0
    for start in range(0, len(records), cfg.eval_batch_size):
        chunk = records[start : start + cfg.eval_batch_size]
        out = unroll(system, chunk, _no_ckpt(cfg), source)
        ce_sum += float(out.ce_rows.sum())
        acc_sum += float(out.acc_rows.sum())
    return {"answer_loss": ce_sum / len(records), "answer_token_acc": acc_sum / len(records)}


def greedy_exact_match(system: Any, records: Sequence[dict], cfg: Any) -> float:
    """Share of records whose greedy latent-mode answer equals the gold answer text (stripped)."""
    field_ = role_targets(system)[system.graph.decoder]
    greedy = replace(system.config.generation, temperature=0.0, top_p=1.0)
    results = system.run(list(records), mode="latent", rounds=cfg.rounds or None, batch_size=cfg.eval_batch_size, generation=greedy)
    return sum(res.text.strip() == r[field_].strip() for res, r in zip(results, records)) / len(records)


def _no_ckpt(cfg: Any) -> Any:
    return replace(cfg, gradient_checkpointing=False)


class OuterStage:
    """The outer links of a system, trained on the unrolled answer loss; inner links stay frozen."""

    name = "outer"
    clip_separately = False

    def __init__(self, system: Any, cfg: Any, steps: int) -> None:
        if cfg.latent_source not in LATENT_SOURCES:
            raise ValueError(f"latent_source {cfg.latent_source!r} is unknown; choose one of {', '.join(LATENT_SOURCES)}")
        self.system, self.cfg, self.steps = system, cfg, steps
        system.links.requires_grad_(False)
        system.links.outer.requires_grad_(True)
        self._last: Unrolled | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {f"outer.{name}": link for name, link in self.system.links.outer.items()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.system.links.state_dict())

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.system.links.load_state_dict({k: v.float() for k, v in state.items()})

    def loss(self, records: Sequence[dict], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        source = source_at(self.cfg, step, self.steps)
        self._last = unroll(self.system, records, self.cfg, source, track_grads=True)
        metrics: dict[str, Any] = {"ce_final": float(self._last.ce_rows.detach().mean()), "latent_source": source}
        if self._last.nonfinal_ce:
            metrics["ce_nonfinal"] = float(torch.stack(self._last.nonfinal_ce).detach().mean())
        if self._last.upstream_ce:
            metrics["ce_upstream"] = float(torch.stack(self._last.upstream_ce).detach().mean())
        return self._last.loss, metrics

    def grad_metrics(self, dist: Any) -> dict[str, float]:
        """Per edge and round, the norm of the loss gradient reaching that link's output (global over ranks)."""
        store = self._last.latent_grad_sq if self._last else {}
        keys = sorted(store)
        if not keys:
            return {}
        values = dist.sum_floats([store[k] for k in keys])
        return {f"latent_grad/{k}": (v**0.5) / dist.world for k, v in zip(keys, values)}

    def evaluate(self, records: Sequence[dict]) -> dict[str, float]:
        out = answer_metrics(self.system, records, self.cfg, "teacher")
        rolled = answer_metrics(self.system, records, self.cfg, "rollout")
        # the train/inference gap (docs/method.md#deviations): the same loss with latents formed as at inference
        out["answer_loss_rollout"] = rolled["answer_loss"]
        out["answer_token_acc_rollout"] = rolled["answer_token_acc"]
        if self.cfg.eval_generate:
            out["exact_match"] = greedy_exact_match(self.system, records, self.cfg)
        return out


# ---------------------------------------------------------------------------------------- ridge initialisation
def _char_starts(agent: Any, text: str, ids: list[int]) -> list[int] | None:
    if not getattr(agent.tokenizer, "is_fast", False):
        return None
    enc = agent.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"][: len(ids)] != ids:
        return None
    return [start for start, _ in enc["offset_mapping"][: len(ids)]]


def align_tokens(sender: Any, receiver: Any, text: str, n: int) -> list[int]:
    """For each of the sender's first ``n`` tokens of ``text``, the receiver token covering the same characters.

    Uses character offsets from fast tokenizers; without them, positions are matched proportionally.
    """
    s_ids, r_ids = sender.encode(text)[:n], receiver.encode(text)
    s_starts = _char_starts(sender, text, s_ids)
    r_enc = receiver.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if getattr(receiver.tokenizer, "is_fast", False) else None
    if s_starts is None or r_enc is None or r_enc["input_ids"] != r_ids:
        return [r_ids[min(len(r_ids) - 1, j * len(r_ids) // max(1, len(s_ids)))] for j in range(len(s_ids))]
    r_ends = [end for _, end in r_enc["offset_mapping"]]
    out = []
    for start in s_starts:
        k = next((i for i, end in enumerate(r_ends) if end > start), len(r_ids) - 1)
        out.append(r_ids[k])
    return out


@torch.no_grad()
def ridge_pairs(system: Any, records: Sequence[dict], cfg: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per edge, paired rows for a least-squares fit of ``R_out``.

    Source: ``R_in`` of the sender's teacher-forced states at its predictor positions (round-1 prompt, gold
    text on forward slots), i.e. what the outer link receives at training time. Target: the receiver's own
    input embedding of the sender's target token that position predicts (aligned by character offsets): the
    link starts as "show the receiver the sender's next token, in the receiver's vocabulary", the latent
    analogue of a text hand-off.
    """
    targets = role_targets(system)
    pairs: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for name, agent in system.agents.items():
        edges = system.graph.outgoing(name)
        if not edges:
            continue
        texts = [r[targets[name]] for r in records]
        ids = target_ids(agent, texts, cfg.max_target_tokens)
        for start in range(0, len(records), cfg.eval_batch_size):
            chunk = list(records[start : start + cfg.eval_batch_size])
            forced = forced_pass(agent, chunk, gold_fills(system, name, chunk), ids[start : start + len(chunk)])
            states = forced.predictor_states(cfg.max_latent_tokens)
            for i, rows in enumerate(states):
                source = system.links.inner[name](rows.float())
                for e in edges:
                    receiver = system.agents[e.dst]
                    aligned = align_tokens(agent, receiver, texts[start + i], rows.shape[0])
                    pairs[edge_name(e)][0].append(source.to(receiver.device))
                    pairs[edge_name(e)][1].append(receiver.embed(aligned).float())
    return {k: (torch.cat(s), torch.cat(t)) for k, (s, t) in pairs.items()}


@torch.no_grad()
def ridge_init_outer(system: Any, records: Sequence[dict], cfg: Any) -> dict[str, float]:
    """Initialise every outer link by ridge regression (``OuterLink.ridge_init_``); returns each fit's cosine.

    ``ridge_init_`` fits the residual projection and zeroes the MLP branch; for ``ln_res`` links the output
    LayerNorm would then rescale the fit to unit variance, so its per-dimension gain and bias are refit by
    least squares on the same pairs, giving outputs on the scale of the receiver's embeddings.
    """
    fits = {}
    for key, (source, target) in ridge_pairs(system, records, cfg).items():
        link = system.links.outer[key]
        link.ridge_init_(source, target, lam=cfg.ridge_lambda)
        if link.kind == "ln_res":
            link.ln_target.weight.fill_(1.0)
            link.ln_target.bias.zero_()
            z = link(source).double()
            t = target.double()
            zc, tc = z - z.mean(0), t - t.mean(0)
            gain = (zc * tc).mean(0) / zc.pow(2).mean(0).clamp_min(1e-12)
            link.ln_target.weight.copy_(gain.float())
            link.ln_target.bias.copy_((t.mean(0) - gain * z.mean(0)).float())
        fits[key] = float(torch.nn.functional.cosine_similarity(link(source), target, dim=-1).mean())
    return fits
