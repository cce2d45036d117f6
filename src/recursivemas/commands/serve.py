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
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="RECURSIVEMAS_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on /v1 routes (default: no key)."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1, help="Largest request body accepted (413 beyond)."),
    max_rounds: int = typer.Option(16, "--max-rounds", min=1, help="Most recursion rounds one request may ask for."),
    max_latent_steps: int = typer.Option(256, "--max-latent-steps", min=0, help="Most latent steps one request may ask for."),
    shutdown_timeout: float = typer.Option(5.0, "--shutdown-timeout", min=0, help="Seconds in-flight requests get after SIGTERM."),
    device: Optional[str] = typer.Option(None, "--device", help="Place every agent here (cpu, cuda, cuda:N, mps), whatever the system file says."),
) -> None:
    """Serve a system with OpenAI-style /v1/chat/completions, /v1/completions and /v1/models."""
    import uvicorn

    from recursivemas import System
    from recursivemas.serve import Limits, create_app

    loaded = System.load(system, device=device)
    limits = Limits(max_body_bytes=max_body_bytes, max_rounds=max_rounds, max_latent_steps=max_latent_steps)
    app = create_app(loaded, model_name=model_name, max_batch=max_batch, api_key=api_key or None, limits=limits)
    auth = "an API key" if api_key else "no API key (pass --api-key or set RECURSIVEMAS_API_KEY to require one)"
    typer.echo(f"serving {app.state.model_name!r} (decoder {loaded.graph.decoder!r}) on http://{host}:{port}/v1 with {auth}", err=True)
    # a bounded graceful shutdown: SIGTERM stops the server even while a long run is in flight
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=shutdown_timeout)


def register(app: typer.Typer) -> None:
    app.command()(serve)
