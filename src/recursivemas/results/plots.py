"""One PNG per section of the report, drawn from the computed ``results.json`` mapping (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recursivemas.results.protocol import PAPER


def plot_all(res: dict[str, Any], out: Path, train_dir: Path) -> dict[str, str]:
    """Draw every section's figure into ``out``; returns section key -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    for key, name, draw in (("a", "a_rounds.png", _plot_rounds), ("b", "b_links.png", _plot_links),
                            ("c", "c_latent_length.png", _plot_m), ("d", "d_methods.png", _plot_methods),
                            ("e", "e_latent_source.png", lambda plt, res: _plot_latent_source(plt, res, train_dir)),
                            ("channel", "f_channel.png", _plot_channel)):
        if key not in res:
            continue
        fig = draw(plt, res)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths[key] = name
    return paths


def _plot_rounds(plt, res: dict[str, Any]):
    rows = res["a"]["rows"]
    xs = [r["rounds"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for mode, style in (("text", "s-"), ("latent", "o-")):
        axes[0].errorbar(xs, [100 * r[mode]["accuracy"] for r in rows], yerr=[100 * r[mode]["ci95"] for r in rows],
                         fmt=style, capsize=3, label="RecursiveMAS (latent)" if mode == "latent" else "text MAS")
        axes[1].plot(xs, [r[mode]["tokens"] for r in rows], style, label=mode)
    axes[0].axhline(100 * res["a"]["single"]["accuracy"], ls="--", color="gray", label="decoder alone")
    axes[0].set(xlabel="rounds", ylabel="test accuracy (%)", title="(a) accuracy by rounds", xticks=xs)
    axes[0].set_ylim(bottom=0)
    axes[1].set(xlabel="rounds", ylabel="generated tokens / question", title="tokens", xticks=xs)
    axes[2].plot(xs, [r["speedup"] or float("nan") for r in rows], "o-", label="measured")
    axes[2].plot(xs, [PAPER["speedup_by_rounds"].get(x, float("nan")) for x in xs], "x--", color="gray", label="paper")
    axes[2].axhline(1.0, color="black", lw=0.5)
    axes[2].set(xlabel="rounds", ylabel="speed-up vs text (x)", title="end-to-end speed-up", xticks=xs)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _plot_links(plt, res: dict[str, Any]):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    b = res["b"]["rows"]
    ax.bar(range(len(b)), [100 * r["accuracy"] for r in b], yerr=[100 * r["ci95"] for r in b], capsize=3, color="tab:blue")
    ax.set_xticks(range(len(b)), [r["label"] for r in b])
    ax.set(ylabel="test accuracy (%)", title=f"(b) links, m={res['chosen']['latent_steps']}, {res['chosen']['rounds']} round(s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _plot_m(plt, res: dict[str, Any]):
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    c = res["c"]["rows"]
    ms = [r["m"] for r in c]
    ax.plot(ms, [100 * r["val_accuracy"] for r in c], "o-", label="validation (chooses m)")
    ax.plot(ms, [100 * r["test"]["accuracy"] for r in c], "s--", label="test (reported only)")
    ax.axvline(res["chosen"]["latent_steps"], color="gray", ls=":", label=f"chosen m={res['chosen']['latent_steps']}")
    ax.set(xlabel="latent steps m", ylabel="accuracy (%)", title=f"(c) latent length, {res['c']['rounds']} round(s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _plot_methods(plt, res: dict[str, Any]):
    d = [r for r in res["d"]["rows"] if r["steps"]]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    names = [r["method"].split(" (")[0] for r in d]
    for ax, key, label, scale in ((axes[0], "accuracy", "test accuracy (%)", 100), (axes[1], "trainable_params", "trainable params", 1),
                                  (axes[2], "peak_mb", "peak train memory (MiB)", 1), (axes[3], "train_s", "train time (s)", 1)):
        ax.bar(names, [scale * (r[key] or 0) for r in d], color=["tab:blue", "tab:orange", "tab:green"][: len(d)],
               yerr=[100 * r["ci95"] for r in d] if key == "accuracy" else None, capsize=3)
        ax.set(title=label)
        if key == "accuracy":
            ax.axhline(100 * res["a"]["single"]["accuracy"], ls="--", color="gray", label="decoder alone, untrained")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        if key == "trainable_params":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("(d) same data and step budget", fontsize=9)
    return fig


def _outer_losses(train_dir: Path, name: str) -> list[float]:
    path = train_dir / name / "train_log.jsonl"
    if not path.is_file():
        return []
    return [e["loss"] for e in map(json.loads, path.read_text().splitlines()) if e.get("stage") == "outer" and "loss" in e]


def _plot_latent_source(plt, res: dict[str, Any], train_dir: Path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, label in (("outer_teacher", "teacher latents"), ("outer_rollout", "rollout latents")):
        losses = _outer_losses(train_dir, name)
        if losses:
            axes[0].plot(range(1, len(losses) + 1), losses, label=label)
    axes[0].set(xlabel="outer step", ylabel="answer CE (train batch)", title="(e) outer-loop training loss")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    e = res["e"]["rows"]
    width = 0.35
    for k, (key, label) in enumerate((("heldout_loss_teacher", "held-out CE, teacher latents"),
                                      ("heldout_loss_rollout", "held-out CE, rollout latents"))):
        axes[1].bar([i + k * width for i in range(len(e))], [r[key] or 0 for r in e], width, label=label)
    axes[1].set_xticks([i + width / 2 for i in range(len(e))], [f"trained on {r['source']}" for r in e])
    axes[1].set(ylabel="answer CE", title="train/inference gap")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3, axis="y")
    return fig


def _plot_channel(plt, res: dict[str, Any]):
    acc = res["channel"]["accuracy"]
    arms = list(acc)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    colors = ["tab:blue" if a.startswith("latent") else "tab:orange" if a.startswith("text") else "tab:gray" for a in arms]
    ax.bar(range(len(arms)), [100 * acc[a] for a in arms], color=colors)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=7)
    ch = res["channel"]
    ax.set(ylabel="test accuracy (%)", title=f"channel tests, m={ch['latent_steps']}, {ch['rounds']} round(s)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    return fig
