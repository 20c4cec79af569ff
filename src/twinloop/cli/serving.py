"""The serving (Active loop) commands: ``serve`` runs the HTTP API until interrupted; ``answer``
answers one question from the Active release."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from twinloop.cli.app import app, runtime, state
from twinloop.cli.output import JsonFlag, emit, err, out


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


@app.command()
def answer(
    question: Annotated[str, typer.Argument(help="The question.")],
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Force this domain instead of routing.")]
    = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO date: the law in force that day.")] = None,
    jurisdiction: Annotated[str | None, typer.Option(help="Only sources of this jurisdiction (EU, DE, …).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Answer length limit.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Answer from the Active release, as ``POST /v1/answer`` does: claims quoted verbatim from
    cited passages, or an honest "cannot verify" / "out of scope"."""
    from twinloop.serving.pipeline import AnswerRequest
    from twinloop.serving.service import Service

    if not state.verbose:  # the answer is the output; the engine's start/stop lines are noise here
        logging.getLogger("twinloop").setLevel(logging.WARNING)
    svc = Service(runtime())
    svc.start()
    try:
        record = svc.answer(AnswerRequest(query=question, domain=domain, as_of=as_of, jurisdiction=jurisdiction,
                                          max_tokens=max_tokens))
    finally:
        svc.stop()
    emit(record.to_dict(), json_out, _render_answer)


def _render_answer(doc: dict) -> None:
    colour = {"answered": "green", "cannot_verify": "yellow", "out_of_scope": "yellow"}[doc["status"]]
    out.print(f"[{colour}]{doc['status']}[/{colour}]  {doc['summary']}", highlight=False)
    for claim in doc["claims"]:
        marks = "".join(f"[{n}]" for n in claim["citations"])
        out.print(f"  {marks} \u201c{claim['text']}\u201d", highlight=False, markup=False)
    for c in doc["citations"]:
        edition = f", edition {c['edition_date']}" if c.get("edition_date") else ""
        out.print(f"  [{c['n']}] {c['label']}{edition} — {c.get('uri') or ''}", highlight=False, markup=False)
    for p in doc["possibly_related"]:
        out.print(f"  possibly related: {p['label']} — {p.get('uri') or ''}", highlight=False, markup=False)
    err.print(f"[dim]release {doc['release_id']} · {doc['mode']} · {doc['timings_ms'].get('total', 0):.0f} ms[/dim]")
