"""The `recursivemas` command line. Commands live next to what they drive; this file only wires them."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Recursive latent multi-agent LLM systems.")


def _register_all() -> None:
    from recursivemas.commands import register_all

    register_all(app)


_register_all()
