"""The ``twinloop`` command: a dispatch table onto library functions (STYLE.md §2).

Each command parses flags, calls the library, and prints a rich table or, with ``--json``,
one JSON document on stdout. A user error prints one line on stderr and exits with 2;
no traceback reaches the user.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from twinloop.config import Settings, load_settings
from twinloop.errors import TwinLoopError

app = typer.Typer(
    name="twinloop",
    help="Keep a deployed LLM current without downtime (Active serves, Shadow learns).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


class _State:
    config_path: Path | None = None
    data_dir: Path | None = None


_state = _State()


def _settings() -> Settings:
    return load_settings(_state.config_path, data_dir=_state.data_dir)


def _runtime():
    from twinloop.runtime import Runtime

    return Runtime(_settings())


def _emit_json(obj: Any) -> None:
    out.print_json(json.dumps(obj, default=str))


def _kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(k, str(v))
    return table


@app.callback()
def _main(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="State folder (env TWINLOOP_DATA_DIR; default ./twinloop-data)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (env TWINLOOP_CONFIG).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _state.data_dir = data_dir
    _state.config_path = config
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    # Library chatter (progress bars, load reports) goes away unless asked for.
    for noisy in ("transformers", "sentence_transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        # Set before transformers is imported (lazily, by the commands that need it), so a
        # command that needs no model never pays for importing it.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@app.command("validate-config")
def validate_config(
    path: Annotated[Path, typer.Argument(help="YAML settings file to check.")],
    json_out: JsonFlag = False,
) -> None:
    """Check a settings file; print the effective settings or one line naming the bad field."""
    settings = load_settings(path, data_dir=_state.data_dir)
    if json_out:
        _emit_json({"valid": True, "path": str(path), "settings": settings.model_dump(mode="json")})
    else:
        out.print(f"[green]valid[/green]: {path}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question for the base model.")],
    max_tokens: Annotated[int | None, typer.Option(help="Completion token limit.")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Answer a question with the base model; print the answer and load/generation timings."""
    runtime = _runtime()
    start = time.perf_counter()
    foundation = runtime.foundation
    load_s = time.perf_counter() - start
    gen = foundation.chat(question, max_new_tokens=max_tokens, temperature=temperature, seed=seed)
    result = {
        "question": question,
        "answer": gen.text,
        "model": foundation.name,
        "load_seconds": round(load_s, 3),
        "model_load_seconds": round(foundation.info.seconds, 3),
        "loaded_from_cache": foundation.info.from_cache,
        "generate_seconds": round(gen.seconds, 3),
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "tokens_per_second": round(gen.completion_tokens / gen.seconds, 1) if gen.seconds else None,
        "finish_reason": gen.finish_reason,
    }
    if json_out:
        _emit_json(result)
        return
    out.print(gen.text)
    cache = "cache" if foundation.info.from_cache else "GGUF, cache written"
    if foundation.info.source != "gguf":
        cache = foundation.info.source
    err.print(
        f"[dim]{foundation.name} · load {load_s:.2f}s ({cache}) · generate {gen.seconds:.2f}s · "
        f"{gen.completion_tokens} tokens ({result['tokens_per_second']} tok/s)[/dim]"
    )


@app.command()
def info(json_out: JsonFlag = False) -> None:
    """Print the model, parameter count, dtype, threads and data directory."""
    desc = _runtime().describe()
    if json_out:
        _emit_json(desc)
    else:
        out.print(_kv_table("TwinLoop", {**desc, "parameters": f"{desc['parameters']:,}"}))


@app.command()
def demo(json_out: JsonFlag = False) -> None:
    """Load the real base model and answer built-in questions with timings."""
    from twinloop.demo import run_basic_demo

    report = run_basic_demo(_runtime())
    if json_out:
        _emit_json(report.to_dict())
        return
    src = "verified cache" if report.loaded_from_cache else "GGUF (cache written)"
    out.print(f"[bold]{report.model}[/bold] loaded in {report.load_seconds:.2f}s from {src}")
    table = Table(title="Built-in questions", title_justify="left")
    for col in ("question", "answer", "ok", "seconds"):
        table.add_column(col)
    for a in report.answers:
        table.add_row(a.question, a.answer, "[green]✓[/green]" if a.correct else "[red]✗[/red]", f"{a.seconds:.2f}")
    out.print(table)
    out.print(f"{report.correct}/{len(report.answers)} answers contain the expected fact.")


def main() -> None:
    """Console-script entry: run the app, turning user errors into one line and exit 2."""
    try:
        app()
    except TwinLoopError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
