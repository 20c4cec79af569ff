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

from twinloop.kernel.config import Settings, load_settings
from twinloop.kernel.errors import TwinLoopError

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
    verbose: bool = False


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
    _state.verbose = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    # Library chatter (progress bars, load reports) goes away unless asked for.
    for noisy in ("transformers", "sentence_transformers", "httpx", "huggingface_hub", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        # Set before transformers is imported (lazily, by the commands that need it), so a
        # command that needs no model never pays for importing it.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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
        out.print(f"\n[bold cyan]{step.at:7.1f}s  {step.n}. {step.title}[/bold cyan]  [dim]({step.seconds:.1f} s)[/dim]")
        for line in step.lines:
            out.print(f"           {line}", highlight=False, soft_wrap=True)

    if not _state.verbose:  # the narration is the output; server and engine logs would drown it
        for name in ("uvicorn", "uvicorn.error", "twinloop", "twinloop.api", "twinloop.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not json_out:
        out.print("[bold]TwinLoop: the urgent-update case study (paper §6.3) on the real model[/bold]")
        out.print("[dim]Demo-scale settings (135M model on CPU; paper defaults stay for deployments): "
                  + "; ".join(f"{k}: {v}" for k, v in DEMO_OVERRIDES.items()) + "[/dim]", highlight=False)
    report = run_case_study(_settings(), on_step=narrate)
    if json_out:
        _emit_json(report.to_dict())
        return
    table = Table(title=f"Timeline ({report.total_seconds:.0f} s in all)", title_justify="left")
    for col in ("#", "at s", "step", "took s"):
        table.add_column(col)
    for st in report.steps:
        table.add_row(str(st.n), f"{st.at:.1f}", st.title, f"{st.seconds:.1f}")
    out.print(table)
    s = report.summary
    out.print(_kv_table("Summary", {
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


# -- knowledge (issue 3) ----------------------------------------------------------------------


@app.command()
def seed(
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Only these packs.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Load the default packs' seed corpora (real public data, see NOTICE) into the indexes."""
    from twinloop.knowledge.seed import seed_packs
    from twinloop.serving.control import cli_actor
    from twinloop.serving.service import audit_ingest

    rt = _runtime()
    with err.status("embedding seed corpora (first run only; later runs skip what is stored)…"):
        report = seed_packs(rt.knowledge, rt.domains, domain or None)
    for r in report.reports:
        audit_ingest(rt, r, actor=cli_actor(), via="seed")
    _print_ingest(report.reports, json_out)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A JSONL file, a Markdown/text folder or file, or a known data file.")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to add the documents to.")],
    note: Annotated[str | None, typer.Option(help="Why (recorded with the revision).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Add documents to a domain as a new index revision; duplicates are skipped."""
    from twinloop.knowledge.sources import detect_and_load

    rt = _runtime()
    rt.domains.get(domain)  # fail on an unknown domain before reading anything
    docs = detect_and_load(path)
    report = rt.knowledge.ingest(domain, docs, note=note or f"ingest {path}")
    from twinloop.serving.control import cli_actor
    from twinloop.serving.service import audit_ingest

    audit_ingest(rt, report, actor=cli_actor(), via=f"cli ({path.name})")
    _print_ingest([report], json_out)


def _print_ingest(reports, json_out: bool) -> None:
    from dataclasses import asdict

    if json_out:
        _emit_json([asdict(r) for r in reports])
        return
    table = Table(title="Ingested", title_justify="left")
    for col in ("domain", "revision", "added", "duplicates skipped", "chunks", "seconds"):
        table.add_column(col)
    for r in reports:
        table.add_row(r.domain, str(r.revision or "-"), str(r.added), str(r.skipped_duplicates), str(r.chunks),
                      f"{r.seconds:.1f}")
    out.print(table)


@app.command()
def remove(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain holding the documents.")],
    uri: Annotated[list[str] | None, typer.Option(help="Document uri (repeatable).")] = None,
    doc_id: Annotated[list[int] | None, typer.Option("--id", help="Document id (repeatable).")] = None,
    erase: Annotated[bool, typer.Option(help="Also wipe the text from every revision (right to be forgotten).")] = False,
    note: Annotated[str | None, typer.Option(help="Why (recorded with the revision).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Remove documents as a new revision (older pinned views keep them unless --erase)."""
    from dataclasses import asdict

    from twinloop.serving.control import cli_actor

    rt = _runtime()
    rep = rt.knowledge.remove(domain, uris=uri or (), doc_ids=doc_id or (), erase=erase, note=note)
    if rep.removed:
        rt.events.append("knowledge.removed", actor=cli_actor(), subject=domain, reason=note or "",
                         data={"revision": rep.revision, "removed": rep.removed, "erased": erase})
    if json_out:
        _emit_json(asdict(rep))
    else:
        out.print(f"removed {rep.removed} document(s) from {domain}"
                  + (f" in revision {rep.revision}" if rep.revision else "") + (" (erased)" if erase else ""))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question.")],
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Domain(s); default all.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Law in force on this date (YYYY-MM-DD).")] = None,
    jurisdiction: Annotated[str | None, typer.Option(help="Only this jurisdiction, e.g. DE.")] = None,
    k: Annotated[int | None, typer.Option("-k", help="Passages to return.")] = None,
    mode: Annotated[str, typer.Option(help="hybrid, bm25 or dense.")] = "hybrid",
    revision: Annotated[int | None, typer.Option(help="Index revision to search (default newest).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Hybrid search with citations, optionally as of a date."""
    rt = _runtime()
    result = rt.retriever.view(revision).search(query, domain or None, k=k, as_of=as_of,
                                                jurisdiction=jurisdiction, mode=mode)  # type: ignore[arg-type]
    if json_out:
        _emit_json(result.to_dict())
        return
    if not rt.knowledge.stats():
        err.print("[yellow]the index is empty: run `twinloop seed` or `twinloop ingest`[/yellow]")
    table = Table(title=f"{query!r} · revision {result.revision} · as of {result.as_of}", title_justify="left")
    for col in ("#", "citation", "domain", "passage", "dense", "bm25", "fused"):
        table.add_column(col, overflow="fold")
    for i, h in enumerate(result.hits, 1):
        passage = h.text if len(h.text) < 220 else h.text[:217] + "…"
        table.add_row(str(i), h.label, h.domain, passage, _fmt(h.dense), _fmt(h.bm25), f"{h.score:.4f}")
    out.print(table)
    if not result.hits:
        out.print("no passage passed the relevance floor τ")
    err.print(f"[dim]{result.timings_ms.get('total', 0):.1f} ms[/dim]")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@app.command()
def route(
    query: Annotated[str, typer.Argument(help="The question.")],
    json_out: JsonFlag = False,
) -> None:
    """Show which domains a question goes to, with every domain's score."""
    decision = _runtime().router.route(query)
    if json_out:
        _emit_json(decision.to_dict())
        return
    table = Table(title=f"{query!r} → {', '.join(decision.domains)}" + (" (fallback)" if decision.fallback else ""),
                  title_justify="left")
    table.add_column("domain")
    table.add_column("score")
    table.add_column("active")
    for name, score in sorted(decision.scores.items(), key=lambda x: -x[1]):
        table.add_row(name, f"{score:.3f}", "✓" if name in decision.domains else "")
    out.print(table)
    for m in decision.rules:
        out.print(f"rule {m.pattern!r} (priority {m.priority}) → {m.domain}")


@app.command()
def domains(json_out: JsonFlag = False) -> None:
    """List domains, their policy and what their index holds."""
    rt = _runtime()
    specs = rt.domains.all()
    stats = rt.knowledge.stats()
    rows = [{"name": s.name, "citations_required": s.citations_required, "approval_required": s.approval_required,
             "examples": len(s.examples), "rules": len(s.rules), **stats.get(s.name, {})} for s in specs.values()]
    if json_out:
        _emit_json(rows)
        return
    table = Table(title="Domains", title_justify="left")
    for col in ("name", "citations", "approval", "examples", "rules", "documents", "chunks"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["citations_required"]), str(r["approval_required"]), str(r["examples"]),
                      str(r["rules"]), str(r.get("documents", 0)), str(r.get("chunks", 0)))
    out.print(table)


@app.command()
def quarantine(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Only this domain.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show, newest first.")] = 50,
    json_out: JsonFlag = False,
) -> None:
    """List feedback the filters rejected (stage, reason; text shown redacted)."""
    from twinloop.learning.quarantine import list_quarantine

    rows = list_quarantine(_runtime().db, domain, limit)
    if json_out:
        _emit_json(rows)
        return
    table = Table(title=f"Quarantine ({len(rows)} shown)", title_justify="left")
    for col in ("id", "time", "domain", "stage", "reason", "prompt"):
        table.add_column(col, overflow="fold")
    for r in rows:
        prompt = (r.get("prompt") or "")[:80]
        table.add_row(str(r["id"]), str(r["created_at"]), str(r["domain"]), r["stage"], r["reason"], prompt)
    out.print(table)


@app.command()
def train(
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Only these domains (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per domain (default training.steps).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default training.learning_rate).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default training.seed).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Train Shadow on the new samples in a worker process; print the candidate release."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from twinloop.learning.jobs import TrainJobs
    from twinloop.learning.worker import start_training_job

    rt = _runtime()
    jid = start_training_job(rt, domain or None, steps, lr, seed)
    jobs = TrainJobs(rt.db)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=err,
                  disable=json_out) as bar:
        task = bar.add_task(f"{jid} starting", total=None, loss="-")
        while True:
            job = jobs.get(jid)
            p = job["progress"]
            if p:
                bar.update(task, description=f"{p['domain']} ({p['domain_index'] + 1}/{p['domains_total']})",
                           completed=p["step"], total=p["total"], loss=f"{p['loss']:.4f}")
            if job["status"] not in ("queued", "running"):
                break
            if jobs.reap_stale():
                job = jobs.get(jid)
                break
            time.sleep(0.2)
    if job["status"] != "succeeded":
        raise TwinLoopError(f"training job {jid} {job['status']}: {job['error']}")
    result = {"job_id": jid, "status": job["status"], **job["result"]}
    if json_out:
        _emit_json(result)
        return
    table = Table(title=f"candidate {result['release_id']} (shadow)", title_justify="left")
    for col in ("domain", "samples", "steps", "final loss", "seconds", "adapter"):
        table.add_column(col)
    for name, d in result["domains"].items():
        table.add_row(name, str(d["samples"]), str(d["steps"]), f"{d['final_loss']:.4f}", f"{d['seconds']:.1f}",
                      d["adapter"][:12])
    out.print(table)
    out.print(f"parent {result['parent'] or '-'} · index revision {result['index_revision']} · "
              f"{result['seconds']:.1f} s; Active unchanged")


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(help="Jobs to show, newest first.")] = 20,
    json_out: JsonFlag = False,
) -> None:
    """List Shadow training jobs (stale ones whose worker died are marked failed first)."""
    from twinloop.learning.jobs import TrainJobs

    store = TrainJobs(_runtime().db)
    store.reap_stale()
    rows = store.list(limit)
    for r in rows:
        r["params"].pop("settings", None)
    if json_out:
        _emit_json(rows)
        return
    table = Table(title=f"Training jobs ({len(rows)} shown)", title_justify="left")
    for col in ("id", "created", "status", "domains", "progress", "release / error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        p = r["progress"]
        prog = f"{p['domain']} {p['step']}/{p['total']}" if p else "-"
        tail = (r["result"] or {}).get("release_id") or r["error"] or ""
        table.add_row(r["id"], r["created_at"], r["status"], ", ".join(r["domains"]) or "all", prog, tail)
    out.print(table)


@app.command("domain-add")
def domain_add(
    spec: Annotated[Path, typer.Argument(help="YAML file: name, description, examples, rules, policy.")],
    json_out: JsonFlag = False,
) -> None:
    """Add (or replace) a user domain; it routes and accepts documents at once."""
    import yaml

    from twinloop.kernel.errors import InvalidInputError

    try:
        data = yaml.safe_load(spec.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InvalidInputError(f"cannot read domain spec {spec}: {e}") from e
    from twinloop.serving.control import cli_actor

    rt = _runtime()
    added = rt.domains.add(data)
    # A domain's policy (citations, approval) and router prototype are configuration.
    rt.events.append("domain.added", actor=cli_actor(), subject=added.name, reason=f"from {spec.name}",
                     data={"citations_required": added.citations_required,
                           "approval_required": added.approval_required})
    if json_out:
        _emit_json(added.model_dump(mode="json"))
    else:
        out.print(f"domain {added.name!r} added")


# -- serving (issue 4) ------------------------------------------------------------------------


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

    run_server(config or _state.config_path, _state.data_dir, host=host, port=port)


# -- benchmarks (issue 7) ---------------------------------------------------------------------


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
    if json_out:
        _emit_json(summary.to_json())
    else:
        table = Table(title=f"Benchmarks ({summary.mode}, {summary.seconds:.0f} s)", title_justify="left")
        for col in ("benchmark", "figure", "value"):
            table.add_column(col, overflow="fold")
        for r in summary.benchmarks:
            if r.status != "ok":
                table.add_row(r.name, f"[red]{r.status}[/red]", r.error or "")
            for i, (k, v) in enumerate(r.headlines.items()):
                table.add_row(r.name if i == 0 else "", k, format_value(v))
            table.add_section()
        out.print(table)
        out.print(f"wrote {summary.files['json']} and {summary.files['markdown']}")
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
    json_out: JsonFlag = False,
) -> None:
    """Continual-learning experiment (issue 7): domains in sequence, Static vs adapters vs TwinLoop
    vs ablations vs full fine-tune; accuracy matrix, ACC, forgetting, BWT, cost, availability.

    Writes results.json (and, with --full, report.md with PNG plots) to the results folder.
    """
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
    doc = run(config, target, settings=_settings(), progress=lambda line: err.print(line, highlight=False))
    if json_out:
        _emit_json({k: v for k, v in doc.items() if k != "methods"}
                   | {"methods": {n: {k: v for k, v in m.items() if k != "steps"} for n, m in doc["methods"].items()}})
        return
    table = Table(title=f"Continual learning ({config.mode}, {doc['seconds']:.0f} s) → {target}", title_justify="left")
    for col in ("method", "ACC", "forgetting", "BWT", "learned", "availability", "train CPU-s", "p50/p95 ms",
                "ingest→cited s"):
        table.add_column(col)
    for name, m in doc["methods"].items():
        lat = m["latency_eval_ms"]
        cited = m["ingest_to_cited_s"]["median"]
        table.add_row(name, f"{m['acc']:.2f}", f"{m['forgetting']:.2f}", f"{m['bwt']:+.2f}",
                      f"{m['learning_accuracy']:.2f}", f"{m['availability']:.3f}", f"{m['train_cpu_s_total']:.0f}",
                      f"{lat['p50'] or 0:.0f}/{lat['p95'] or 0:.0f}", "-" if cited is None else f"{cited:.1f}")
    out.print(table)

# The release commands live in their own module (registered on ``app`` when imported).
from twinloop.cli import release  # noqa: E402,F401


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
