"""Promotion: the one path by which Active moves — swap, rollback, canary start/stop/status
and approvals (paper §5.2–5.4; docs/DESIGN.md "Releasing").

:class:`Promoter` is the library API that both the CLI and the admin API call. Every move
follows the same steps whoever asks: check the gates, load and verify the target's adapters
(the caller supplies that check, since loading adapters needs a model), then commit — one
SQLite transaction holding the Active pointer, its history row, the statuses and the audit
event. A serving process then moves its in-memory pointer (``serving/control.py``); a
process that was down reads the pointer at start, so a restart always comes back on the last
committed Active release.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.errors import (
    IntegrityError,
    InvalidInputError,
    ModelLoadError,
    TwinLoopError,
)
from twinloop.release.registry import Release, ReleaseRegistry


class GateError(TwinLoopError):
    """A release may not be promoted: a gate has not passed or an approval is missing."""

    def __init__(self, rid: str, problems: list[str]) -> None:
        super().__init__(f"release {rid} cannot be promoted: " + "; ".join(problems))
        self.problems = problems


class ReleaseLoadError(TwinLoopError):
    """A release's adapters do not load (a corrupt or incompatible artifact): it cannot be
    promoted, and nothing was committed."""

    def __init__(self, rid: str, cause: Exception) -> None:
        super().__init__(f"release {rid} cannot be promoted: its adapters do not load: {cause}")
        self.rid = rid


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


def approvals_required(registry: ReleaseRegistry, domains, rel: Release, against: str | None) -> dict[str, int]:
    """Domain → approvals by distinct reviewers its policy requires before ``rel`` replaces
    ``against``: a domain needs them when its adapter changes and its pack says
    ``approval_required`` (law and med: a regulator-facing answer needs named reviewers),
    as many as its ``approvals_required`` (two in law and med: one admin key cannot both
    approve and promote; docs/DESIGN.md "Releasing")."""
    policy = domains.all()
    return {d: policy[d].approvals_required for d in changed_domains(registry, rel, against)
            if d in policy and policy[d].approval_required}


def approvals_needed(registry: ReleaseRegistry, domains, rel: Release, against: str | None) -> list[str]:
    """Domains of ``rel`` whose required approvals (:func:`approvals_required`) are not all in:
    each approval counts once per distinct actor (an API key id, a CLI user)."""
    approvers = {a["actor"] for a in registry.approvals(rel.id)}
    return sorted(d for d, n in approvals_required(registry, domains, rel, against).items() if len(approvers) < n)


def approval_problems(registry: ReleaseRegistry, domains, rel: Release, against: str | None,
                      actor: str | None = None) -> list[str]:
    """Why ``rel`` lacks the approvals its domains require, naming who approved so far; with
    ``actor`` (who asks for the swap), also when that actor is the only approver of a
    release whose domains require more than one. Every message contains "approval", which
    ``force`` never skips."""
    required = approvals_required(registry, domains, rel, against)
    if not required:
        return []
    need = max(required.values())
    approvers = sorted({a["actor"] for a in registry.approvals(rel.id)})
    short = sorted(d for d, n in required.items() if len(approvers) < n)
    problems = []
    if short:
        had = f" ({', '.join(approvers)})" if approvers else ""
        problems.append(f"domain(s) {', '.join(short)} require a human approval by {need} distinct reviewer(s); "
                        f"it has {len(approvers)}{had} (twinloop approve {rel.id})")
    if need >= 2 and actor is not None and approvers == [actor]:
        problems.append(f"{actor} is its only approval, and asks for the swap: "
                        f"a second reviewer must approve (two-person rule)")
    return problems


def gate_problems(registry: ReleaseRegistry, domains, rid: str, release_cfg, actor: str | None = None) -> list[str]:
    """Everything that stops ``rid`` from being promoted over the current Active (by ``actor``,
    when known: see :func:`approval_problems`)."""
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
    problems.extend(approval_problems(registry, domains, rel, active, actor))
    return problems


def commit_swap(registry: ReleaseRegistry, domains, rid: str, release_cfg, *, actor: str, reason: str = "",
                force: bool = False) -> PointerMove:
    """Make ``rid`` Active in the registry (paper §5.3), after its gates — the commit step of
    :meth:`Promoter.swap`, which loads the release first; call that instead.

    ``force`` skips the QA and canary gates (an operator's emergency fix), never a missing
    approval and never a rolled-back release; the skipped gates are written to the audit event.

    Raises:
        GateError: A gate has not passed (the message lists each).
        InvalidInputError: Unknown release.
    """
    problems = gate_problems(registry, domains, rid, release_cfg, actor)
    skipped: list[str] = []
    if force:
        skipped = [p for p in problems if not _hard(p)]
        problems = [p for p in problems if _hard(p)]
    if problems:
        raise GateError(rid, problems)
    current = registry.pointer("active")
    status = {rid: "active"}
    if current:
        status[current] = "superseded"
    previous = registry.set_pointer("active", rid, actor=actor, reason=reason or "promoted", event="swap",
                                    status=status, data={"forced": force, "skipped_gates": skipped})
    return PointerMove("swap", previous, rid, actor, reason, force, skipped)


def rollback_target(registry: ReleaseRegistry, to: str | None) -> str:
    """The release a rollback returns to: ``to``, or the previous Active release.

    A rollback skips the gates because it returns to a release users were already served
    by; so ``to`` must have been Active before (anything else is a gated swap) and must not
    have been rolled back itself (docs/DESIGN.md "Releasing").

    Raises:
        InvalidInputError: No previous release, an unknown or pruned target, a target that
            is Active, was never Active, or was rolled back.
    """
    current = registry.pointer("active")
    target = to or registry.previous_active()
    if target is None:
        raise InvalidInputError("no previous release to roll back to")
    check_servable(registry, target)
    if target == current:
        raise InvalidInputError(f"release {target} is already Active")
    if to is not None:
        if not registry.was_active(target):
            raise InvalidInputError(f"release {target} was never Active, so a rollback cannot return to it; "
                                    "promote it with a swap, which checks its gates")
        if registry.get(target).status == "rolled_back":
            raise InvalidInputError(f"release {target} was rolled back; a rollback cannot return to it")
    return target


def commit_rollback(registry: ReleaseRegistry, *, actor: str, reason: str = "", to: str | None = None,
                    automatic: bool = False) -> PointerMove:
    """Point Active back at ``to`` (default: the previous Active release; paper §5.4) — the
    commit step of :meth:`Promoter.rollback`.

    The release rolled back from is marked ``rolled_back``, so a later "rollback to the
    previous" never returns to it and it cannot be swapped in again.

    Raises:
        InvalidInputError: See :func:`rollback_target`.
    """
    current = registry.pointer("active")
    target = rollback_target(registry, to)
    status = {target: "active"}
    if current:
        status[current] = "rolled_back"
    action = "rollback.automatic" if automatic else "rollback"
    previous = registry.set_pointer("active", target, actor=actor, reason=reason or "operator rollback",
                                    event=action, status=status)
    return PointerMove(action, previous, target, actor, reason)


# -- canary flow (paper §5.2) ---------------------------------------------------


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


# -- the one promotion path ---------------------------------------------------------------------

Verify = Callable[[str], Any]
"""``verify(rid)`` loads release ``rid``'s adapters and checks them (SHA-256, PEFT load),
returning what the caller serves it with; it raises if they do not load. A serving process
passes its release loader (the view becomes Active); the CLI passes a loader on a scratch
adapter registry, so ``twinloop swap`` refuses exactly what the API refuses."""


@dataclass
class Move:
    """A committed swap or rollback, the view :data:`Verify` returned, and where time went."""

    move: PointerMove
    view: Any
    load_ms: float
    commit_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.move.to_dict(), "load_ms": self.load_ms, "commit_ms": self.commit_ms}


class Promoter:
    """Swap, rollback, canary and approvals: the library API behind ``twinloop swap`` and
    ``POST /v1/admin/swap`` alike, so both check the same gates, load the same way before
    committing and write the same audit events.

    Args:
        registry: Releases, pointers and the audit log.
        canaries: The persisted canary runs (:class:`~twinloop.release.canary.CanaryStore`).
        domains: Domain policies (which domains need an approval).
        release_cfg: ``Settings.release`` (which gates a swap needs).
        canary_cfg: ``Settings.canary`` (default ratio, mode, salt; the decision rule).
        verify: Loads and checks a release before any pointer names it (:data:`Verify`).
    """

    def __init__(self, registry: ReleaseRegistry, canaries, domains, release_cfg, canary_cfg, verify: Verify) -> None:
        self.registry = registry
        self.canaries = canaries
        self.domains = domains
        self.release_cfg = release_cfg
        self.canary_cfg = canary_cfg
        self.verify = verify

    def resolve(self, rid: str | None) -> str:
        """``rid``, or the Shadow pointer's release when none is named.

        Raises:
            InvalidInputError: Unknown release, or no Shadow candidate yet.
        """
        return resolve_candidate(self.registry, rid)

    def swap(self, rid: str | None, *, actor: str, reason: str = "", force: bool = False) -> Move:
        """Promote ``rid`` (default: Shadow): gates, then load and verify, then commit.

        Raises:
            GateError: A gate has not passed (nothing was loaded).
            ReleaseLoadError: The release's adapters do not load (nothing committed).
            InvalidInputError: Unknown release, or no Shadow candidate.
        """
        rid = self.resolve(rid)
        t0 = time.perf_counter()
        # Gates first (cheap, and the message an operator needs), then the load check, then
        # the commit re-checks the gates inside its own read.
        problems = gate_problems(self.registry, self.domains, rid, self.release_cfg, actor)
        if force:
            problems = [p for p in problems if _hard(p)]
        if problems:
            raise GateError(rid, problems)
        view = self._verified(rid)  # a bad artifact must not commit
        t1 = time.perf_counter()
        move = commit_swap(self.registry, self.domains, rid, self.release_cfg, actor=actor, reason=reason, force=force)
        return Move(move, view, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)

    def rollback(self, *, actor: str, reason: str = "", to: str | None = None, automatic: bool = False) -> Move:
        """Point Active back at ``to`` (default: the previous Active release), loaded first.

        Raises:
            InvalidInputError: See :func:`rollback_target`.
            ReleaseLoadError: The target's adapters do not load (nothing committed).
        """
        t0 = time.perf_counter()
        target = rollback_target(self.registry, to)
        view = self._verified(target)
        t1 = time.perf_counter()
        move = commit_rollback(self.registry, actor=actor, reason=reason, to=target, automatic=automatic)
        return Move(move, view, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)

    def start_canary(self, rid: str | None, *, actor: str, ratio: float | None = None, mode: str | None = None,
                     reason: str = ""):
        """Start a canary of ``rid`` (default: Shadow) against Active; loaded and verified
        before any user is sent to it."""
        from twinloop.release.canary import check_split

        cfg = self.canary_cfg
        ratio, mode = cfg.ratio if ratio is None else ratio, mode or cfg.mode
        check_split(ratio, mode)  # cheap checks before the release is loaded
        rid = self.resolve(rid)
        self._verified(rid)
        return start_canary(self.registry, self.canaries, rid, ratio=ratio, mode=mode, salt=cfg.salt,
                            release_cfg=self.release_cfg, actor=actor, reason=reason)

    def _verified(self, rid: str) -> Any:
        try:
            return self.verify(rid)
        except (IntegrityError, ModelLoadError) as e:
            raise ReleaseLoadError(rid, e) from e

    def stop_canary(self, *, actor: str) -> dict[str, Any]:
        """Stop the running canary without a decision; returns its report.

        Raises:
            InvalidInputError: No canary is running.
        """
        run = self.canaries.current()
        if run is None:
            raise InvalidInputError("no canary is running")
        _, report = conclude_canary(self.registry, self.canaries, run, None, actor=actor, stopped=True)
        return report

    def canary_status(self) -> dict[str, Any]:
        """The running (or last) canary: per-arm figures and, while it runs, the decision now."""
        from twinloop.release.canary import decide

        run = self.canaries.current() or next(iter(self.canaries.list(1)), None)
        if run is None:
            return {"canary": None}
        active, shadow = self.canaries.stats(run.id)
        out = {"canary": run.to_dict(), "active": active.to_dict(), "shadow": shadow.to_dict(), "decision": None}
        if run.status == "running":
            out["decision"] = decide(active, shadow, self.canary_cfg).to_dict()
        return out

    def approve(self, rid: str, *, actor: str, note: str = "") -> dict[str, Any]:
        """Record ``actor``'s approval of ``rid`` (audited; a second one by the same actor
        changes nothing); returns every approval it has, how many its domains require against
        the current Active, and whether that many are in.

        Raises:
            InvalidInputError: Unknown release, or no actor.
        """
        if not actor or not actor.strip():
            raise InvalidInputError(f"actor = {actor!r}: an approval must name its reviewer")
        self.registry.approve(rid, actor, note)
        rel = self.registry.get(rid)
        need = max(approvals_required(self.registry, self.domains, rel, self.registry.pointer("active")).values(),
                   default=0)
        approvals = self.registry.approvals(rid)
        return {"release": rid, "approvals": approvals, "required": need,
                "complete": len({a["actor"] for a in approvals}) >= need}


def _hard(problem: str) -> bool:
    """Gate problems ``force`` never skips: a missing approval, a rolled-back or Active release."""
    return "approval" in problem or "rolled back" in problem or "already Active" in problem


def resolve_candidate(registry: ReleaseRegistry, rid: str | None) -> str:
    """``rid``, or the Shadow pointer's release when none is named.

    Raises:
        InvalidInputError: Unknown release, or no Shadow candidate yet.
    """
    if rid:
        registry.get(rid)
        return rid
    shadow = registry.pointer("shadow")
    if shadow is None:
        raise InvalidInputError("no Shadow candidate yet: train one (twinloop train) or name a release")
    return shadow
