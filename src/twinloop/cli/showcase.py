"""Showcase commands: the narrated ``demo``, the benchmark programs (``bench``) and the
continual-learning experiment (``eval``).

They demonstrate and measure the product rather than operate it; each runs on its own
data (a fresh ``demo`` folder, a results folder) and leaves the user's state alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from twinloop.cli.app import app, runtime, settings, state
from twinloop.cli.output import JsonFlag, emit, err, kv_table, out, table


@app.command()
def demo(
    basic: Annotated[bool, typer.Option("--basic", help="Only load the model and answer four built-in questions.")]
    = False,
    json_out: JsonFlag = False,
) -> None:
    """The twin loop end to end (paper §6.3): a new regulation is ingested and cited, experts
    correct, Shadow trains, QA, canary, approval, swap, an injected fault and the automatic
    rollback — narrated with real elapsed times. Runs in a fresh ``demo`` folder of the data
    directory (the model cache is kept)."""
    if basic:
        _basic_demo(json_out)
        return
    from twinloop.showcase.casestudy import DEMO_OVERRIDES, run_case_study

    def narrate(step) -> None:
        if json_out:
            return
        out.print(f"\n[bold cyan]{step.at:7.1f}s  {step.n}. {step.title}[/bold cyan]  "
                  f"[dim]({step.seconds:.1f} s)[/dim]")
        for line in step.lines:
            out.print(f"           {line}", highlight=False, soft_wrap=True)

    if not state.verbose:  # the narration is the output; server and engine logs would drown it
        for name in ("uvicorn", "uvicorn.error", "twinloop", "twinloop.api", "twinloop.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not json_out:
        out.print("[bold]TwinLoop: the urgent-update case study (paper §6.3) on the real model[/bold]")
        out.print("[dim]Demo-scale settings (135M model on CPU; paper defaults stay for deployments): "
                  + "; ".join(f"{k}: {v}" for k, v in DEMO_OVERRIDES.items()) + "[/dim]", highlight=False)
    report = run_case_study(settings(), on_step=narrate)
    emit(report.to_dict(), json_out, lambda _doc: _print_case_study(report))


def _print_case_study(report) -> None:
    t = table(f"Timeline ({report.total_seconds:.0f} s in all)", ("#", "at s", "step", "took s"))
    for st in report.steps:
        t.add_row(str(st.n), f"{st.at:.1f}", st.title, f"{st.seconds:.1f}")
    out.print(t)
    s = report.summary
    out.print(kv_table("Summary", {
        "ingest → answer from the new index": f"{s['ingest_to_answer_s']} s; cites the new article: "
                                              f"{s['answer_after_ingest']['cites_new_article']}, right: "
                                              f"{s['answer_after_ingest']['correct']}",
        "feedback": f"{s['feedback']['accepted']} accepted, {s['feedback']['quarantined']} quarantined",
        "Shadow training": f"{s.get('training_s')} s",
        "QA (candidate / Active pass rate)": f"{s['qa']['candidate_pass_rate']:.2f} / "
                                            f"{(s['qa']['active_pass_rate'] or 0):.2f}, passed={s['qa']['passed']}",
        "canary": f"{s['canary']['status']} after {s['canary']['requests']} requests",
        "swap (commit + pointer move)": f"{s['swap_ms']} ms",
        "probes right after swap": s["probes_after_swap"],
        "automatic rollback": f"{s['automatic_rollback']} after {s['rollback_after_failed_requests']} failed requests",
        "audit log": f"{s['audit_events']} events, chain {'intact' if s['audit_log_intact'] else 'BROKEN'}",
    }))


def _basic_demo(json_out: bool) -> None:
    from twinloop.showcase.demo import run_basic_demo

    report = run_basic_demo(runtime())

    def render(_doc) -> None:
        src = "verified cache" if report.loaded_from_cache else "GGUF (cache written)"
        out.print(f"[bold]{report.model}[/bold] loaded in {report.load_seconds:.2f}s from {src}")
        t = table("Built-in questions", ("question", "answer", "ok", "seconds"))
        for a in report.answers:
            t.add_row(a.question, a.answer, "[green]✓[/green]" if a.correct else "[red]✗[/red]", f"{a.seconds:.2f}")
        out.print(t)
        out.print(f"{report.correct}/{len(report.answers)} answers contain the expected fact.")

    emit(report.to_dict(), json_out, render)


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: a smoke run (10-15 min on 2 CPU cores).")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only this benchmark (repeatable).")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", help="Results folder (default bench-results, or bench-results/quick)."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run the benchmark programs one by one; write summary.json and summary.md of their figures.

    Exits with 1 when any program failed (the others still ran and are in the summary).
    """
    from twinloop.showcase.bench import format_value, run_benchmarks

    summary = run_benchmarks(only or (), quick=quick, out_dir=out_dir, progress=err.print)

    def render(_doc) -> None:
        t = table(f"Benchmarks ({summary.mode}, {summary.seconds:.0f} s)", ("benchmark", "figure", "value"),
                  overflow="fold")
        for r in summary.benchmarks:
            if r.status != "ok":
                t.add_row(r.name, f"[red]{r.status}[/red]", r.error or "")
            for i, (k, v) in enumerate(r.headlines.items()):
                t.add_row(r.name if i == 0 else "", k, format_value(v))
            t.add_section()
        out.print(t)
        out.print(f"wrote {summary.files['json']} and {summary.files['markdown']}")

    emit(summary.to_json(), json_out, render)
    if any(r.status == "failed" for r in summary.benchmarks):
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="Quick: CI sanity run (~4 min). Full: all methods, the report.")
    ] = True,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Results folder (default bench-results/eval-quick, or docs/eval for --full)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per update.")] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods, e.g. Static,NaiveAdapters,TwinLoop.")
    ] = None,
    edits: Annotated[int | None, typer.Option(
        "--edits", help="Instead: N sequential corrections of made-up facts (correction memory), probed for "
                        "reliability, generalisation and locality at T=1, 10, 100 and N.")] = None,
    seeds: Annotated[str, typer.Option(help="With --edits: comma-separated seeds (the order of the edits).")] = "0,1,2",
    modes: Annotated[str, typer.Option(
        help="With --edits: memory (correction memory) and/or adapters (consolidated into adapters, "
             "memory off), comma-separated.")] = "memory",
    concurrency: Annotated[int, typer.Option(
        help="With --edits: probes in flight at once (the engine batches them); 1 asks one at a time.")] = 8,
    json_out: JsonFlag = False,
) -> None:
    """Continual-learning experiment: domains in sequence, Static vs adapters vs TwinLoop
    vs ablations vs full fine-tune; accuracy matrix, ACC, forgetting, BWT, cost, availability.
    With --edits N: the sequential-corrections evaluation instead (on a scratch copy of the data
    directory).

    Writes results.json (and, with --full, report.md with PNG plots) to the results folder;
    --edits writes edits.json and edits.md (default docs/eval).
    """
    if edits is not None:
        _eval_edits(edits, seeds, modes, out_dir or Path("docs/eval"), json_out, concurrency)
        return
    from twinloop.showcase.experiments.continual import full_config, quick_config, run

    overrides: dict[str, Any] = {}
    if seed is not None:
        overrides["seed"] = seed
    if steps is not None:
        overrides["steps"] = steps
    if methods:
        overrides["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
    config = quick_config(**overrides) if quick else full_config(**overrides)
    target = out_dir or Path("bench-results/eval-quick" if quick else "docs/eval")
    doc = run(config, target, settings=settings(), progress=lambda line: err.print(line, highlight=False))

    def render(_summary) -> Any:
        t = table(f"Continual learning ({config.mode}, {doc['seconds']:.0f} s) → {target}",
                  ("method", "ACC", "forgetting", "BWT", "learned", "availability", "train CPU-s", "p50/p95 ms",
                   "ingest→cited s"))
        for name, m in doc["methods"].items():
            lat = m["latency_eval_ms"]
            cited = m["ingest_to_cited_s"]["median"]
            t.add_row(name, f"{m['acc']:.2f}", f"{m['forgetting']:.2f}", f"{m['bwt']:+.2f}",
                      f"{m['learning_accuracy']:.2f}", f"{m['availability']:.3f}", f"{m['train_cpu_s_total']:.0f}",
                      f"{lat['p50'] or 0:.0f}/{lat['p95'] or 0:.0f}", "-" if cited is None else f"{cited:.1f}")
        return t

    # Each method's per-step records stay in results.json; the JSON here is the summary.
    summary = ({k: v for k, v in doc.items() if k != "methods"}
               | {"methods": {n: {k: v for k, v in m.items() if k != "steps"} for n, m in doc["methods"].items()}})
    emit(summary, json_out, render)


def _eval_edits(n: int, seeds: str, modes: str, target: Path, json_out: bool, concurrency: int = 8) -> None:
    from twinloop.kernel.errors import InvalidInputError
    from twinloop.showcase.experiments.edits import EditsConfig, run

    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise InvalidInputError(f"--seeds {seeds!r}: must be comma-separated integers") from None
    if not seed_list:
        raise InvalidInputError("--seeds: give at least one seed")
    s = settings()
    try:
        mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
        doc = run(s, EditsConfig(n=n, seeds=seed_list, modes=mode_list, concurrency=concurrency), target,
                  log=lambda line: err.print(line, highlight=False))
    except ValueError as e:
        raise InvalidInputError(str(e)) from None

    def render(_doc) -> Any:
        t = table(f"Sequential corrections ({modes}, {n} edits, {len(seed_list)} seeds, {doc['seconds']:.0f} s) "
                  f"→ {target}", ("track", "T", "reliability", "generalisation", "locality"))
        for track, rows in (("memory", doc["summary"]), ("adapters", doc["adapters"])):
            for row in rows:
                t.add_row(track, str(row["T"]), *(f"{row[k]['mean']:.3f}" for k in ("reliability", "generalisation",
                                                                                     "locality")))
        return t

    emit({k: v for k, v in doc.items() if k != "per_seed"}, json_out, render)
