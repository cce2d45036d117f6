"""CLI commands: `run` (answer questions with a system) and `graph` (show a system's graph and links)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def usage_table(result) -> Table:
    """Per agent and round: what each step cost, then the totals."""
    table = Table(title=f"{result.mode} mode, {result.rounds} round(s)")
    for column in ("round", "agent", "action", "generated tokens", "latent steps", "forward calls", "input positions", "cached positions", "wall time (s)"):
        table.add_column(column, justify="right" if column not in ("agent", "action") else "left")
    for s in result.usage.steps:
        table.add_row(str(s.round), s.agent, s.action, str(s.generated_tokens), str(s.latent_steps), str(s.forward_calls), str(s.input_positions), str(s.cached_positions), f"{s.wall_time_s:.3f}")
    t = result.usage
    table.add_row("", "total", "", str(t.generated_tokens), str(t.latent_steps), str(t.forward_calls), str(t.input_positions), str(t.cached_positions), f"{t.wall_time_s:.3f}", style="bold")
    return table


def read_questions(path: Path) -> list[str]:
    """Questions from a JSONL file (a ``question`` field per line) or a plain text file (one per line)."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="--questions")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    questions = []
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        if "question" not in record:
            raise typer.BadParameter(f"{path} line {number} has no 'question' field", param_hint="--questions")
        questions.append(record["question"])
    return questions


def run(
    system: Path = typer.Option(..., "--system", help="System YAML file or a directory saved with save_pretrained."),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="One question."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="JSONL file with a 'question' field per line (or a .txt, one per line)."),
    mode: str = typer.Option("latent", "--mode", help="latent | text | single"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Recursion rounds (default: the system file's)."),
    latent_steps: Optional[int] = typer.Option(None, "--latent-steps", help="Latent thoughts per agent per round (default: the system file's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per question instead of tables."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write results as JSONL here."),
    device: Optional[str] = typer.Option(None, "--device", help="Place every agent here (cpu, cuda, cuda:N, mps), whatever the system file says."),
) -> None:
    """Answer questions with a system and show what every agent did in every round."""
    from recursivemas import System

    if (question is None) == (questions is None):
        raise typer.BadParameter("give exactly one of --question or --questions")
    asked = [question] if question is not None else read_questions(questions)
    loaded = System.load(system, device=device)
    results = loaded.run(asked, mode=mode, rounds=rounds, latent_steps=latent_steps, batch_size=batch_size, seed=seed, progress=len(asked) > 1)
    if out is not None:
        with out.open("w") as f:
            for r in results:
                f.write(json.dumps(r.to_dict()) + "\n")
    for r in results:
        if as_json:
            print(json.dumps(r.to_dict()))
            continue
        console.rule(r.question[:100])
        console.print(r.text)
        if len(results) == 1:
            console.print(usage_table(r))
    if not as_json and len(results) > 1:
        n = len(results)
        console.print(
            f"{n} questions: {sum(r.usage.generated_tokens for r in results) / n:.1f} generated tokens, "
            f"{sum(r.usage.latent_steps for r in results) / n:.1f} latent steps, "
            f"{sum(r.usage.wall_time_s for r in results) / n:.3f} s per question"
        )


def graph(system: Path = typer.Option(..., "--system", help="System YAML file.")) -> None:
    """Print a system's graph and the links it needs, with parameter counts (no model weights are loaded)."""
    from recursivemas.config import load_config
    from recursivemas.graph import Graph, edge_name
    from recursivemas.links import InnerLink, OuterLink

    console = Console()  # created here so the terminal width is read when the command runs
    config = load_config(system)
    g = Graph.from_config(config)
    widths = _hidden_sizes(config)
    console.print(f"[bold]{config.name}[/bold]: {len(g.agents)} agents, decoder [bold]{g.decoder}[/bold], order {' -> '.join(g.order())}")
    table = Table(title="links")
    for column in ("link", "from", "to", "slot", "when", "width", "parameters"):
        table.add_column(column)
    total = 0
    for agent in g.agents:
        d = widths.get(agent)
        params = InnerLink.num_params_formula(d, config.links.kind) if d else None
        total += params or 0
        table.add_row(f"inner.{agent}", agent, agent, "", "every latent step", f"{d} -> {d}" if d else "?", f"{params:,}" if params else "?")
    for e in g.edges:
        a, b = widths.get(e.src), widths.get(e.dst)
        params = OuterLink.num_params_formula(a, b, config.links.kind) if a and b else None
        total += params or 0
        when = "next round" if e.feedback else "same round"
        table.add_row(f"outer.{edge_name(e)}", e.src, e.dst, f"<<{e.slot}>>", when, f"{a} -> {b}" if a and b else "?", f"{params:,}" if params else "?")
    console.print(table)
    console.print(f"trainable link parameters: {total:,} ({config.links.kind})")


def _hidden_sizes(config) -> dict[str, int]:
    """Hidden sizes read from each model's config.json (no weights loaded); unknown for unreachable hub ids."""
    from transformers import AutoConfig

    sizes = {}
    for name, agent in config.agents.items():
        try:
            model_config = AutoConfig.from_pretrained(config.resolve(agent.model), trust_remote_code=agent.trust_remote_code)
        except OSError:
            continue
        text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        sizes[name] = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd")
    return sizes


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(graph)
