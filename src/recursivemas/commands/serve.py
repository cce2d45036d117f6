"""CLI command `serve`: an OpenAI-compatible HTTP server over one system (docs/serving.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    system: Path = typer.Option(..., "--system", help="System YAML file or a directory saved with save_pretrained."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, "--port"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="The model id clients send (default: the system's name)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Most questions run together (default: the system's batch_size)."),
) -> None:
    """Serve a system with OpenAI-style /v1/chat/completions, /v1/completions and /v1/models."""
    import uvicorn

    from recursivemas import System
    from recursivemas.serve import create_app

    loaded = System.load(system)
    app = create_app(loaded, model_name=model_name, max_batch=max_batch)
    typer.echo(f"serving {app.state.model_name!r} (decoder {loaded.graph.decoder!r}) on http://{host}:{port}/v1", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command()(serve)
