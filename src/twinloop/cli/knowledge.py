"""Knowledge commands: fill and query the per-domain indexes, and manage the domains.

``seed``, ``ingest`` and ``remove`` each write a new index revision (documents are never
edited in place, docs/DESIGN.md "Core concepts"); ``search`` and ``route`` show what a question
would retrieve and where it would go; ``domains`` and ``domain-add`` list and add domains.
Every change is written to the audit log with the CLI user as actor.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from twinloop.cli.app import app, cli_actor, runtime
from twinloop.cli.output import JsonFlag, emit, err, out, table


@app.command()
def seed(
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Only these packs.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Load the default packs' seed corpora (real public data, see NOTICE) into the indexes."""
    from twinloop.knowledge.seed import seed_packs
    from twinloop.serving.service import audit_ingest

    rt = runtime()
    with err.status("embedding seed corpora (first run only; later runs skip what is stored)…"):
        report = seed_packs(rt.knowledge, rt.domains, domain or None)
    for r in report.reports:
        audit_ingest(rt, r, actor=cli_actor(), via="seed")
    _emit_ingest(report.reports, json_out)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A JSONL file, a Markdown/text folder or file, or a known data file.")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to add the documents to.")],
    note: Annotated[str | None, typer.Option(help="Why (recorded with the revision).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Add documents to a domain as a new index revision; duplicates are skipped."""
    from twinloop.knowledge.sources import detect_and_load
    from twinloop.serving.service import audit_ingest

    rt = runtime()
    rt.domains.get(domain)  # fail on an unknown domain before reading anything
    docs = detect_and_load(path)
    report = rt.knowledge.ingest(domain, docs, note=note or f"ingest {path}")
    audit_ingest(rt, report, actor=cli_actor(), via=f"cli ({path.name})")
    _emit_ingest([report], json_out)


def _emit_ingest(reports, json_out: bool) -> None:
    def render(_doc):
        t = table("Ingested", ("domain", "revision", "added", "duplicates skipped", "chunks", "seconds"))
        for r in reports:
            t.add_row(r.domain, str(r.revision or "-"), str(r.added), str(r.skipped_duplicates), str(r.chunks),
                      f"{r.seconds:.1f}")
        return t

    emit([asdict(r) for r in reports], json_out, render)


@app.command()
def remove(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain holding the documents.")],
    uri: Annotated[list[str] | None, typer.Option(help="Document uri (repeatable).")] = None,
    doc_id: Annotated[list[int] | None, typer.Option("--id", help="Document id (repeatable).")] = None,
    erase: Annotated[
        bool, typer.Option(help="Also wipe the text from every revision (right to be forgotten).")
    ] = False,
    note: Annotated[str | None, typer.Option(help="Why (recorded with the revision).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Remove documents as a new revision (older pinned views keep them unless --erase)."""

    rt = runtime()
    rep = rt.knowledge.remove(domain, uris=uri or (), doc_ids=doc_id or (), erase=erase, note=note)
    if rep.removed:
        rt.events.append("knowledge.removed", actor=cli_actor(), subject=domain, reason=note or "",
                         data={"revision": rep.revision, "removed": rep.removed, "erased": erase})
    emit(asdict(rep), json_out,
         f"removed {rep.removed} document(s) from {domain}"
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
    rt = runtime()
    result = rt.retriever.view(revision).search(query, domain or None, k=k, as_of=as_of,
                                                jurisdiction=jurisdiction, mode=mode)  # type: ignore[arg-type]

    def render(_doc) -> None:
        if not rt.knowledge.stats():
            err.print("[yellow]the index is empty: run `twinloop seed` or `twinloop ingest`[/yellow]")
        t = table(f"{query!r} · revision {result.revision} · as of {result.as_of}",
                  ("#", "citation", "domain", "passage", "dense", "bm25", "fused"), overflow="fold")
        for i, h in enumerate(result.hits, 1):
            passage = h.text if len(h.text) < 220 else h.text[:217] + "…"
            t.add_row(str(i), h.label, h.domain, passage, _fmt(h.dense), _fmt(h.bm25), f"{h.score:.4f}")
        out.print(t)
        if not result.hits:
            out.print("no passage passed the relevance floor τ")
        err.print(f"[dim]{result.timings_ms.get('total', 0):.1f} ms[/dim]")

    emit(result.to_dict(), json_out, render)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@app.command()
def route(
    query: Annotated[str, typer.Argument(help="The question.")],
    json_out: JsonFlag = False,
) -> None:
    """Show which domains a question goes to, with every domain's score."""
    decision = runtime().router.route(query)

    def render(_doc) -> None:
        t = table(f"{query!r} → {', '.join(decision.domains)}" + (" (fallback)" if decision.fallback else ""),
                  ("domain", "score", "active"))
        for name, score in sorted(decision.scores.items(), key=lambda x: -x[1]):
            t.add_row(name, f"{score:.3f}", "✓" if name in decision.domains else "")
        out.print(t)
        for m in decision.rules:
            out.print(f"rule {m.pattern!r} (priority {m.priority}) → {m.domain}")

    emit(decision.to_dict(), json_out, render)


@app.command()
def domains(json_out: JsonFlag = False) -> None:
    """List domains, their policy and what their index holds."""
    rt = runtime()
    specs = rt.domains.all()
    stats = rt.knowledge.stats()
    rows = [{"name": s.name, "citations_required": s.citations_required, "approval_required": s.approval_required,
             "examples": len(s.examples), "rules": len(s.rules), **stats.get(s.name, {})} for s in specs.values()]

    def render(rows: list[dict]):
        t = table("Domains", ("name", "citations", "approval", "examples", "rules", "documents", "chunks"))
        for r in rows:
            t.add_row(r["name"], str(r["citations_required"]), str(r["approval_required"]), str(r["examples"]),
                      str(r["rules"]), str(r.get("documents", 0)), str(r.get("chunks", 0)))
        return t

    emit(rows, json_out, render)


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
    rt = runtime()
    added = rt.domains.add(data)
    # A domain's policy (citations, approval) and router prototype are configuration, so
    # adding one is audited like any other change of behaviour.
    rt.events.append("domain.added", actor=cli_actor(), subject=added.name, reason=f"from {spec.name}",
                     data={"citations_required": added.citations_required,
                           "approval_required": added.approval_required})
    emit(added.model_dump(mode="json"), json_out, f"domain {added.name!r} added")
