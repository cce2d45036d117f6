"""CLI commands: tools (`recursivemas tools index`, `recursivemas tools search`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

tools_app = typer.Typer(no_args_is_help=True, help="Tools for the deliberation pattern: build and query search indexes.")


@tools_app.command("index")
def index(
    corpus: List[Path] = typer.Argument(..., help="Files or directories of .txt, .md and .jsonl (objects with a `text` field)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the index to (new, empty, or an older index)."),
    chunk_chars: int = typer.Option(1000, help="Passage length in characters; longer texts are cut on paragraph boundaries."),
) -> None:
    """Build a BM25 index over a local corpus, for `tools.search.index_dir`."""
    from recursivemas.tools.search import BM25Index

    t0 = time.perf_counter()
    try:
        built = BM25Index.build(corpus, chunk_chars=chunk_chars)
        built.save(out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"indexed {len(built.passages)} passages from {built.meta['files']} files into {out} in {time.perf_counter() - t0:.2f} s")


@tools_app.command("search")
def search(
    query: str = typer.Argument(..., help="The search query."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index directory from `recursivemas tools index`."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus", "-c", help="Search these files directly (index built in memory)."),
    k: int = typer.Option(3, "-k", help="Number of passages to return."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON lines."),
) -> None:
    """Query an index (or a corpus) the way the `<search>` tool does."""
    from recursivemas.tools.search import SearchTool, hit_dict, open_index

    if index_dir is None and not corpus:
        raise typer.BadParameter("give --index DIR (from `recursivemas tools index`) or --corpus PATH")
    try:
        idx = open_index(corpus or None, index_dir)
        tool = SearchTool(idx, top_k=k)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        for hit in idx.search(query, k):
            typer.echo(json.dumps(hit_dict(hit), ensure_ascii=False))
    else:
        typer.echo(tool(query))


def register(app: typer.Typer) -> None:
    """Add the `tools` command group."""
    app.add_typer(tools_app, name="tools")
