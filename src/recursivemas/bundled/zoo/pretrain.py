"""Causal-LM pretraining of one zoo agent from scratch on role-formatted world text, and its evaluation.

Most training examples are one record played in one role: the role's prompt rendered with the
agent's own chat template, its slots filled, followed by the role's target and eos. A role that
knows the world's facts trains on world problems with its (feedback) slots empty or gold, half and
half; a role that must be told trains on ``facts="random"`` problems (the named fact's value drawn at
random, so the world's table cannot be learned) with its slots always holding the upstream gold
text, whole (half), cut to its facts line (30%) or to the fact's value alone (20%; the shapes a few
latent steps carry): alone,
with its slots empty, it can only guess the fact (docs/zoo.md#pretraining). The clerk (a role that answers
requests) sees a request naming the fact of a ``facts="random"`` problem (so every item, in every story) and
learns to write the world's value for it; 20% of its examples ask nothing and are answered with nothing. The loss is
next-token cross-entropy over the whole sequence, with prompt tokens down-weighted so capacity
goes to the targets.

The rest are arithmetic drill: plain lines ``a op b = c`` taken from training solutions and
shuffled. Measured on this task, a model that never misreads an operation still gets a third
of its equations wrong without drill; a drill line teaches one fact in ~7 tokens where a
role example spends ~120 tokens on about three.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from recursivemas.bundled.world import is_correct
from recursivemas.bundled.zoo.roles import ROLES, Role, render_prompt, training_text

# How often each role is drawn; the answer-writing roles get most of the budget.
ROLE_WEIGHTS = {"planner": 1.0, "critic": 1.0, "solver": 2.5, "expert": 0.75, "learner": 1.0}
DRILL_WEIGHT = 1.0  # drill documents, on the same scale as ROLE_WEIGHTS
DRILL_LINES = 16
PROMPT_LOSS_WEIGHT = 0.25
GOLD_FILL_P = 0.5  # share of examples whose slots hold the upstream role's gold text
FACTS_LINE_P = 0.8  # receivers: slots cut to the facts line below this draw, to its first word (the value) above it
EMPTY_REQUEST_P = 0.2  # requests roles (the clerk): share of examples with nothing asked, answered with nothing
BUCKET_BATCHES = 16  # batches drawn at once and sorted by length


def _encode_example(tokenizer, role: Role, record: dict[str, Any], fill: dict[str, str] | None,
                    target: str | None = None) -> tuple[list[int], int]:
    prompt, target = training_text(tokenizer, role, record, fill, target)
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    t = tokenizer(target, add_special_tokens=False).input_ids
    return p + t, len(p)


def _drill_example(tokenizer, records: Sequence[dict[str, Any]], rng: random.Random) -> tuple[list[int], int]:
    lines: list[str] = []
    while len(lines) < DRILL_LINES:
        lines += [line for line in rng.choice(records)["solution"].splitlines() if "=" in line]
    rng.shuffle(lines)
    return tokenizer("\n".join(lines[:DRILL_LINES]) + tokenizer.eos_token, add_special_tokens=False).input_ids, 0


def _draw_example(
    tokenizer, records: Sequence[dict[str, Any]], rng: random.Random,
    role_weights: dict[str, float] = ROLE_WEIGHTS, drill_weight: float = DRILL_WEIGHT,
    told_records: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[int], int]:
    names = [*role_weights, "drill"]
    name = rng.choices(names, [*role_weights.values(), drill_weight])[0]
    if name == "drill":
        return _drill_example(tokenizer, records, rng)
    role = ROLES[name]
    if role.requests:  # the request names any item (a random-facts problem's); the target, the world's value
        record = rng.choice(told_records or records)
        u = rng.random()
        if u < EMPTY_REQUEST_P:
            return _encode_example(tokenizer, role, record, None, target="")
        return _encode_example(tokenizer, role, record, role.gold_fill(record) if u < 0.6 else role.facts_fill(record))
    if role.knows:
        record = rng.choice(records)
        return _encode_example(tokenizer, role, record, role.gold_fill(record) if rng.random() < GOLD_FILL_P else None)
    record = rng.choice(told_records or records)
    u = rng.random()
    fill = role.gold_fill(record) if u < GOLD_FILL_P else role.facts_fill(record, None if u < FACTS_LINE_P else 1)
    return _encode_example(tokenizer, role, record, fill)


def make_batch(examples: Sequence[tuple[list[int], int]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and per-position loss weights (for predicting token k+1 from position k)."""
    length = min(max_len, max(len(ids) for ids, _ in examples))
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    weights = torch.zeros((len(examples), length - 1))
    for i, (seq, n_prompt) in enumerate(examples):
        seq = seq[:length]
        ids[i, : len(seq)] = torch.tensor(seq)
        weights[i, : len(seq) - 1] = PROMPT_LOSS_WEIGHT
        weights[i, max(n_prompt - 1, 0) : len(seq) - 1] = 1.0
    return ids, weights


