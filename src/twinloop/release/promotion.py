"""Swap and rollback in the registry: which gates a promotion needs, and the pointer moves
(paper §5.3–5.4; issue 6 points 5, 6 and 8).

These functions change only committed state (one SQLite transaction each: the Active pointer,
its history row, the statuses and the audit event). A serving process then moves its
in-memory pointer (``serving/service.py``); a process that was down reads the pointer at
start, so a restart always comes back on the last committed Active release.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
from twinloop.release.registry import Release, ReleaseRegistry


class GateError(TwinLoopError):
    """A release may not be promoted: a gate has not passed or an approval is missing."""

    def __init__(self, rid: str, problems: list[str]) -> None:
        super().__init__(f"release {rid} cannot be promoted: " + "; ".join(problems))
        self.problems = problems


@dataclass
class PointerMove:
    """What a swap or rollback did."""

    action: str
    from_release: str | None
    to_release: str
    actor: str
    reason: str
    forced: bool = False
    skipped_gates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_servable(registry: ReleaseRegistry, rid: str) -> None:
    """Refuse a release retention turned into a lineage record (its adapters are gone).

    Raises:
        InvalidInputError: Unknown or pruned release.
    """
    if registry.get(rid).status == "pruned":
        raise InvalidInputError(f"release {rid} was pruned by retention (its adapters are deleted); "
                                "it is kept only as a lineage record")


def changed_domains(registry: ReleaseRegistry, rel: Release, against: str | None) -> list[str]:
    """Domains whose adapter differs between ``rel`` and release ``against`` (Active)."""
    base = registry.get(against).adapters if against else {}
    return sorted(d for d in set(rel.adapters) | set(base) if rel.adapters.get(d) != base.get(d))


def approvals_needed(registry: ReleaseRegistry, domains, rel: Release, against: str | None) -> list[str]:
    """Domains of ``rel`` whose policy requires a human approval it does not have yet (issue 6
    point 8): a domain needs one when its adapter changes and its pack says
    ``approval_required`` (law by default: a regulator-facing answer needs a named reviewer)."""
    if registry.approvals(rel.id):
        return []
    policy = domains.all()
    return [d for d in changed_domains(registry, rel, against) if d in policy and policy[d].approval_required]


def gate_problems(registry: ReleaseRegistry, domains, rid: str, release_cfg) -> list[str]:
    """Everything that stops ``rid`` from being promoted over the current Active."""
    rel = registry.get(rid)
    check_servable(registry, rid)
    active = registry.pointer("active")
    problems = []
    if rid == active:
        problems.append("it is already Active")
        return problems
    if rel.status == "rolled_back":
        problems.append("it was rolled back; train a new candidate")
    if release_cfg.require_qa:
        qa = registry.latest_report(rid, "qa")
        if qa is None:
            problems.append("no QA dry-run yet (twinloop qa)")
        elif not qa["passed"]:
            problems.append("its QA dry-run failed: " + "; ".join(qa["report"].get("failures", [])[:3]))
    if release_cfg.require_canary:
        canary = registry.latest_report(rid, "canary")
        if canary is None:
            problems.append("no canary yet (twinloop canary start)")
        elif not canary["passed"]:
            problems.append("its canary did not pass: " + "; ".join(canary["report"].get("reasons", [])[:3]))
    need = approvals_needed(registry, domains, rel, active)
    if need:
        problems.append(f"domain(s) {', '.join(need)} require a human approval (twinloop approve {rid})")
    return problems


def swap(registry: ReleaseRegistry, domains, rid: str, release_cfg, *, actor: str, reason: str = "",
         force: bool = False) -> PointerMove:
    """Make ``rid`` Active in the registry (paper §5.3), after its gates.

    ``force`` skips the QA and canary gates (an operator's emergency fix), never a missing
    approval and never a rolled-back release; the skipped gates are written to the audit event.

    Raises:
        GateError: A gate has not passed (the message lists each).
        InvalidInputError: Unknown release.
    """
    problems = gate_problems(registry, domains, rid, release_cfg)
    skipped: list[str] = []
    if force:
        hard = [p for p in problems if "approval" in p or "rolled back" in p or "already Active" in p]
        skipped = [p for p in problems if p not in hard]
        problems = hard
    if problems:
        raise GateError(rid, problems)
    current = registry.pointer("active")
    status = {rid: "active"}
    if current:
        status[current] = "superseded"
    previous = registry.set_pointer("active", rid, actor=actor, reason=reason or "promoted", event="swap",
                                    status=status, data={"forced": force, "skipped_gates": skipped})
    return PointerMove("swap", previous, rid, actor, reason, force, skipped)


def rollback(registry: ReleaseRegistry, *, actor: str, reason: str = "", to: str | None = None,
             automatic: bool = False) -> PointerMove:
    """Point Active back at ``to`` (default: the previous Active release; paper §5.4).

    The release rolled back from is marked ``rolled_back``, so a later "rollback to the
    previous" never returns to it and it cannot be swapped in again.

    Raises:
        InvalidInputError: No previous release, an unknown target, or the target is Active.
    """
    current = registry.pointer("active")
    target = to or registry.previous_active()
    if target is None:
        raise InvalidInputError("no previous release to roll back to")
    check_servable(registry, target)
    if target == current:
        raise InvalidInputError(f"release {target} is already Active")
    status = {target: "active"}
    if current:
        status[current] = "rolled_back"
    action = "rollback.automatic" if automatic else "rollback"
    previous = registry.set_pointer("active", target, actor=actor, reason=reason or "operator rollback",
                                    event=action, status=status)
    return PointerMove(action, previous, target, actor, reason)


# -- canary flow (paper §5.2, issue 6 point 4) ---------------------------------------------------


def start_canary(registry: ReleaseRegistry, canaries, rid: str, *, ratio: float, mode: str, salt: str,
                 release_cfg, actor: str, reason: str = ""):
    """Start a canary of ``rid`` against the current Active (after its QA, when required).

    Raises:
        GateError: No passed QA report while ``release.require_qa``.
        InvalidInputError: Unknown release, it is Active, bad ratio or mode.
    """
    rel = registry.get(rid)
    active = registry.pointer("active")
    if rid == active:
        raise InvalidInputError(f"release {rid} is already Active")
    if rel.status == "rolled_back":
        raise GateError(rid, ["it was rolled back; train a new candidate"])
    if release_cfg.require_qa:
        qa = registry.latest_report(rid, "qa")
        if qa is None or not qa["passed"]:
            raise GateError(rid, ["a canary needs a passed QA dry-run first (twinloop qa)"])
    with registry.db.transaction() as conn:  # canary row, status and event: all or none
        run = canaries.start(rid, active, ratio=ratio, mode=mode, salt=salt, actor=actor, conn=conn)
        registry.set_status(rid, "canary", conn)
        crash_point("canary.start.in_transaction")
        registry.events.append("canary.started", actor=actor, subject=rid, reason=reason, conn=conn,
                               data={"canary_id": run.id, "baseline": active, "ratio": ratio, "mode": mode})
    return run


def conclude_canary(registry: ReleaseRegistry, canaries, run, decision, *, actor: str,
                    stopped: bool = False):
    """Record a canary's end: its report with the release, the status, the audit event.

    ``decision.action`` "promote" passes the canary gate; "abort" fails it; ``stopped`` (an
    operator's stop without a decision) records no gate result.
    """
    active, shadow = canaries.stats(run.id)
    report = {"canary_id": run.id, "baseline": run.baseline_id, "ratio": run.ratio, "mode": run.mode,
              "action": decision.action if decision else "stopped",
              "reasons": list(decision.reasons) if decision else ["stopped by an operator"],
              "details": decision.details if decision else {},
              "active": active.to_dict(), "shadow": shadow.to_dict()}
    if stopped:
        with registry.db.transaction() as conn:
            finished = canaries.finish(run.id, "stopped", decision, actor=actor, conn=conn)
            if registry.get(run.release_id).status == "canary":
                registry.set_status(run.release_id, "candidate", conn)
            registry.events.append("canary.stopped", actor=actor, subject=run.release_id, conn=conn,
                                   reason="stopped by an operator", data={"canary_id": run.id})
        return finished, report
    passed = decision.action == "promote"
    with registry.db.transaction() as conn:  # canary end, report, status and event: all or none
        finished = canaries.finish(run.id, "promoted" if passed else "aborted", decision, actor=actor, conn=conn)
        registry.add_report(run.release_id, "canary", passed, report,
                            status="canary_passed" if passed else "canary_aborted",
                            event="canary.promoted" if passed else "canary.aborted", actor=actor,
                            reason="; ".join(decision.reasons)[:500], conn=conn)
    return finished, report
