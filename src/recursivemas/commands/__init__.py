"""CLI commands, one module per area. Each module exposes ``register(app)``."""

from __future__ import annotations

import importlib

import typer

# Modules are registered in this order; each owns its own commands.
_MODULES = ("run", "demo", "report", "eval", "train", "zoo", "tools", "serve")


def register_all(app: typer.Typer) -> None:
    for name in _MODULES:
        module = importlib.import_module(f"recursivemas.commands.{name}")
        module.register(app)
