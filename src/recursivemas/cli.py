"""The `recursivemas` command line. Commands live in `recursivemas.commands`; this file only wires them."""

from __future__ import annotations

import sys

import typer

from recursivemas.commands import register_all
from recursivemas.config import ConfigError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Recursive latent multi-agent LLM systems."
)
register_all(app)


def main() -> None:
    """Entry point: a bad system file or input ends with its message, not a traceback."""
    try:
        app()
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
