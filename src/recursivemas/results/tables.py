"""Compute each section's numbers from harness records and training summaries (rendering is ``markdown``).

Each ``compute_*`` returns the plain mapping stored under its key in ``results.json``: ``a`` rounds, ``b`` links,
``c`` m ablation, ``d`` methods, ``e`` latent source, ``channel`` channel tests (docs/method.md#channel-tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recursivemas.eval.report import compare_to_text
from recursivemas.results.protocol import Budget
from recursivemas.results.stats import accuracy_cell, train_cost


def compute_rounds_table(records: Sequence[dict[str, Any]], rounds: Sequence[int]) -> dict[str, Any]:
    """(a) Per number of rounds: text vs latent accuracy, their difference, speed-up and token saving; and single."""
    ratios = {r["rounds"]: r for r in compare_to_text(records) if r["mode"] == "latent"}
    rows = []
    for n in rounds:
        text = accuracy_cell([r for r in records if r["mode"] == "text" and r["rounds"] == n])
        latent = accuracy_cell([r for r in records if r["mode"] == "latent" and r["rounds"] == n])
        ratio = ratios.get(n, {})
        rows.append({"rounds": n, "text": text, "latent": latent, "delta": latent["accuracy"] - text["accuracy"],
                     "speedup": ratio.get("speedup"), "token_saving": ratio.get("token_saving")})
    return {"rows": rows, "single": accuracy_cell([r for r in records if r["mode"] == "single"])}


def compute_links_table(arms: Sequence[tuple[str, str, Sequence[dict[str, Any]]]]) -> dict[str, Any]:
    """(b) One row per links arm: (label, description, its test records)."""
    return {"rows": [{"links": desc, "label": label, **accuracy_cell(recs)} for label, desc, recs in arms]}


def compute_m_table(val_grid: Sequence[dict[str, Any]], test_records: Sequence[dict[str, Any]], r_star: int) -> dict[str, Any]:
    """(c) Per latent length m at the chosen rounds: validation accuracy (chose m) and test accuracy (reported only)."""
    rows = []
    for g in val_grid:
        if g["rounds"] != r_star:
            continue
        test = accuracy_cell([r for r in test_records if r["latent_steps"] == g["latent_steps"]])
        rows.append({"m": g["latent_steps"], "val_accuracy": g["accuracy"], "val_n": g["n"], "test": test})
    return {"rounds": r_star, "rows": sorted(rows, key=lambda r: r["m"])}


def compute_methods_table(spec: Budget, inner, outer, lora, full, links_test, lora_test, full_test, single,
                          m_star: int, r_star: int) -> dict[str, Any]:
    """(d) Links vs LoRA vs full fine-tuning vs no training: training cost and test accuracy, same data and steps."""
    links = train_cost(inner, outer)
    links["trainable_params"] = inner["stages"]["inner"]["trainable_params"] + outer["stages"]["outer"]["trainable_params"]
    rows = [
        {"method": "RecursiveMAS (links)", "how": f"latent, m={m_star}, {r_star} round(s)", "lr": spec.lr_links, **links,
         **accuracy_cell(links_test)},
        {"method": "LoRA (decoder)", "how": "decoder alone", "lr": spec.lr_lora, **train_cost(lora), **accuracy_cell(lora_test)},
        {"method": "Full FT (decoder)", "how": "decoder alone", "lr": spec.lr_full, **train_cost(full), **accuracy_cell(full_test)},
        {"method": "no training (decoder)", "how": "decoder alone", "lr": None, "steps": 0, "trainable_params": 0,
         "peak_mb": None, "train_s": 0.0, **accuracy_cell(single)},
    ]
    return {"rows": rows}


def heldout_gap(system, records: Sequence[dict], m: int, batch: int) -> dict[str, float]:
    """Held-out final-answer cross-entropy of ``system`` with teacher latents and with ``m``-step rollout latents."""
    from recursivemas.train import TrainConfig
    from recursivemas.train.outer import answer_metrics

    cfg = TrainConfig(eval_batch_size=batch, progress=False, latent_steps=m)
    return {source: answer_metrics(system, records, cfg, source)["answer_loss"] for source in ("teacher", "rollout")}


def compute_latent_source_table(teacher, rollout, gaps, teacher_test, rollout_test, m_train: int) -> dict[str, Any]:
    """(e) Outer loop on teacher vs rollout latents: cost, held-out CE with both kinds of latents, test accuracy."""
    rows = []
    for source, summary, recs in (("teacher", teacher, teacher_test), ("rollout", rollout, rollout_test)):
        stage = summary["stages"]["outer"]
        rows.append({"source": source, "steps": stage["steps"], "train_s": stage["train_time_s"],
                     "s_per_step": stage["time_per_step_s"], "peak_mb": stage["peak_train_memory_mb"],
                     "heldout_loss_teacher": gaps[source]["teacher"], "heldout_loss_rollout": gaps[source]["rollout"],
                     "final_train_loss": stage.get("final_loss"), **accuracy_cell(recs)})
    return {"rows": rows, "m_train": m_train}


def compute_channel_table(report: Any, *, rounds: int, latent_steps: int, n: int, gold_note: str = "") -> dict[str, Any]:
    """The channel section from a ``recursivemas.channel.ChannelReport``.

    ``report.accuracy[arm]`` is in percent for arms such as ``latent``, ``latent/shuffle``, ``text/gold``, ``single``
    (stored here as a share, like every other accuracy of the report); ``report.gain[mode]`` has ``diff, low, high``
    (points, as run minus shuffled, paired bootstrap 95%) and ``p_value`` (exact McNemar). ``gold_note`` says why
    the gold-text arm is missing, when it is. ``paired`` adds as run minus zeroed per mode and gold text minus the
    decoder alone, each with its paired interval.
    """
    from recursivemas.channel import paired_difference

    accuracy = {arm: float(acc) / 100 for arm, acc in report.accuracy.items()}
    gain = {mode: _difference(g) for mode, g in report.gain.items()}
    # Two more paired contrasts from the per-input outcomes: as run minus zeroed (does the receiver respond to the
    # channel at all?) and gold text minus the decoder alone (could any hand-off help it?).
    correct = report.correct
    contrasts = {f"{mode}-zero": (mode, f"{mode}/zero") for mode in gain} | {"gold-single": ("text/gold", "single")}
    paired = {name: _difference(paired_difference(correct[a], correct[b]))
              for name, (a, b) in contrasts.items() if a in correct and b in correct}
    return {"rounds": rounds, "latent_steps": latent_steps, "n": n, "accuracy": accuracy, "gain": gain,
            "paired": paired, "tokens": dict(report.tokens), "gold_note": gold_note}


def _difference(d: Any) -> dict[str, float]:
    return {"diff": float(d.diff), "low": float(d.low), "high": float(d.high), "p_value": float(d.p_value)}
