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
    base, _, probe = g[2].partition("/")
    return (g[0], g[1], order.get(base, 9), probe, g[3], -1 if g[4] is None else g[4])


def _probed(mode: str) -> bool:
    return "/" in mode  # a channel-test arm, e.g. "latent/shuffle"


def _by_group(records: Iterable[dict[str, Any]]) -> dict[Group, dict[str, dict[str, Any]]]:
    """Records per configuration, keyed by question id (so two configurations pair up question by question)."""
    by_group: dict[Group, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        by_group[_group(rec)][str(rec["id"])] = rec
    return by_group


def channel_gains(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, split, mode, rounds, m) run with the shuffle probe: accuracy as run, shuffled and zeroed,
    and the channel gain (as run minus shuffled) with its paired interval, over the questions in both."""
    from recursivemas.channel import paired_difference

    by_group = _by_group(records)
    rows = []
    for group, recs in sorted(by_group.items(), key=lambda kv: _sort_key(kv[0])):
        task, split, mode, rounds, steps = group
        shuffled = by_group.get((task, split, f"{mode}/shuffle", rounds, steps))
        if _probed(mode) or not shuffled:
            continue
        common = sorted(set(recs) & set(shuffled))
        zeroed = by_group.get((task, split, f"{mode}/zero", rounds, steps), {})
        gain = paired_difference([bool(recs[i]["correct"]) for i in common], [bool(shuffled[i]["correct"]) for i in common])
        rows.append({
            "task": task, "split": split, "mode": mode, "rounds": rounds, "latent_steps": steps, "n": len(common),
            "accuracy": _mean([float(bool(recs[i]["correct"])) for i in common]),
            "shuffled": _mean([float(bool(shuffled[i]["correct"])) for i in common]),
            "zeroed": _mean([float(bool(zeroed[i]["correct"])) for i in common if i in zeroed]) if zeroed else None,
            "gain": gain.diff, "gain_low": gain.low, "gain_high": gain.high, "p_value": gain.p_value,
            "carries_information": gain.excludes_zero and gain.diff > 0,
        })
    return rows


def compare_to_text(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per non-text configuration: speed-up and token saving against text mode at the same rounds.

    Both sides are restricted to the questions answered in both, so the ratios are like for like.
    ``speedup`` = text time / this time; ``token_saving`` = 1 - this tokens / text tokens.
    """
    by_group = _by_group(records)
    rows = []
    for group, recs in sorted(by_group.items(), key=lambda kv: _sort_key(kv[0])):
        task, split, mode, rounds, steps = group
        text = by_group.get((task, split, "text", rounds, None))
        if mode == "text" or _probed(mode) or not text:
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


def headline(records: Sequence[dict[str, Any]]) -> list[str]:
    """The first table of a report with channel tests: per mode and rounds, accuracy beside its channel
    test (shuffled, zeroed, gain with interval), tokens, time and the ratios against text mode."""
    rows = [r for r in summarize(records) if not _probed(r["mode"])]
    channel = {(c["task"], c["mode"], c["rounds"], c["latent_steps"]): c for c in channel_gains(records)}
    ratios = {(c["task"], c["mode"], c["rounds"], c["latent_steps"]): c for c in compare_to_text(records)}
    if not channel:
        return []
    lines = ["| mode | rounds | m | accuracy | shuffled | zeroed | channel gain [95% CI] | tokens/q | time/q (s) | "
             "speed-up vs text | tokens saved vs text |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r["task"], r["mode"], r["rounds"], r["latent_steps"])
        c, q = channel.get(key), ratios.get(key)
        test = (f"{100 * c['shuffled']:.1f}% | " + ("-" if c["zeroed"] is None else f"{100 * c['zeroed']:.1f}%") +
                f" | {c['gain']:+.1f} [{c['gain_low']:+.1f}, {c['gain_high']:+.1f}]") if c else "- | - | -"
        ratio = f"{q['speedup']:.2f}x | {100 * q['token_saving']:.1f}%" if q else "- | -"
        lines.append(f"| {r['mode']} | {r['rounds']} | {_m(r['latent_steps'])} | {100 * r['accuracy']:.1f}% | {test} | "
                     f"{r['generated_tokens']:.0f} | {r['wall_time_s']:.3f} | {ratio} |")
    gold = [r for r in summarize(records) if r["mode"] == "text/gold"]
    if gold:
        lines += ["", f"Ceiling: the decoding agent reading the gold upstream text scores {100 * gold[0]['accuracy']:.1f}% "
                      f"(n = {gold[0]['n']})."]
    return lines


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
    top = headline(records)
    if top:
        lines += ["", "## Accuracy beside its channel test", ""] + top + ["", "## Every configuration"]
    lines += ["", "| task | split | mode | rounds | m | n | accuracy | tokens/q | latent steps/q | forward calls/q | "
                  "time/q (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['split']} | {r['mode']} | {r['rounds']} | {_m(r['latent_steps'])} | {r['n']} | "
                     f"{100 * r['accuracy']:.1f}% | {r['generated_tokens']:.0f} | {r['latent_steps_total']:.0f} | "
                     f"{r['forward_calls']:.1f} | {r['wall_time_s']:.3f} |")
    channel = channel_gains(records)
    if channel:
        lines += ["", "## Channel tests (docs/method.md#channel-tests)", "",
                  "Each question also runs with every slot's payload taken from another question of its batch "
                  "(shuffled) and with zeros (text: empty messages). Channel gain = accuracy as run minus shuffled, "
                  "paired over the same questions, with a 95% bootstrap interval.", "",
                  "| task | mode | rounds | m | n | as run | shuffled | zeroed | channel gain [95% CI] | p (McNemar) | carries information |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in channel:
            zeroed = "-" if r["zeroed"] is None else f"{100 * r['zeroed']:.1f}%"
            lines.append(f"| {r['task']} | {r['mode']} | {r['rounds']} | {_m(r['latent_steps'])} | {r['n']} | "
                         f"{100 * r['accuracy']:.1f}% | {100 * r['shuffled']:.1f}% | {zeroed} | {r['gain']:+.1f} "
                         f"[{r['gain_low']:+.1f}, {r['gain_high']:+.1f}] | {r['p_value']:.2g} | "
                         f"{'yes' if r['carries_information'] else 'no'} |")
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
    records = [r for r in records if not _probed(r["mode"])]  # channel-test arms are tabled, not plotted
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
