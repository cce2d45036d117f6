"""The bundled real-model system (``bundled/configs/real.yaml``): train its links, measure it with the channel tests.

gemma-3-270m reads a passage of facts (``recursivemas.facts``), SmolLM2-135M-Instruct answers without
seeing it; both load from GGUF files shipped by Python packages (``recursivemas.gguf``). See docs/real_models.md.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from recursivemas import facts
from recursivemas.machine import describe as describe_machine

CONFIG = Path(__file__).resolve().parent / "bundled" / "configs" / "real.yaml"
LINKS = CONFIG.with_name("real.links.safetensors")


def load(with_links: bool = True, device: str | None = None, links: Path | None = None):
    """The bundled real system; ``with_links=False`` starts from fresh (untrained) links, ``links`` reads another
    links file than the shipped one; ``device`` as in ``System.load``."""
    from recursivemas import System

    data = yaml.safe_load(CONFIG.read_text())
    if not with_links or not LINKS.is_file():
        data["links"] = {**data.get("links", {}), "checkpoint": None}
    elif links is not None:
        data["links"] = {**data.get("links", {}), "checkpoint": str(Path(links).resolve())}
    return System.from_config({**data, "base_dir": str(CONFIG.parent)}, device=device)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_records(records: int, seed: int = 0, made_up: float = 0.0) -> list[dict]:
    """``records`` training problems, the fraction ``made_up`` of them with made-up values (``facts.generate``),
    interleaved so that any prefix (the least-squares fit's records) holds both kinds."""
    from itertools import zip_longest

    wide = round(records * made_up)
    named = facts.generate("train", records - wide, seed=seed)
    made = facts.generate("train", wide, seed=seed, values="made-up") if wide else []
    return [r for pair in zip_longest(named, made) for r in pair if r is not None]


def train_links(steps: int = 150, records: int = 800, seed: int = 0, out: Path | None = None, made_up: float = 0.0,
                **overrides: Any) -> dict:
    """Fit the inner and outer links of the real system on facts' train split; returns the summary.

    Always least-squares fits first, on ``ridge_records`` records: each agent's inner link (its state -> its own
    embedding of the next token of its target, the inner loop's objective) and then each outer link (``links.init:
    ridge``: the reader's state that predicts its hand-off token -> the answerer's embedding of that token).
    ``steps > 0`` then trains the outer links from that fit on rollout latents with the answerer's answer loss, at a
    low learning rate with a long warm-up (lr 1e-3 with 10 warm-up steps threw the fit away). The shipped links are
    the defaults, 150 steps (docs/real_models.md#how-the-links-were-made); ``steps=0`` keeps the fit alone.
    ``made_up`` is the fraction of training problems whose values are made-up words (``training_records``).
    Writes the links to ``out`` (default: ``bundled/configs/real.links.safetensors``, shipped in float16).
    """
    from recursivemas.bundled import ship_links
    from recursivemas.train import TrainConfig, train
    from recursivemas.train.inner import ridge_init_inner
    from recursivemas.train.outer import ridge_init_outer

    system = load(with_links=False)
    # with steps=0 the config only carries the fit's settings (TrainConfig itself wants at least one step)
    settings = dict(stage="outer", steps=max(steps, 1), lr=1e-4, batch_size=8, seed=seed, progress=True, eval_generate=False,
                    latent_source="rollout", warmup_steps=min(30, steps // 5), ridge_records=256, eval_fraction=0.05,
                    checkpoint_every=10**6)
    settings.update(overrides)
    config = TrainConfig(**settings)
    data = training_records(records, seed, made_up)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit_on = data[: config.ridge_records]
        inner = ridge_init_inner(system, fit_on, config)  # first: the outer links' sources are the inner links' outputs
        if steps == 0:
            summary = {"ridge_init_cosine": ridge_init_outer(system, fit_on, config), "ridge_records": config.ridge_records}
            system.links.save(Path(tmp) / "links.safetensors")
        else:  # the outer stage starts from the same least-squares fit (links.init: ridge) and leaves the inner links alone
            summary = train(system, data, config, tmp)
        summary["inner_ridge_cosine"] = inner
        target = Path(out) if out else LINKS
        ship_links(Path(tmp) / "links.safetensors", target, half=True)  # float16 halves the file
    summary["train_seconds"] = time.perf_counter() - start
    summary["seconds_per_step"] = summary["train_seconds"] / steps if steps else None
    summary["peak_rss_mb"] = peak_rss_mb()
    summary["links_bytes"] = target.stat().st_size
    return summary


def is_correct(records: list[dict]):
    """The channel tests' grader for ``records`` (strict, ``facts.grade``)."""
    return lambda text, i: facts.grade(text, records[i])


def handoff_gold(records: list[dict]) -> list[dict[str, str]]:
    """The gold arm: the answerer's slot holds what a perfect reader hands off (the answer, as the reader writes it)."""
    return [{"NOTE": r["reply"]} for r in records]


def passage_gold(records: list[dict]) -> list[dict[str, str]]:
    """A second ceiling: the answerer's slot holds the whole passage, as if it read the facts itself."""
    return [{"NOTE": r["passage"]} for r in records]


def channel(system, records: list[dict], rounds: int, latent_steps: int | None = None, batch_size: int = 16, progress: bool = False):
    """Every channel-test arm on ``records``: as run / shuffled / zeroed per mode, the gold hand-off, the answerer
    alone, and the answerer given the passage (arm ``text/passage``)."""
    from recursivemas.channel import channel_test

    report = channel_test(system, records, is_correct(records), gold=handoff_gold(records), rounds=rounds,
                          latent_steps=latent_steps, batch_size=batch_size, progress=progress)
    given = system.run(records, mode="text", probe="gold", gold=passage_gold(records), batch_size=batch_size, progress=progress)
    report.add("text/passage", [facts.grade(r.text, rec) for r, rec in zip(given, records)],
               sum(r.usage.generated_tokens for r in given) / len(given))
    return report


def by_kind(report, records: list[dict], arms: tuple[str, ...] = ("latent", "text")) -> str:
    """Markdown: each arm's accuracy per kind of fact asked (a locker code is five tokens to the reader, a word one)."""
    kinds = sorted({r["kind"] for r in records})
    lines = ["| arm | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for arm in arms:
        cells = []
        for kind in kinds:
            hits = [ok for ok, r in zip(report.correct[arm], records) if r["kind"] == kind]
            cells.append(f"{sum(hits)}/{len(hits)}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed(system, records: list[dict], rounds: int, batch_size: int = 16, generation: dict | None = None) -> dict[str, dict[str, float]]:
    """Wall time, generated tokens and the first batch's forward calls per problem in latent and text mode at ``rounds``
    (measured back to back); ``generation`` maps a mode to its ``GenerationConfig`` override (``System.run``).

    Two problems of each mode run first, untimed: the first latent run decodes the reader's whole vocabulary once to
    find its stop tokens (a few seconds for gemma-3's 262k), which is not what a problem costs.
    """
    for mode in ("latent", "text"):
        system.run(records[:2], mode=mode, rounds=1, batch_size=batch_size)
    out = {}
    for mode in ("latent", "text"):
        start = time.perf_counter()
        results = system.run(records, mode=mode, rounds=rounds, batch_size=batch_size, generation=(generation or {}).get(mode))
        seconds = time.perf_counter() - start
        out[mode] = {"seconds_per_problem": seconds / len(records),
                     "generated_tokens": sum(r.usage.generated_tokens for r in results) / len(results),
                     "forward_calls": sum(s.forward_calls for s in results[0].usage.steps),
                     "accuracy": 100 * sum(facts.grade(r.text, rec) for r, rec in zip(results, records)) / len(records)}
    out["speedup"] = out["text"]["seconds_per_problem"] / out["latent"]["seconds_per_problem"]
    out["token_reduction"] = 1 - out["latent"]["generated_tokens"] / max(out["text"]["generated_tokens"], 1e-9)
    return out


def speed_table(speeds: dict[int, dict]) -> str:
    """Markdown: latent vs text per number of rounds."""
    lines = ["| rounds | latent s/problem | text s/problem | speed-up | latent tokens | text tokens | fewer tokens |",
             "|---|---|---|---|---|---|---|"]
    for r, s in sorted(speeds.items()):
        lines.append(f"| {r} | {s['latent']['seconds_per_problem']:.2f} | {s['text']['seconds_per_problem']:.2f} | {s['speedup']:.1f}x | "
                     f"{s['latent']['generated_tokens']:.1f} | {s['text']['generated_tokens']:.1f} | {100 * s['token_reduction']:.1f}% |")
    return "\n".join(lines)


def run_demo(limit: int = 64, rounds: int | None = None, speed_rounds: tuple[int, ...] = (1, 2, 3), speed_problems: int = 16,
             out: Path = Path("runs/demo-real"), system_path: Path | None = None, device: str | None = None) -> dict:
    """`make demo-real`: the channel tests on ``limit`` held-out test problems, then latent vs text speed."""
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.markdown import Markdown

    from recursivemas import System
    from recursivemas.channel import paired_difference

    console = Console()
    start = time.perf_counter()
    system = System.load(system_path, device=device) if system_path else load(device=device)
    console.print(f"[bold]{system}[/bold] ({time.perf_counter() - start:.0f}s to load)")
    records = facts.generate("test", limit)
    rounds = system.config.rounds if rounds is None else rounds
    report = channel(system, records, rounds, progress=True)
    timed = records[:speed_problems]
    speeds = {r: speed(system, timed, r) for r in speed_rounds}
    versus = paired_difference(report.correct["latent"], report.correct["text"])
    text = (f"# Real models: {system.config.name}\n\n{limit} held-out test problems (facts, 4 options, strict grading); "
            f"m = {system.config.latent_steps}; {time.strftime('%Y-%m-%d')}, {describe_machine()}.\n\n## Channel tests\n\n"
            f"{report.to_markdown()}\n\nRecursiveMAS minus text MAS (paired, same problems): {versus}.\n\n"
            f"The answerer given the passage itself: {report.accuracy['text/passage']:.1f}%.\n\nCorrect by kind of fact asked:\n\n"
            f"{by_kind(report, records)}\n\n## Latent vs text ({len(timed)} problems, measured back to back)\n\n{speed_table(speeds)}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    summary = {"channel": report.to_dict(), "latent_minus_text": asdict(versus), "speed": speeds, "seconds": time.perf_counter() - start}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    console.print(Markdown(text))
    console.print(f"report {out / 'report.md'}, summary {out / 'summary.json'} ({summary['seconds']:.0f}s in all)")
    return summary


def tune(n: int = 64, grid: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (1, 4), (1, 6), (1, 8), (2, 6), (3, 6)), write: bool = True) -> dict:
    """Choose rounds and m on the validation split (latent accuracy; ties go to fewer rounds, then smaller m).

    Each setting is also run with its latents shuffled across problems, so every score stands beside its channel test.
    """
    system = load()
    records = facts.generate("validation", n)

    def accuracy(rounds: int, m: int, probe: str) -> float:
        results = system.run(records, mode="latent", rounds=rounds, latent_steps=m, batch_size=16, probe=probe, progress=True)
        return 100 * sum(facts.grade(r.text, rec) for r, rec in zip(results, records)) / n

    scores, shuffled = {}, {}
    for rounds, m in grid:
        scores[(rounds, m)], shuffled[(rounds, m)] = accuracy(rounds, m, "none"), accuracy(rounds, m, "shuffle")
        print(f"validation n={n}: rounds={rounds} m={m}: {scores[(rounds, m)]:.1f}% (shuffled {shuffled[(rounds, m)]:.1f}%)", flush=True)
    best = max(scores, key=lambda k: (scores[k], -k[0], -k[1]))
    if write:
        from recursivemas.eval.tune import write_tuned_values

        write_tuned_values(CONFIG, latent_steps=best[1], rounds=best[0], tuned_on="facts/validation")
    return {"scores": {f"rounds={r},m={m}": s for (r, m), s in scores.items()},
            "shuffled": {f"rounds={r},m={m}": s for (r, m), s in shuffled.items()},
            "best": {"rounds": best[0], "latent_steps": best[1]}}


def unseen(n: int = 64, vocabularies: tuple[str, ...] = facts.VOCABULARIES, batch_size: int = 16, links: Path | None = None) -> dict:
    """Latent (beside its shuffled channel test) and text MAS on the same ``n`` test problems, with the names and
    values the links were trained on and with unseen ones (``facts.with_vocabulary``): does the channel carry the
    passage's value, or a guess learned from the training vocabulary?"""
    from dataclasses import asdict

    from recursivemas.channel import paired_difference

    system, base, rows = load(links=links), facts.generate("test", n), {}
    lines = ["| vocabulary | RecursiveMAS | shuffled | channel gain [95% CI] | text MAS |", "|---|---|---|---|---|"]
    for vocabulary in vocabularies:
        records, correct = facts.with_vocabulary(base, vocabulary), {}
        for arm, mode, probe in (("latent", "latent", "none"), ("shuffled", "latent", "shuffle"), ("text", "text", "none")):
            results = system.run(records, mode=mode, probe=probe, batch_size=batch_size, progress=True)
            correct[arm] = [facts.grade(r.text, rec) for r, rec in zip(results, records)]
        gain = paired_difference(correct["latent"], correct["shuffled"])
        rows[vocabulary] = {**{arm: 100 * sum(c) / n for arm, c in correct.items()}, "gain": asdict(gain)}
        row = rows[vocabulary]
        lines.append(f"| {vocabulary} | {row['latent']:.1f}% | {row['shuffled']:.1f}% | {gain} | {row['text']:.1f}% |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m recursivemas.real train|tune|demo|unseen``: how the shipped links and settings were made, and how
    far they carry."""
    import argparse
    import json

    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(prog="python -m recursivemas.real")
    parser.add_argument("command", choices=("train", "tune", "demo", "unseen"))
    parser.add_argument("--steps", type=int, default=150, help="outer-loop steps after the least-squares fit (0: the fit alone)")
    parser.add_argument("--records", type=int, default=800)
    parser.add_argument("--lr", type=float, default=None, help="outer-loop learning rate (default: train_links's, 1e-4)")
    parser.add_argument("--warmup", type=int, default=None, help="outer-loop warm-up steps (default: min(30, steps // 5))")
    parser.add_argument("--out", type=Path, default=None, help="where train writes the links (default: the shipped file)")
    parser.add_argument("--made-up", type=float, default=0.0, help="train: fraction of problems with made-up values")
    parser.add_argument("--links", type=Path, default=None, help="unseen: a links file to measure instead of the shipped one")
    parser.add_argument("-n", type=int, default=None, help="problems (tune: validation, default 64; demo, unseen: test, default 64)")
    args = parser.parse_args(argv)
    if args.command == "train":
        given = {"lr": args.lr, "warmup_steps": args.warmup}  # unset flags keep train_links's defaults (one place)
        summary = train_links(steps=args.steps, records=args.records, out=args.out, made_up=args.made_up,
                              **{k: v for k, v in given.items() if v is not None})
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1, default=str))
    elif args.command == "tune":
        print(json.dumps(tune(n=args.n or 64), indent=1))
    elif args.command == "unseen":
        print(json.dumps(unseen(n=args.n or 64, links=args.links), indent=1))
    else:
        run_demo(limit=args.n or 64)


if __name__ == "__main__":
    main()
