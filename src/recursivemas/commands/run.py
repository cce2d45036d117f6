"""CLI commands: `run` (answer questions with a system) and `graph` (show a system's graph and links)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

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


def read_inputs(path: Path) -> list:
    """Inputs from a JSONL file (one JSON object of input fields per line: ``question``, or whatever fields the
    system's prompts read) or a plain text file (one question per line)."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="--questions")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    inputs = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"{path} line {number} is not JSON ({err})", param_hint="--questions") from err
        if not isinstance(record, dict):
            raise typer.BadParameter(f"{path} line {number} is not a JSON object of input fields", param_hint="--questions")
        inputs.append(record)
    return inputs


def parse_fields(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs (``NAME=@path`` reads the value from a file) as input fields."""
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE (for example --field passage=@passage.txt)", param_hint="--field")
        if name in fields:
            raise typer.BadParameter(f"field {name!r} is given twice", param_hint="--field")
        if value.startswith("@"):
            source = Path(value[1:])
            if not source.is_file():
                raise typer.BadParameter(f"field {name!r} reads {source}, which does not exist", param_hint="--field")
            value = source.read_text()
        fields[name] = value
    return fields


def _check_inputs(system, inputs: list, mode: str, from_file: Path | None) -> None:
    """Refuse inputs that lack a field the system's prompts read, saying how to give it on this command line."""
    wanted = system.input_fields(mode)
    for number, item in enumerate(inputs, 1):
        missing = system.missing_fields(item, mode)
        if not missing:
            continue
        names = ", ".join(repr(m) for m in missing)
        reads = f"the agents of {system.config.name!r} read the input field(s) {', '.join(repr(w) for w in wanted)}"
        if from_file is None:
            how = ("give the question with --question" if missing == ["question"] else
                   f"give each with --field NAME=VALUE (or NAME=@file), e.g. --field {missing[0]}=...")
            raise typer.BadParameter(f"{reads}; missing {names}: {how}")
        if from_file.suffix != ".jsonl":
            raise typer.BadParameter(f"{reads}; a text file gives only 'question': write a .jsonl file with one "
                                     f"object per line holding {', '.join(repr(w) for w in wanted)}", param_hint="--questions")
        raise typer.BadParameter(f"{from_file} line {number} lacks {names} (or holds it as a non-string); {reads}",
                                 param_hint="--questions")


def run(
    system: Path = typer.Option(..., "--system", help="System YAML file or a directory saved with save_pretrained."),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="One question (the input's 'question' field)."),
    field: Optional[List[str]] = typer.Option(None, "--field", "-f", help="Another input field of that one input, NAME=VALUE or NAME=@file (repeatable), for systems whose prompts read more than {question}."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="JSONL file with one object of input fields per line ('question', and any other field the prompts read), or a .txt file with one question per line."),
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

    one = question is not None or bool(field)
    if one == (questions is not None):
        raise typer.BadParameter("give exactly one of --question / --field (one input) or --questions (a file of inputs)")
    if questions is not None:
        asked = read_inputs(questions)
    else:
        fields = parse_fields(field or [])
        if question is not None:
            if "question" in fields:
                raise typer.BadParameter("the question is given twice, by --question and by --field question=...")
            fields["question"] = question
        asked = [fields]
    loaded = System.load(system, device=device)
    _check_inputs(loaded, asked, mode, questions)
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