def pretrain(
    model,
    tokenizer,
    records: Sequence[dict[str, Any]],
    steps: int,
    *,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 50,
    seed: int = 0,
    max_len: int = 512,
    log: Callable[[str], None] | None = None,
    callback: Callable[[int], None] | None = None,
    callback_every: int = 0,
    role_weights: dict[str, float] | None = None,
    drill_weight: float = DRILL_WEIGHT,
    told_records: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train `model` in place for `steps` AdamW steps; returns the final loss and times.

    ``role_weights`` (role -> draw weight, default ``ROLE_WEIGHTS``) and ``drill_weight`` set the mix;
    roles that do not know the world's facts draw from ``told_records`` (``facts="random"`` problems).

    ``callback(step)`` runs every ``callback_every`` steps (e.g. an evaluation; put the model in
    eval mode and back to train mode inside it).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "wte" not in n and "wpe" not in n]
    other = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    aux_coef = getattr(model.config, "router_aux_loss_coef", 0.0) if hasattr(model.config, "num_experts") else 0.0
    model.train()
    history, start, cpu_start = [], time.perf_counter(), time.process_time()
    queue: list[list[tuple[list[int], int]]] = []
    for step in range(steps):
        if not queue:  # draw a pool, sort it by length and cut it into batches: little padding
            pool = [_draw_example(tokenizer, records, rng, role_weights or ROLE_WEIGHTS, drill_weight, told_records)
                    for _ in range(batch_size * BUCKET_BATCHES)]
            pool.sort(key=lambda e: len(e[0]))
            queue = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
            rng.shuffle(queue)
        ids, w = make_batch(queue.pop(), tokenizer.pad_token_id, max_len)
        kwargs = {"output_router_logits": True} if aux_coef else {}
        out = model(input_ids=ids, **kwargs)
        ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        loss = (ce * w.reshape(-1)).sum() / w.sum()
        if aux_coef and getattr(out, "aux_loss", None) is not None:
            loss = loss + aux_coef * out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history.append(loss.item())
        if log and (step + 1) % 50 == 0:
            recent = sum(history[-50:]) / len(history[-50:])
            log(f"step {step + 1}/{steps} loss {recent:.3f} ({time.perf_counter() - start:.0f}s, cpu {time.process_time() - cpu_start:.0f}s)")
        if callback and callback_every and (step + 1) % callback_every == 0:
            callback(step + 1)
    model.eval()
    return {
        "steps": steps,
        "final_loss": sum(history[-50:]) / max(1, len(history[-50:])),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 64,
                   stop_strings: Sequence[str] | None = None) -> list[str]:
    """Greedy completions of rendered prompts (left-padded batches, stops at eos or any of ``stop_strings``)."""
    tokenizer.padding_side = "left"
    stops = dict(stop_strings=list(stop_strings), tokenizer=tokenizer) if stop_strings else {}
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **stops,
        )
        outs += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return outs


def role_outputs(model, tokenizer, records: Sequence[dict[str, Any]], role: str, fill: str = "none",
                 max_new_tokens: int = 64) -> list[str]:
    """Greedy outputs playing `role` with its slots empty (``none``), gold (``gold``) or cut to the facts line (``facts``)."""
    r = ROLES[role]
    fills = {"none": lambda rec: None, "gold": r.gold_fill, "facts": r.facts_fill}[fill]
    return generate_texts(model, tokenizer, [render_prompt(tokenizer, r, rec, fills(rec)) for rec in records], max_new_tokens)


def role_accuracy(
    model, tokenizer, records: Sequence[dict[str, Any]], role: str = "solver", gold: bool | str = False, max_new_tokens: int = 64
) -> float:
    """Share of `records` the agent answers right playing `role` alone (slots empty), with gold upstream text
    (``gold=True`` or ``"gold"``) or with only the facts line of it (``"facts"``)."""
    fill = gold if isinstance(gold, str) else ("gold" if gold else "none")
    preds = role_outputs(model, tokenizer, records, role, fill, max_new_tokens)
    return sum(is_correct(p, rec["answer"]) for p, rec in zip(preds, records)) / max(1, len(records))


def facts_accuracy(model, tokenizer, records: Sequence[dict[str, Any]], role: str, fill: str = "none") -> float:
    """Share of `records` whose output opens with the record's gold first line (a knowing role's facts, or a decline)."""
    target = ROLES[role].target
    preds = role_outputs(model, tokenizer, records, role, fill, 16)
    return sum(p.strip().split("\n", 1)[0].strip() == rec[target].split("\n", 1)[0] for p, rec in zip(preds, records)) / max(1, len(records))
