"""Commands about the base model and the settings: ``validate-config``, ``ask`` and ``info``.

They need no index and no release: a quick way to check a settings file, that the model
loads, and how long loading and generating take on this machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from twinloop.cli.app import app, runtime, state
from twinloop.cli.output import JsonFlag, emit, err, kv_table, out
from twinloop.kernel.config import load_settings


@app.command("validate-config")
def validate_config(
    path: Annotated[Path, typer.Argument(help="YAML settings file to check.")],
    json_out: JsonFlag = False,
) -> None:
    """Check a settings file; print the effective settings or one line naming the bad field."""
    settings = load_settings(path, data_dir=state.data_dir)
    emit({"valid": True, "path": str(path), "settings": settings.model_dump(mode="json")}, json_out,
         f"[green]valid[/green]: {path}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question for the base model.")],
    max_tokens: Annotated[int | None, typer.Option(help="Completion token limit.")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Answer a question with the base model; print the answer and load/generation timings."""
    rt = runtime()
    start = time.perf_counter()
    foundation = rt.foundation
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

    def render(doc: dict) -> None:
        out.print(gen.text)
        # Timings go to stderr so that stdout is the answer alone, ready to pipe.
        cache = "cache" if foundation.info.from_cache else "GGUF, cache written"
        if foundation.info.source != "gguf":
            cache = foundation.info.source
        err.print(
            f"[dim]{foundation.name} · load {load_s:.2f}s ({cache}) · generate {gen.seconds:.2f}s · "
            f"{gen.completion_tokens} tokens ({doc['tokens_per_second']} tok/s)[/dim]"
        )

    emit(result, json_out, render)


@app.command()
def info(json_out: JsonFlag = False) -> None:
    """Print the model, parameter count, dtype, threads and data directory."""
    desc = runtime().describe()
    emit(desc, json_out, lambda d: kv_table("TwinLoop", {**d, "parameters": f"{d['parameters']:,}"}))
