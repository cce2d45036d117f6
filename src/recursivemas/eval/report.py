"""Turn harness records into a markdown report and plots: accuracy, tokens and time by rounds per mode,
and the speed-up and token saving of each mode against text mode on the same questions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Group = tuple[str, str, str, int, Any]  # task, split, mode, rounds, latent_steps


def _group(rec: dict[str, Any]) -> Group:
    return (rec["task"], rec["split"], rec["mode"], int(rec["rounds"]), rec.get("latent_steps"))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, split, mode, rounds, latent_steps): n, accuracy and mean cost per question."""
    from recursivemas.eval.harness import unique_records  # a record counted twice would skew n and accuracy

    groups: dict[Group, list[dict[str, Any]]] = defaultdict(list)
    for rec in unique_records(records):
        groups[_group(rec)].append(rec)
    rows = []
    for (task, split, mode, rounds, steps), recs in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        rows.append({
            "task": task, "split": split, "mode": mode, "rounds": rounds, "latent_steps": steps, "n": len(recs),
            "accuracy": _mean([float(bool(r["correct"])) for r in recs]),
            "score": _mean([float(r.get("score", r["correct"])) for r in recs]),
            "generated_tokens": _mean([r.get("generated_tokens", 0) for r in recs]),
            "latent_steps_total": _mean([r.get("latent_steps_total", 0) for r in recs]),
            "forward_calls": _mean([r.get("forward_calls", 0) for r in recs]),
            "wall_time_s": _mean([r.get("wall_time_s", 0.0) for r in recs]),
        })
    return rows


def _sort_key(g: Group) -> tuple:
    order = {"single": 0, "text": 1, "latent": 2}
    return (g[0], g[1], order.get(g[2], 9), g[3], -1 if g[4] is None else g[4])


def compare_to_text(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per non-text configuration: speed-up and token saving against text mode at the same rounds.

    Both sides are restricted to the questions answered in both, so the ratios are like for like.
    ``speedup`` = text time / this time; ``token_saving`` = 1 - this tokens / text tokens.
    """
    by_group: dict[Group, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        by_group[_group(rec)][str(rec["id"])] = rec
    rows = []
    for group, recs in sorted(by_group.items(), key=lambda kv: _sort_key(kv[0])):
        task, split, mode, rounds, steps = group
        text = by_group.get((task, split, "text", rounds, None))
        if mode == "text" or not text:
            continue
        common = sorted(set(recs) & set(text))
        if not common:
            continue
        t_time = _mean([text[i].get("wall_time_s", 0.0) for i in common])
        m_time = _mean([recs[i].get("wall_time_s", 0.0) for i in common])
        t_tok = _mean([text[i].get("generated_tokens", 0) for i in common])
        m_tok = _mean([recs[i].get("generated_tokens", 0) for i in common])
        rows.append({
            "task": task, "split": split, "mode": mode, "rounds": rounds, "latent_steps": steps, "n": len(common),
            "speedup": t_time / m_time if m_time > 0 else float("nan"),
            "token_saving": 1 - m_tok / t_tok if t_tok > 0 else float("nan"),
            "text_tokens": t_tok, "tokens": m_tok, "text_time_s": t_time, "time_s": m_time,
            "accuracy_delta": _mean([float(bool(recs[i]["correct"])) - float(bool(text[i]["correct"])) for i in common]),
        })
    return rows


def _m(steps: Any) -> str:
    return "-" if steps is None else str(steps)


def markdown(records: Sequence[dict[str, Any]], *, title: str = "Evaluation report", note: str | None = None) -> str:
    """A markdown report: what was run on which split, results per configuration, ratios vs text mode."""
    rows = summarize(records)
    splits = sorted({r["split"] for r in rows})
    lines = [f"# {title}", ""]
    lines.append(f"Split(s): {', '.join(splits) or 'none'}. Records: {len(records)}. "
                 "Accuracy is strict (unparsed answers are wrong); tokens and time are means per question.")
    if any(r.get("purpose") == "tune" for r in records):
        lines.append("These records come from a tuning sweep, not a held-out evaluation.")
    if note:
        lines += ["", note]
    lines += ["", "| task | split | mode | rounds | m | n | accuracy | tokens/q | latent steps/q | forward calls/q | "
                  "time/q (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['split']} | {r['mode']} | {r['rounds']} | {_m(r['latent_steps'])} | {r['n']} | "
                     f"{100 * r['accuracy']:.1f}% | {r['generated_tokens']:.0f} | {r['latent_steps_total']:.0f} | "
                     f"{r['forward_calls']:.1f} | {r['wall_time_s']:.3f} |")
    ratios = compare_to_text(records)
    if ratios:
        lines += ["", "## Against text mode (same questions, same rounds)", "",
                  "| task | mode | rounds | m | n | speed-up | token saving | tokens (text -> this) | accuracy delta |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in ratios:
            lines.append(f"| {r['task']} | {r['mode']} | {r['rounds']} | {_m(r['latent_steps'])} | {r['n']} | "
                         f"{r['speedup']:.2f}x | {100 * r['token_saving']:.1f}% | {r['text_tokens']:.0f} -> "
                         f"{r['tokens']:.0f} | {100 * r['accuracy_delta']:+.1f} pts |")
    return "\n".join(lines) + "\n"


def plot(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """PNG plots by rounds, one line per (task, mode, m): accuracy, tokens, time, and ratios vs text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, ratios = summarize(records), compare_to_text(records)
    many_tasks = len({r["task"] for r in rows}) > 1

    def label(r: dict[str, Any]) -> str:
        name = r["mode"] + (f" m={r['latent_steps']}" if r["latent_steps"] is not None else "")
        return f"{r['task']} {name}" if many_tasks else name

    def lines_by_label(data: list[dict[str, Any]], key: str, scale: float = 1.0) -> dict[str, tuple[list, list]]:
        series: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for r in sorted(data, key=lambda r: r["rounds"]):
            series[label(r)][0].append(r["rounds"])
            series[label(r)][1].append(scale * r[key])
        return series

    specs = [("accuracy_by_rounds.png", rows, "accuracy", 100.0, "accuracy (%)"),
             ("tokens_by_rounds.png", rows, "generated_tokens", 1.0, "generated tokens per question"),
             ("time_by_rounds.png", rows, "wall_time_s", 1.0, "wall time per question (s)")]
    if ratios:
        specs += [("speedup_vs_text.png", ratios, "speedup", 1.0, "speed-up vs text mode (x)"),
                  ("token_saving_vs_text.png", ratios, "token_saving", 100.0, "token saving vs text mode (%)")]
    paths = []
    for name, data, key, scale, ylabel in specs:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for lab, (xs, ys) in lines_by_label(data, key, scale).items():
            line, = ax.plot(xs, ys, marker="o", label=lab)
            if len(xs) == 1:  # single agent: one run, drawn across all rounds for comparison
                ax.axhline(ys[0], linestyle="--", color=line.get_color(), alpha=0.6)
        ax.set_xlabel("rounds")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({r["rounds"] for r in data}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def write_report(records: Sequence[dict[str, Any]], out_dir: str | Path, *, title: str = "Evaluation report",
                 note: str | None = None) -> Path:
    """Write ``report.md`` and the plots into ``out_dir``; returns the markdown path."""
    out_dir = Path(out_dir)
    pngs = plot(records, out_dir) if records else []
    text = markdown(records, title=title, note=note)
    if pngs:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    path = out_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
