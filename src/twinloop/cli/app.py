"""The ``twinloop`` Typer application, its global options and the state they set.

Command modules register on :data:`app` and reach the settings and the
:class:`~twinloop.runtime.Runtime` through :func:`settings` and :func:`runtime`, which read
the global ``--data-dir`` / ``--config`` given before the command name.
"""

from __future__ import annotations

import getpass
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler

from twinloop.cli.output import err
from twinloop.kernel.config import Settings, load_settings

if TYPE_CHECKING:
    from twinloop.runtime import Runtime

app = typer.Typer(
    name="twinloop",
    help="Keep a deployed LLM current without downtime (Active serves, Shadow learns).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class State:
    """The global options of this invocation."""

    config_path: Path | None = None
    data_dir: Path | None = None
    verbose: bool = False


state = State()


def settings() -> Settings:
    """The effective settings: the global ``--config`` file, environment and ``--data-dir``."""
    return load_settings(state.config_path, data_dir=state.data_dir)


def runtime() -> Runtime:
    """A fresh runtime on the effective settings (models load lazily, on first use)."""
    # Imported here so that commands which need no runtime (validate-config, --help) start fast.
    from twinloop.runtime import Runtime

    return Runtime(settings())


# Libraries whose INFO chatter (progress bars, load reports) would bury a command's output.
_NOISY_LOGGERS = ("transformers", "sentence_transformers", "httpx", "huggingface_hub", "faiss", "faiss.loader")


@app.callback()
def _root(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="State folder (env TWINLOOP_DATA_DIR; default ./twinloop-data)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (env TWINLOOP_CONFIG).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    state.data_dir = data_dir
    state.config_path = config
    state.verbose = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        # Deprecation notices of the libraries are for us, not for an operator at a shell.
        warnings.filterwarnings("ignore", category=FutureWarning)
        # Set before transformers is imported (lazily, by the commands that need it), so a
        # command that needs no model never pays for importing it.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def cli_actor() -> str:
    """The actor of a command run from a shell, as the audit log records it: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli:unknown"
