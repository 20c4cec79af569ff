"""Release commands: QA, canary, swap, rollback, releases, status, approvals, the audit log,
retention and bundles (paper §5.2; docs/DESIGN.md "Releasing").

They act on the data directory's registry directly, each change one transaction with its
audit event; a server running on the same data directory follows the Active pointer and
the canary within ``release.poll_s`` seconds. A server's in-memory state (breaker, rollback
watch, injected faults) is at ``GET /v1/admin/status``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from twinloop.cli.app import app, cli_actor, runtime
from twinloop.cli.output import JsonFlag, emit, err, kv_table, out, table

canary_app = typer.Typer(help="Canary deployment of a candidate (paper §5.2).", no_args_is_help=True)
app.add_typer(canary_app, name="canary")

ReleaseArg = Annotated[str | None, typer.Argument(help="Release id (default: the Shadow candidate).")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (written to the audit log).")]


def _short(rid: str | None) -> str:
    return rid or "-"


@app.command()
def releases(
    release: Annotated[str | None, typer.Argument(help="Show this release in full.")] = None,
    limit: Annotated[int, typer.Option(help="Releases to list, newest first.")] = 20,
    json_out: JsonFlag = False,
) -> None:
    """List releases with their status and gate results, or show one with lineage and reports."""
    reg = runtime().releases
    if release:
        rel = reg.get(release)
        doc = {**rel.to_dict(), "ancestors": [r.id for r in reg.ancestors(release)],
               "children": [r.id for r in reg.children(release)], "approvals": reg.approvals(release),
               "reports": reg.reports(release)}
        emit(doc, json_out, lambda doc: kv_table(f"Release {release}", {
            "status": rel.status, "parent": _short(rel.parent), "created": rel.created_at,
            "adapters": ", ".join(f"{d}={g[:12]}" for d, g in sorted(rel.adapters.items())) or "none (base)",
            "index revision": rel.index_revision, "ancestors": " ← ".join(doc["ancestors"]) or "-",
            "children": ", ".join(doc["children"]) or "-",
            "training samples": {d: len(v) for d, v in reg.training_data(release).items()} or "-",
            "approvals": ", ".join(a["actor"] for a in doc["approvals"]) or "-",
            "reports": "; ".join(f"{r['kind']} {'passed' if r['passed'] else 'FAILED'} {r['created_at']}"
                                 for r in doc["reports"]) or "-"}))
        return
    rows = reg.list(limit)
    active, shadow = reg.pointer("active"), reg.pointer("shadow")

    def render(_doc):
        t = table(f"Releases ({len(rows)} shown)",
                  ("id", "", "status", "parent", "created", "domains", "qa", "canary"), overflow="fold")
        for r in rows:
            mark = "ACTIVE" if r.id == active else ("shadow" if r.id == shadow else "")
            gates = []
            for kind in ("qa", "canary"):
                rep = reg.latest_report(r.id, kind)
                gates.append("-" if rep is None else ("passed" if rep["passed"] else "failed"))
            t.add_row(r.id, mark, r.status, _short(r.parent), r.created_at[:19], ", ".join(sorted(r.adapters)) or "-",
                      *gates)
        return t

    emit({"active": active, "shadow": shadow, "items": [r.to_dict() for r in rows]}, json_out, render)


@app.command()
def status(json_out: JsonFlag = False) -> None:
    """Active, Shadow, rollback target, canary, last moves, the audit log's integrity and the
    registry's consistency (exits 1 if either is broken)."""
    from twinloop.release.canary import CanaryStore
    from twinloop.release.consistency import check_consistency

    rt = runtime()
    reg = rt.releases
    store = CanaryStore(rt.db)
    run = store.current()
    check = rt.events.verify()
    problems = check_consistency(reg, store)
    doc: dict[str, Any] = {
        "active": reg.pointer("active"), "shadow": reg.pointer("shadow"), "previous": reg.previous_active(),
        "canary": run.to_dict() if run else None, "moves": reg.history("active", 5),
        "events": check.events, "audit_log_ok": check.ok, "consistent": not problems, "problems": problems,
    }
    emit(doc, json_out, lambda doc: kv_table("TwinLoop release status", {
        "active": _short(doc["active"]), "shadow": _short(doc["shadow"]), "rollback target": _short(doc["previous"]),
        "canary": f"{run.release_id} ({run.mode}, {run.ratio:.0%}) since {run.started_at}" if run else "none",
        "audit log": f"{check.events} events, chain {'intact' if check.ok else 'BROKEN: ' + check.problems[0]}",
        "last moves": "; ".join(f"{m['at'][:19]} → {m['release_id']} by {m['actor']}" for m in doc["moves"]) or "-",
        "registry": "consistent" if not problems else "INCONSISTENT: " + "; ".join(problems),
    }))
    if problems:
        raise typer.Exit(1)


