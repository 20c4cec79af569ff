"""The release admin API (paper §5; docs/DESIGN.md "Releasing"): QA, canary, swap, rollback, releases, approvals,
audit events, faults, retention, and the resident adapters (``/v1/lora``). Every route needs
the admin role and only calls the library (``serving/control.py``, ``release/*``); the actor
of every action is the caller's key id, written to the audit log.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from twinloop.api.auth import Principal
from twinloop.api.deps import GuardedRoute, require, service
from twinloop.api.errors import ApiError, responses
from twinloop.api.schemas import (
    ApproveBody,
    CanaryBody,
    FaultBody,
    QaBody,
    RetentionBody,
    RollbackBody,
    SwapBody,
)
from twinloop.kernel.errors import IntegrityError, ModelLoadError
from twinloop.release.promotion import resolve_candidate
from twinloop.serving.adapters import AdapterNameTakenError
from twinloop.serving.faults import Fault
from twinloop.serving.service import Service

release_routes = APIRouter(route_class=GuardedRoute, prefix="/v1/admin", tags=["release"])
lora_routes = APIRouter(route_class=GuardedRoute, prefix="/v1/lora", tags=["adapters"])
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


@release_routes.get("/status", summary="Active, Shadow, canary, breaker, rollback watch, faults")
def status(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.control.status()


@release_routes.get("/releases", summary="Releases, newest first, with gate results")
def releases(limit: int = 50, svc: Service = Depends(service),
             _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    if not 1 <= limit <= 1000:
        raise ApiError(422, f"limit = {limit}: must be between 1 and 1000", code="invalid_value", param="limit")
    reg = svc.runtime.releases
    return {"active": reg.pointer("active"), "shadow": reg.pointer("shadow"),
            "items": [release_summary(svc, r.id) for r in reg.list(limit)]}


@release_routes.get("/releases/{rid}", summary="One release: record, lineage, reports, approvals",
                     responses=responses(404))
def release_detail(rid: str, svc: Service = Depends(service),
                   _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    reg = svc.runtime.releases
    if not reg.exists(rid):
        raise ApiError(404, f"unknown release {rid!r}", code="unknown_release", param="rid")
    return {**reg.get(rid).to_dict(), "ancestors": [r.id for r in reg.ancestors(rid)],
            "children": [r.id for r in reg.children(rid)], "reports": reg.reports(rid),
            "approvals": reg.approvals(rid)}


@release_routes.post("/releases/{rid}/approve", summary="Approve a release for domains that require it",
                     responses=responses(404))
def approve(rid: str, body: ApproveBody, svc: Service = Depends(service),
            who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    if not svc.control.registry.exists(rid):
        raise ApiError(404, f"unknown release {rid!r}", code="unknown_release", param="rid")
    return svc.control.promoter.approve(rid, actor=actor(who), note=body.note)


@release_routes.post("/qa", summary="QA dry-run of a candidate against Active (blocking; isolated copy)",
                     responses=responses(404, 409))
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


@release_routes.post("/canary", status_code=201, summary="Start a canary of a candidate",
                     responses=responses(404, 409))
def canary_start(body: CanaryBody, svc: Service = Depends(service),
                 who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    run = svc.control.start_canary(body.release, actor=actor(who), ratio=body.ratio, mode=body.mode,
                                   reason=body.reason)
    return run.to_dict()


@release_routes.get("/canary", summary="The running (or last) canary: arms and the current decision",
                     responses=responses(404))
def canary_status(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.control.canary_status()


@release_routes.delete("/canary", summary="Stop the running canary (no gate result is recorded)",
                     responses=responses(404, 409))
def canary_stop(svc: Service = Depends(service), who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.control.stop_canary(actor=actor(who))


@release_routes.post("/swap", summary="Promote a release to Active (gates checked)",
                     responses=responses(404, 409))
async def swap(body: SwapBody, svc: Service = Depends(service),
               who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return await run_in_threadpool(lambda: svc.control.swap(body.release, actor=actor(who), reason=body.reason,
                                                            force=body.force))


@release_routes.post("/rollback", summary="Point Active back at the previous or a named release",
                     responses=responses(404, 409))
async def rollback(body: RollbackBody, svc: Service = Depends(service),
                   who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return await run_in_threadpool(lambda: svc.control.rollback(actor=actor(who), reason=body.reason, to=body.to))


@release_routes.get("/events", summary="Audit events, newest first")
def events(limit: int = 100, action: str | None = None, subject: str | None = None,
           svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    if not 1 <= limit <= 10_000:
        raise ApiError(422, f"limit = {limit}: must be between 1 and 10000", code="invalid_value", param="limit")
    return {"items": [e.to_dict() for e in svc.runtime.events.list(limit=limit, action=action, subject=subject)]}


@release_routes.get("/events/verify", summary="Check the audit log: hash chain, keyed MAC chain, signed checkpoint")
def events_verify(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return svc.runtime.events.verify().to_dict()


@release_routes.get("/faults", summary="Injected faults")
def faults(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return {"items": [f.to_dict() for f in svc.control.faults.list()]}


@release_routes.post("/faults", summary="Inject (or clear, with zeros) a fault into a release, to rehearse rollback",
                     responses=responses(404))
def fault_set(body: FaultBody, svc: Service = Depends(service),
              who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    rid = body.release or svc.active.id
    if not svc.runtime.releases.exists(rid):
        raise ApiError(404, f"unknown release {rid!r}", code="unknown_release", param="release")
    return svc.control.inject_fault(Fault(rid, body.error_rate, body.delay_ms), actor=actor(who)).to_dict()


@release_routes.post("/retention", summary="Remove old releases and unreferenced artifacts (keeps Active, Shadow, parents)",
                     responses=responses(409))
def retention(body: RetentionBody, svc: Service = Depends(service),
              who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    from twinloop.release.retention import prune

    plan = prune(svc.runtime.releases, svc.settings.retention, actor=actor(who), dry_run=body.dry_run)
    return plan.to_dict()


# -- resident adapters (docs/DESIGN.md "Serving", "State") ----------------------------------------


class LoraLoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a client still sending "path" is told so

    adapter: str = Field(min_length=1, max_length=200,
                         description="A registered adapter: '<domain>@<release id>', or an artifact digest that a "
                                     "release names (64 hex digits, or a unique prefix of at least 12). Never a path.")
    name: str | None = Field(default=None, min_length=1, max_length=128,
                             description="Resident name for a digest (default 'adapter-<digest prefix>'; no '@'). "
                                         "A release's adapter is always resident as '<domain>@<release id>'.")


@lora_routes.get("", summary="Resident LoRA adapters")
def lora_list(svc: Service = Depends(service), _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    return {"object": "list", "data": svc.list_adapters()}


@lora_routes.post("", summary="Load a registered adapter from the artifact store (by digest or release)",
                  responses=responses(409))
def lora_load(body: LoraLoadBody, svc: Service = Depends(service),
              who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """Load a registered adapter (SHA-256 checked) under a name that is not resident yet;
    422 for a reference the registry does not know or weights that do not load, 409 for a
    name already resident (an adapter serving a release is never replaced)."""
    try:
        return svc.control.load_adapter(body.adapter, actor=actor(who), name=body.name)
    except AdapterNameTakenError as e:
        raise ApiError(409, str(e), code="adapter_exists", param="name") from e
    except (ModelLoadError, IntegrityError) as e:  # messages name the digest, never a folder
        raise ApiError(422, str(e), code="invalid_adapter", param="adapter") from e


@lora_routes.delete("/{name}", summary="Unload an adapter an operator loaded", responses=responses(409))
def lora_delete(name: str = PathParam(max_length=128), svc: Service = Depends(service),
                who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """Unload once no admitted request holds it; 422 for an unknown name or one a release
    this server keeps uses, 409 while requests still hold it."""
    try:
        return svc.control.unload_adapter(name, actor=actor(who), timeout=svc.settings.serving.request_timeout_s)
    except TimeoutError as e:  # still held by in-flight requests
        raise ApiError(409, str(e), code="adapter_in_use", param="name") from e


# What app.py includes. Built last: include_router copies the routes declared above.
router = APIRouter()
router.include_router(release_routes)
router.include_router(lora_routes)
