"""CLI commands: zoo (build and measure the bundled tiny agents)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``zoo`` sub-app: ``zoo build``, ``zoo eval`` and ``zoo table``."""
    zoo = typer.Typer(no_args_is_help=True, help="The bundled tiny agents, pretrained from scratch on the arithmetic world.")

    @zoo.command("build")
    def build_cmd(
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the package's zoo_models/)."),
        seed: int = typer.Option(0, "--seed", help="Seed for world data, tokenizers and pretraining."),
        agents: Optional[str] = typer.Option(None, "--agents", help="Comma-separated subset of agents (default: all)."),
        scale: float = typer.Option(1.0, "--scale", help="Multiply every agent's pretraining steps (e.g. 0.1 for a smoke build)."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Also write the world data used as JSONL here."),
        workers: int = typer.Option(2, "--workers", help="Agents trained at once, one process and one torch thread each."),
    ) -> None:
        """Rebuild the zoo: world data, tokenizers, pretraining, evaluation, zoo_report.json."""
        from transformers.utils import logging as hf_logging

        from recursivemas.bundled.zoo.build import ZOO_DIR, build

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        names = [a.strip() for a in agents.split(",")] if agents else None
        report = build(out or ZOO_DIR, seed, agents=names, steps_scale=scale, data_dir=data_dir, workers=workers,
                       log=lambda s: typer.echo(s))
        typer.echo(json.dumps({n: a["accuracy"] for n, a in report["agents"].items()}, indent=2))

    @zoo.command("eval")
    def eval_cmd(
        path: Optional[Path] = typer.Option(None, "--path", help="Zoo folder (default: the package's zoo_models/)."),
        n: int = typer.Option(200, "--n", help="Validation problems (the world's default 2-3 steps)."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Greedy accuracy of each zoo agent in its roles (docs/zoo.md): alone, with gold upstream text, with its facts."""
        import torch

        from recursivemas.bundled.world import generate
        from recursivemas.bundled.zoo.agents import AGENTS
        from recursivemas.bundled.zoo.build import ZOO_DIR, evaluate_agent, load_agent
        from recursivemas.bundled.zoo.roles import BASE_ROLES

        torch.set_num_threads(1)  # tiny models: one thread is as fast, and far faster on a shared CPU
        root = path or ZOO_DIR
        agents = sorted(p.parent for p in root.glob("*/config.json"))
        if not agents:
            raise typer.BadParameter(f"no zoo agents under {root}; run `recursivemas zoo build` first")
        records = generate("validation", n, seed)
        for agent in agents:
            model, tok = load_agent(agent)
            spec = AGENTS.get(agent.name)
            roles = list(spec.roles or BASE_ROLES) if spec else ["solver"]
            acc = evaluate_agent(model, tok, records, roles, seed)
            typer.echo(f"{agent.name}: {json.dumps({k: round(v, 3) for k, v in acc.items()})}")

    @zoo.command("table")
    def table_cmd(path: Optional[Path] = typer.Option(None, "--path", help="Zoo folder (default: the package's zoo_models/).")) -> None:
        """Print the agents table of docs/zoo.md from the zoo's zoo_report.json."""
        from recursivemas.bundled.zoo.build import REPORT, ZOO_DIR, report_markdown

        file = (path or ZOO_DIR) / REPORT
        if not file.is_file():
            raise typer.BadParameter(f"{file} does not exist; run `recursivemas zoo build` first")
        typer.echo(report_markdown(json.loads(file.read_text())))

    @zoo.command("links")
    def links_cmd(
        system: str = typer.Option("sequential,distillation", "--system",
                                   help="Comma-separated bundled systems whose links to train (sequential, distillation, mixture, deliberation)."),
        steps: int = typer.Option(200, "--steps", help="Outer-loop steps."),
        inner_steps: int = typer.Option(60, "--inner-steps", help="Inner-loop steps."),
        records: int = typer.Option(480, "--records", help="World training problems."),
        latent_source: str = typer.Option("rollout", "--latent-source", help="Outer-loop latents: rollout, teacher or mixed (docs/training.md)."),
        latent_steps: int = typer.Option(2, "--latent-steps", help="Rollout length m while training (the system file keeps its tuned m)."),
        rounds: int = typer.Option(1, "--rounds", help="Rounds unrolled while training (the system file keeps its tuned rounds)."),
        workers: int = typer.Option(2, "--workers", help="Systems trained at once, one process and one torch thread each."),
        lr: float = typer.Option(1e-3, "--lr", help="Learning rate of both loops."),
        warmup: int = typer.Option(10, "--warmup", help="Linear warm-up steps of each loop. From a ridge init at lr 3e-3, 10 can knock the "
                                   "links off the fit for good (docs/zoo.md#links-of-the-bundled-systems); the sequential recipe uses 100."),
        link_init: str = typer.Option("ridge", "--link-init", help="Outer links start as: ridge (least squares to the receiver's embedding "
                                      "of the sender's next token: a text hand-off in latent form) or random."),
        upstream_weight: float = typer.Option(0.0, "--upstream-weight", help="Add this times the other agents' own-target CE "
                                              "(docs/training.md; the roundtrip system trains with 2)."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Train bundled systems' links on the world's train split and ship them beside their system files."""
        from recursivemas.bundled import train_bundled

        names = [n.strip() for n in system.split(",") if n.strip()]
        try:
            seconds = train_bundled(names, workers=workers, steps=steps, inner_steps=inner_steps, records=records, seed=seed,
                                    latent_source=latent_source, latent_steps=latent_steps, rounds=rounds, link_init=link_init, lr=lr,
                                    warmup_steps=warmup, upstream_weight=upstream_weight)
        except FileNotFoundError as err:
            raise typer.BadParameter(str(err), param_hint="--system") from None
        for name, s in seconds.items():
            typer.echo(f"trained {name} links in {s:.0f}s")

    @zoo.command("rebuild")
    def rebuild_cmd(workers: int = typer.Option(2, "--workers", help="Processes at once, one torch thread each.")) -> None:
        """Everything the bundled systems are made of, from nothing: `zoo build`, then every system's links with the
        recipe its shipped file was trained with (LINK_RECIPES; docs/zoo.md). Writes into the package, like both."""
        import time

        from transformers.utils import logging as hf_logging

        from recursivemas.bundled import LINK_DEFAULTS, LINK_RECIPES, train_bundled
        from recursivemas.bundled.zoo.build import ZOO_DIR, build

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        start = time.perf_counter()
        build(ZOO_DIR, 0, workers=workers, log=lambda s: typer.echo(s))
        built = time.perf_counter() - start
        seconds = train_bundled(list(LINK_RECIPES), workers=workers, per_system=LINK_RECIPES, **LINK_DEFAULTS)
        for name, s in seconds.items():
            typer.echo(f"trained {name} links in {s:.0f}s")
        total = time.perf_counter() - start
        typer.echo(f"rebuilt in {total:.0f}s ({total / 60:.1f} min): zoo {built:.0f}s, links {total - built:.0f}s")

    app.add_typer(zoo, name="zoo")
