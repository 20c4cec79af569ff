"""The serving (Active loop) command: ``serve`` runs the HTTP API until interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twinloop.cli.app import app, state


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default api.host: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default api.port: 8080).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (overrides the global --config).")
    ] = None,
) -> None:
    """Serve the HTTP API (native and OpenAI-compatible) until interrupted; logs JSON lines.

    A non-loopback --host needs API keys (api.api_keys or api.api_key_hashes).
    """
    from twinloop.api.server import serve as run_server

    # The server loads the settings itself, with --host/--port as overrides, so that a
    # refused bind fails before any model loads; it gets the paths, not a runtime.
    run_server(config or state.config_path, state.data_dir, host=host, port=port)
