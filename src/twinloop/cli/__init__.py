"""The ``twinloop`` command: a dispatch table onto library functions.

Each command parses flags, calls the library, and prints a rich table or, with ``--json``,
one JSON document on stdout. A user error prints one line on stderr and exits with 2;
no traceback reaches the user.

The Typer app and the global options live in :mod:`twinloop.cli.app`, the consoles and the
JSON-or-table switch in :mod:`twinloop.cli.output`; each command group is a module of its
own that imports only those two.
"""

from __future__ import annotations

import sys

from twinloop.cli import app as _app
from twinloop.cli.output import err
from twinloop.kernel.errors import TwinLoopError

# Importing a group registers its commands; the order here is the order of ``--help``
# (Typer lists the ``canary`` sub-app after all plain commands).
from twinloop.cli import model, knowledge, learning, serving, showcase, release  # noqa: F401  isort: skip


def main() -> None:
    """Console-script entry: run the app, turning user errors into one line and exit 2."""
    try:
        _app.app()
    except TwinLoopError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
