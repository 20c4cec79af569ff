"""The release admin API (paper §5; docs/DESIGN.md "Releasing"): QA, canary, swap, rollback, releases, approvals,
audit events, faults, retention. Every route needs the admin role and only calls the
library (``serving/control.py``, ``release/*``); the actor of every action is the caller's
key id, written to the audit log.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from twinloop.api.auth import Principal
from twinloop.api.deps import GuardedRoute, require, service
from twinloop.api.errors import ApiError
from twinloop.api.schemas import (
    ApproveBody,
    CanaryBody,
    FaultBody,
    QaBody,
    RetentionBody,
    RollbackBody,
    SwapBody,
)
from twinloop.release.promotion import resolve_candidate
from twinloop.serving.faults import Fault
from twinloop.serving.service import Service

router = APIRouter(route_class=GuardedRoute, prefix="/v1/admin", tags=["release"])
_qa_lock = threading.Lock()


def actor(who: Principal) -> str:
    return f"key:{who.key_id}" if who.key_id else "anonymous"


def release_summary(svc: Service, rid: str) -> dict[str, Any]:
    reg = svc.runtime.releases
    rel = reg.get(rid)
    doc = rel.to_dict()
    doc.pop("lineage", None)
    doc["domains_trained"] = sorted(rel.lineage.get("domains", {}))
    doc["job_id"] = rel.lineage.get("job_id")
    for kind in ("qa", "canary"):
        rep = reg.latest_report(rid, kind)
        doc[kind] = None if rep is None else {"passed": rep["passed"], "at": rep["created_at"]}
    doc["approvals"] = reg.approvals(rid)
    return doc


@router.get("/status", summary="Active, Shadow, canary, breaker, rollback watch, faults")
def status(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.control.status()


@router.get("/releases", summary="Releases, newest first, with gate results")
def releases(limit: int = 50, svc: Service = Depends(service),
             _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    if not 1 <= limit <= 1000:
        raise ApiError(422, f"limit = {limit}: must be between 1 and 1000", code="invalid_value", param="limit")
    reg = svc.runtime.releases
    return {"active": reg.pointer("active"), "shadow": reg.pointer("shadow"),
            "items": [release_summary(svc, r.id) for r in reg.list(limit)]}


@router.get("/releases/{rid}", summary="One release: record, lineage, reports, approvals")
def release_detail(rid: str, svc: Service = Depends(service),
                   _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    reg = svc.runtime.releases
    if not reg.exists(rid):
        raise ApiError(404, f"unknown release {rid!r}", code="unknown_release", param="rid")
    return {**reg.get(rid).to_dict(), "ancestors": [r.id for r in reg.ancestors(rid)],
            "children": [r.id for r in reg.children(rid)], "reports": reg.reports(rid),
            "approvals": reg.approvals(rid)}


@router.post("/releases/{rid}/approve", summary="Approve a release for domains that require it")
def approve(rid: str, body: ApproveBody, svc: Service = Depends(service),
            who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    if not svc.control.registry.exists(rid):
        raise ApiError(404, f"unknown release {rid!r}", code="unknown_release", param="rid")
    return svc.control.promoter.approve(rid, actor=actor(who), note=body.note)


@router.post("/qa", summary="QA dry-run of a candidate against Active (blocking; isolated copy)")
def qa(body: QaBody, svc: Service = Depends(service), who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """Loads a separate copy of the base model (so serving, metrics and the request log are not
    touched), answers the held-out cases with the candidate and Active, stores the report
    with the release. 409 while another QA runs here."""
    from twinloop.foundation import load_foundation
    from twinloop.serving.dryrun import run_release_qa

    if not _qa_lock.acquire(blocking=False):
        raise ApiError(409, "a QA dry-run is already running on this server", code="qa_running")
    try:
        rt = svc.runtime
        rid = resolve_candidate(rt.releases, body.release)
        # Its own copy of the base: the run loads adapters onto it, never onto the serving model.
        # Stores (registry, index, domains) are the process's own, read here and written once.
        isolated_base = load_foundation(rt.settings.foundation, rt.data_dir)
        return run_release_qa(rid, registry=rt.releases, foundation=isolated_base, embedder=rt.embedder,
                              retriever=rt.retriever, domains=rt.domains, router_json=rt.router.spec.to_json(),
                              index_revision=rt.knowledge.current_revision(), settings=rt.settings,
                              actor=actor(who), max_tokens=body.max_tokens)
    finally:
        _qa_lock.release()


@router.post("/canary", status_code=201, summary="Start a canary of a candidate")
def canary_start(body: CanaryBody, svc: Service = Depends(service),
                 who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    run = svc.control.start_canary(body.release, actor=actor(who), ratio=body.ratio, mode=body.mode,
                                   reason=body.reason)
    return run.to_dict()


@router.get("/canary", summary="The running (or last) canary: arms and the current decision")
def canary_status(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.control.canary_status()


@router.delete("/canary", summary="Stop the running canary (no gate result is recorded)")
def canary_stop(svc: Service = Depends(service), who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.control.stop_canary(actor=actor(who))


@router.post("/swap", summary="Promote a release to Active (gates checked)")
async def swap(body: SwapBody, svc: Service = Depends(service),
               who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return await run_in_threadpool(lambda: svc.control.swap(body.release, actor=actor(who), reason=body.reason,
                                                            force=body.force))


@router.post("/rollback", summary="Point Active back at the previous or a named release")
async def rollback(body: RollbackBody, svc: Service = Depends(service),
                   who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return await run_in_threadpool(lambda: svc.control.rollback(actor=actor(who), reason=body.reason, to=body.to))


@router.get("/events", summary="Audit events, newest first")
def events(limit: int = 100, action: str | None = None, subject: str | None = None,
           svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    if not 1 <= limit <= 10_000:
        raise ApiError(422, f"limit = {limit}: must be between 1 and 10000", code="invalid_value", param="limit")
    return {"items": [e.to_dict() for e in svc.runtime.events.list(limit=limit, action=action, subject=subject)]}


@router.get("/events/verify", summary="Recompute the audit log's hash chain")
def events_verify(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.runtime.events.verify().to_dict()


@router.get("/faults", summary="Injected faults")
def faults(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return {"items": [f.to_dict() for f in svc.control.faults.list()]}


@router.post("/faults", summary="Inject (or clear, with zeros) a fault into a release, to rehearse rollback")
def fault_set(body: FaultBody, svc: Service = Depends(service),
              who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    rid = body.release or svc.active.id
    if not svc.runtime.releases.exists(rid):
        raise ApiError(404, f"unknown release {rid!r}", code="unknown_release", param="release")
    return svc.control.inject_fault(Fault(rid, body.error_rate, body.delay_ms), actor=actor(who)).to_dict()


@router.post("/retention", summary="Remove old releases and unreferenced artifacts (keeps Active, Shadow, parents)")
def retention(body: RetentionBody, svc: Service = Depends(service),
              who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    from twinloop.release.retention import prune

    plan = prune(svc.runtime.releases, svc.settings.retention, actor=actor(who), dry_run=body.dry_run)
    return plan.to_dict()
