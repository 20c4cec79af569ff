"""What every command prints with: the stdout and stderr consoles, the ``--json`` flag, and
the one "JSON for scripts or a human rendering" switch.

Stdout carries the result (one JSON document with ``--json``); stderr carries progress,
timings and errors, so a script can pipe stdout into a JSON parser whatever else happens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.table import Table

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]

#: A human rendering: something rich can print (a table, a markup string), or a function of
#: the document that prints by itself or returns something to print.
Render = RenderableType | Callable[[Any], RenderableType | None] | None


def emit(doc: Any, json_out: bool, render: Render = None) -> None:
    """Print ``doc`` as one JSON document when ``json_out``, else its human rendering.

    A callable ``render`` is called only without ``--json``, so formatting that assumes a
    human reader (truncation, rounding, extra lines on stderr) never runs for a script.
    """
    if json_out:
        out.print_json(json.dumps(doc, default=str))
        return
    shown = render(doc) if callable(render) else render
    if shown is not None:
        out.print(shown)


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    """A two-column key/value table with the keys in bold."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows.items():
        t.add_row(k, str(v))
    return t


def table(title: str, columns: tuple[str, ...], *, overflow: str | None = None) -> Table:
    """A left-titled table with these column headers (``overflow="fold"`` wraps long cells)."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        if overflow:
            t.add_column(col, overflow=overflow)  # type: ignore[arg-type]
        else:
            t.add_column(col)
    return t
