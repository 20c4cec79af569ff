"""Shadow (learning loop) commands: ``quarantine``, ``train``, ``jobs``, ``correct`` and ``corrections``.

Training runs in a worker process of its own (docs/DESIGN.md "The two loops"), so ``train``
only starts a job and follows its progress; the result is a candidate release, and Active
is never touched.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from twinloop.cli.app import app, cli_actor, runtime
from twinloop.cli.output import JsonFlag, emit, err, out, table
from twinloop.kernel.errors import TwinLoopError


@app.command()
def quarantine(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Only this domain.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show, newest first.")] = 50,
    json_out: JsonFlag = False,
) -> None:
    """List feedback the filters rejected (stage, reason; text shown redacted)."""
    from twinloop.learning.quarantine import list_quarantine

    def render(rows: list[dict]):
        t = table(f"Quarantine ({len(rows)} shown)", ("id", "time", "domain", "stage", "reason", "prompt"),
                  overflow="fold")
        for r in rows:
            prompt = (r.get("prompt") or "")[:80]
            t.add_row(str(r["id"]), str(r["created_at"]), str(r["domain"]), r["stage"], r["reason"], prompt)
        return t

    emit(list_quarantine(runtime().db, domain, limit), json_out, render)


@app.command()
def train(
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Only these domains (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per domain (default training.steps).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default training.learning_rate).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default training.seed).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Train Shadow on the new samples in a worker process; print the candidate release."""
    from twinloop.learning.jobs import TrainJobs
    from twinloop.learning.worker import start_training_job

    rt = runtime()
    jid = start_training_job(rt.settings, rt.db, rt.domains.names(), feedback=rt.feedback, domains=domain or None,
                             steps=steps, lr=lr, seed=seed)
    job = _follow(TrainJobs(rt.db), jid, quiet=json_out)
    if job["status"] != "succeeded":
        raise TwinLoopError(f"training job {jid} {job['status']}: {job['error']}")

    def render(result: dict) -> None:
        t = table(f"candidate {result['release_id']} (shadow)",
                  ("domain", "samples", "steps", "final loss", "seconds", "adapter"))
        for name, d in result["domains"].items():
            t.add_row(name, str(d["samples"]), str(d["steps"]), f"{d['final_loss']:.4f}", f"{d['seconds']:.1f}",
                      d["adapter"][:12])
        out.print(t)
        out.print(f"parent {result['parent'] or '-'} · index revision {result['index_revision']} · "
                  f"{result['seconds']:.1f} s; Active unchanged")

    emit({"job_id": jid, "status": job["status"], **job["result"]}, json_out, render)


def _follow(jobs, jid: str, *, quiet: bool) -> dict:
    """Poll a training job until it ends, drawing its progress on stderr; return its last row.

    A worker that dies without writing its end is reaped as stale, so this never waits forever.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=err,
                  disable=quiet) as bar:
        task = bar.add_task(f"{jid} starting", total=None, loss="-")
        while True:
            job = jobs.get(jid)
            p = job["progress"]
            if p:
                bar.update(task, description=f"{p['domain']} ({p['domain_index'] + 1}/{p['domains_total']})",
                           completed=p["step"], total=p["total"], loss=f"{p['loss']:.4f}")
            if job["status"] not in ("queued", "running"):
                return job
            if jobs.reap_stale():
                return jobs.get(jid)
            time.sleep(0.2)


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(help="Jobs to show, newest first.")] = 20,
    json_out: JsonFlag = False,
) -> None:
    """List Shadow training jobs (stale ones whose worker died are marked failed first)."""
    from twinloop.learning.jobs import TrainJobs

    store = TrainJobs(runtime().db)
    store.reap_stale()
    rows = store.list(limit)
    for r in rows:
        r["params"].pop("settings", None)  # the full settings snapshot is noise in a listing

    def render(rows: list[dict]):
        t = table(f"Training jobs ({len(rows)} shown)",
                  ("id", "created", "status", "domains", "progress", "release / error"), overflow="fold")
        for r in rows:
            p = r["progress"]
            prog = f"{p['domain']} {p['step']}/{p['total']}" if p else "-"
            tail = (r["result"] or {}).get("release_id") or r["error"] or ""
            t.add_row(r["id"], r["created_at"], r["status"], ", ".join(r["domains"]) or "all", prog, tail)
        return t

    emit(rows, json_out, render)


@app.command()
def correct(
    domain: Annotated[str, typer.Option("--domain", "-d", help="The domain the correction belongs to.")],
    question: Annotated[str, typer.Option("--question", "-q", help="The question it answers.")],
    answer: Annotated[str, typer.Option("--answer", "-a", help="The correct answer, as users should read it.")],
    source: Annotated[str | None, typer.Option(help="Where the answer comes from (shown with it).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Correct an answer: questions in its scope are answered with it at once, quoted and cited
    (or once approved, in a domain whose policy requires approval)."""
    c = runtime().correct(domain, question, answer, actor=cli_actor(), source=source)
    state = ("served from now on" if c.state == "active"
             else f"pending: {c.approvals_required} approval(s) by other reviewers needed")
    emit(c.to_dict(), json_out, f"correction {c.id} ({c.domain}, index revision {c.revision or '-'}): {state}")


@app.command()
def corrections(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Only this domain.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, active or removed.")] = None,
    approve: Annotated[int | None, typer.Option(help="Approve this correction (as the CLI user).")] = None,
    remove: Annotated[int | None, typer.Option(help="Take this correction out of answers.")] = None,
    reason: Annotated[str, typer.Option(help="Why (audited), with --approve or --remove.")] = "",
    json_out: JsonFlag = False,
) -> None:
    """List corrections, or approve or remove one."""
    store = runtime().corrections
    if approve is not None:
        c = store.approve(approve, actor=cli_actor(), note=reason)
        emit(c.to_dict(), json_out, f"correction {c.id}: {c.state} ({len(c.approvals)} of {c.approvals_required} "
                                    "approvals)")
        return
    if remove is not None:
        c = store.remove(remove, actor=cli_actor(), reason=reason)
        emit(c.to_dict(), json_out, f"correction {c.id}: removed")
        return
    found = store.list(domain, state)

    def render(_doc):
        t = table("Corrections", ("id", "domain", "state", "question", "answer", "accepted"), overflow="fold")
        for c in found:
            t.add_row(str(c.id), c.domain, c.state, c.question[:80], c.answer[:60], f"{c.created_at[:10]} {c.actor}")
        out.print(t)

    emit({"corrections": [c.to_dict() for c in found]}, json_out, render)