@app.command()
def qa(
    release: ReleaseArg = None,
    cases: Annotated[Path | None, typer.Option(help="JSONL file of QA cases (default: each pack's held-out cases).")]
    = None,
    max_tokens: Annotated[int | None, typer.Option(help="Answer length per case.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """QA dry-run of a candidate against Active on an isolated copy; stores the report with
    the release. Exits 1 when a gate fails."""
    from twinloop.serving.dryrun import run_release_qa

    rt = runtime()
    with err.status("QA dry-run: answering the held-out cases with the candidate and Active…") as st:
        doc = run_release_qa(release, registry=rt.releases, foundation=rt.foundation, embedder=rt.embedder,
                             retriever=rt.retriever, domains=rt.domains, router_json=rt.router.spec.to_json(),
                             index_revision=rt.knowledge.current_revision(), settings=rt.settings,
                             actor=cli_actor(), cases_path=cases, max_tokens=max_tokens,
                             progress=lambda i, n: st.update(f"QA dry-run: case {i}/{n}"))

    def render(doc: dict) -> None:
        t = table(f"QA of {doc['release_id']} against {doc.get('baseline_id')}",
                  ("gate", "value", "threshold", "result", "detail"), overflow="fold")
        for g in doc["gates"]:
            t.add_row(g["name"], _num(g.get("value")), _num(g.get("threshold")),
                      "pass" if g["passed"] else "[red]FAIL[/red]", g.get("detail", ""))
        out.print(t)
        out.print("QA " + ("[green]passed[/green]" if doc["passed"] else "[red]failed[/red]: promotion blocked"))

    emit(doc, json_out, render)
    if not doc["passed"]:
        raise typer.Exit(1)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


@canary_app.command("start")
def canary_start(
    release: ReleaseArg = None,
    ratio: Annotated[float | None, typer.Option(help="Share of users (default canary.ratio, 5 %).")] = None,
    mode: Annotated[str | None, typer.Option(help="split (canary users get the candidate) or mirror.")] = None,
    reason: ReasonOpt = "",
    json_out: JsonFlag = False,
) -> None:
    """Start a canary: a running server sends the candidate its share of users from now on."""
    run = _promoter().start_canary(release, actor=cli_actor(), ratio=ratio, mode=mode, reason=reason)
    emit(run.to_dict(), json_out, f"canary {run.id} started: {run.release_id} gets {run.ratio:.0%} of users "
                                  f"({run.mode}) against {run.baseline_id}")


@canary_app.command("status")
def canary_status(json_out: JsonFlag = False) -> None:
    """The running (or last) canary: per-arm figures and what the decision would be now."""
    doc = _promoter().canary_status()
    if doc["canary"] is None:
        emit(doc, json_out, "no canary has run")
        return

    def render(doc) -> None:
        run, decision = doc["canary"], doc["decision"]
        t = table(f"Canary {run['id']}: {run['release_id']} vs {run['baseline_id']} ({run['status']})",
                  ("arm", "requests", "errors", "error rate", "p95 ms", "toxic", "feedback"))
        for name in ("active", "shadow"):
            arm = doc[name]
            p95 = arm.get("latency_p95_ms")
            t.add_row(name, str(arm["requests"]), str(arm["errors"]), f"{arm['error_rate']:.1%}",
                      "-" if p95 is None else f"{p95:.0f}", str(arm["toxic"]),
                      "-" if arm.get("feedback_mean") is None else f"{arm['feedback_mean']:.2f}")
        out.print(t)
        if decision is not None:
            out.print(f"decision now: {decision['action']} — " + "; ".join(decision["reasons"]))
        elif run.get("decision"):
            out.print(f"ended: {run['status']} — " + "; ".join(run["decision"].get("reasons", [])))

    emit(doc, json_out, render)


@canary_app.command("stop")
def canary_stop(json_out: JsonFlag = False) -> None:
    """Stop the running canary without a decision (the candidate goes back to candidate)."""
    report = _promoter().stop_canary(actor=cli_actor())
    emit(report, json_out, f"canary {report['canary_id']} stopped")


@app.command()
def swap(
    release: ReleaseArg = None,
    force: Annotated[bool, typer.Option(help="Skip the QA and canary gates (audited). Approvals still apply.")]
    = False,
    reason: ReasonOpt = "",
    json_out: JsonFlag = False,
) -> None:
    """Promote a release to Active: gates, then its adapters loaded and verified on this
    machine's base model, then one transaction with its audit event — the same path as
    ``POST /v1/admin/swap``. A running server follows within ``release.poll_s``."""
    move = _promoter().swap(release, actor=cli_actor(), reason=reason, force=force)
    emit(move.to_dict(), json_out, _move_line)


@app.command()
def rollback(
    to: Annotated[str | None, typer.Option("--to", help="Release to return to (default: the previous Active).")]
    = None,
    reason: ReasonOpt = "",
    json_out: JsonFlag = False,
) -> None:
    """Point Active back at the previous (or a named, once-Active) release at once."""
    move = _promoter().rollback(actor=cli_actor(), reason=reason, to=to)
    emit(move.to_dict(), json_out, _move_line)


def _promoter():
    """The one promotion path (release/promotion.py), loading releases on a scratch adapter
    registry of this process's base model — only when a release must be loaded."""
    from twinloop.serving.control import scratch_promoter

    rt = runtime()
    return scratch_promoter(rt.settings, rt.releases, rt.domains, lambda: rt.foundation, lambda: rt.embedder)


def _move_line(move: dict[str, Any]) -> str:
    extra = f" (forced past: {'; '.join(move['skipped_gates'])})" if move.get("skipped_gates") else ""
    return f"{move['action']}: Active {move['from_release']} → {move['to_release']}{extra}"


@app.command()
def approve(
    release: Annotated[str, typer.Argument(help="Release to approve.")],
    note: Annotated[str, typer.Option(help="What you checked (audited).")] = "",
    json_out: JsonFlag = False,
) -> None:
    """Record your approval of a release for domains whose policy requires one (law and med need
    two reviewers: a second person approves before anyone can swap it in)."""
    doc = _promoter().approve(release, actor=cli_actor(), note=note)
    count = f"{len(doc['approvals'])} of {doc['required']} required" if doc["required"] else "none required"
    emit(doc, json_out, f"{release} approved by " + ", ".join(a["actor"] for a in doc["approvals"]) + f" ({count})")


@app.command()
def events(
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain, the MACs and the outside "
                                         "checkpoint; exit 1 if anything was tampered with.")] = False,
    export: Annotated[Path | None, typer.Option(help="Write every event as JSON lines to this file ('-': stdout).")]
    = None,
    limit: Annotated[int, typer.Option(help="Events to list, newest first.")] = 30,
    action: Annotated[str | None, typer.Option(help="Only this action (or a prefix ending in '.').")] = None,
    json_out: JsonFlag = False,
) -> None:
    """The audit log: list, verify or export."""
    store = runtime().events
    if export is not None:
        if str(export) == "-":
            n = store.export_jsonl(sys.stdout)
        else:
            with open(export, "w", encoding="utf-8") as f:
                n = store.export_jsonl(f)
            err.print(f"exported {n} events to {export}")
        return
    if verify:
        report = store.verify()
        emit(report.to_dict(), json_out, lambda _doc: _print_verify(report))
        if not report.ok:
            raise typer.Exit(1)
        return
    rows = store.list(limit=limit, action=action)

    def render(_doc):
        t = table(f"Audit events ({len(rows)} shown, newest first)",
                  ("#", "time", "action", "actor", "subject", "reason"), overflow="fold")
        for e in rows:
            t.add_row(str(e.seq), e.at[:19], e.action, e.actor, e.subject or "", e.reason)
        return t

    emit([e.to_dict() for e in rows], json_out, render)


def _print_verify(report) -> None:
    # One finding per line (an unknown key and a missing tail are findings too), never wrapped
    # or parsed as markup: operators grep and paste these (docs/DESIGN.md "State").
    def line(text: str) -> None:
        out.print(text, markup=False, highlight=False, soft_wrap=True)

    for warning in report.warnings:
        line(f"  warning: {warning}")
    if report.ok:
        cp = report.checkpoint
        against = f", checkpoint at event {cp['seq']} of {cp['at'][:19]}" if cp else ""
        line(f"audit log intact: {report.events} events, chain verified, MACs verified with key "
             f"{report.key_fingerprint}{against}")
        return
    where = f"first at event {report.first_bad_seq}" if report.first_bad_seq is not None else "in the log as a whole"
    out.print(f"[red]audit log TAMPERED[/red]: {len(report.problems)} problem(s), {where}", soft_wrap=True)
    for p in report.problems:
        line(f"  - {p}")


@app.command()
def prune(
    apply: Annotated[bool, typer.Option("--apply", help="Remove for real (default: show what would go).")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Retention: drop releases past retention.max_snapshots / max_age_days and unreferenced
    adapters; never Active, Shadow, their parents or the rollback target."""
    from twinloop.release.retention import prune as run_prune

    rt = runtime()
    plan = run_prune(rt.releases, rt.settings.retention, actor=cli_actor(), dry_run=not apply)
    verb = "removed" if apply else "would remove"
    emit(plan.to_dict(), json_out, f"{verb} {len(plan.removed)} release(s) and {len(plan.artifacts)} adapter "
                                   f"artifact(s); protected: {', '.join(plan.protected) or '-'}")


@app.command("export")
def export_release(
    release: Annotated[str, typer.Argument(help="Release to export.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write (.tar.gz).")],
) -> None:
    """Write a release and its adapters to one verified bundle."""
    from twinloop.release.bundle import export_bundle

    path = export_bundle(runtime().releases, release, out_path, actor=cli_actor())
    out.print(f"exported {release} to {path}")


@app.command("import")
def import_release(path: Annotated[Path, typer.Argument(help="Bundle file (.tar.gz).")]) -> None:
    """Verify a bundle and record its release here as a candidate (it must pass the gates here)."""
    from twinloop.release.bundle import import_bundle

    rel = import_bundle(runtime().releases, path, actor=cli_actor())
    out.print(f"imported {rel.id} (status {rel.status})")
