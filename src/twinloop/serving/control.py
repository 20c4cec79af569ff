"""Release control inside a serving process: which release each request is pinned to, and
how Active moves (paper §5.2–5.5; docs/DESIGN.md "Releasing").

- **Pinning**: a request reads the Active release once, at admission, and keeps it; with a
  canary running in split mode, users whose hash(user_id + salt) falls under the ratio are
  pinned to the candidate instead (paper §5.2).
- **Swap / rollback**: the :class:`~twinloop.release.promotion.Promoter` checks the gates,
  loads the target and commits the pointer move (one transaction with its audit event),
  then the in-memory pointer moves under a lock — a reference assignment, so
  in-flight requests finish on the release they were admitted with. The candidate's
  adapters are loaded *before* the commit, and the previous release stays resident, so both
  directions are instant (paper §5.3–5.4).
- **Safety net**: the circuit breaker guards Active (paper §5.5); after a swap the rollback
  watch rolls back automatically on its triggers (paper §5.4); faults can be injected per
  release to rehearse both.
- **Following the registry**: a background thread re-reads the Active pointer and the
  running canary every ``release.poll_s`` seconds, so CLI commands run on the same data
  directory (``twinloop swap``, ``canary start``) reach a running server, and a restart
  comes back on the committed Active release.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.errors import InvalidInputError
from twinloop.release import promotion
from twinloop.release.breaker import BreakerState, CircuitBreaker
from twinloop.release.canary import CanaryStore, assign_arm, decide
from twinloop.release.promotion import Promoter
from twinloop.release.watch import LatencyWindow, RollbackWatch
from twinloop.serving.faults import Fault, FaultInjector
from twinloop.serving.release import ReleaseLoader, ServingRelease

log = logging.getLogger(__name__)

CANARY_EVAL_EVERY = 10
"""Observations between canary decisions (each reads the arm statistics from SQLite)."""


@dataclass(frozen=True)
class AdapterRef:
    """A registered adapter an operator asked to load: its resident name and its artifact."""

    name: str
    digest: str
    release: str | None = None
    """The release it was named through (``<domain>@<release id>``); None for a bare digest."""
    domain: str | None = None


_DIGEST_REF = re.compile(r"[0-9a-f]{12,64}")


def resolve_adapter(registry, ref: str, name: str | None = None) -> AdapterRef:
    """Resolve an operator's adapter reference against the release registry, never the disk.

    ``ref`` is either ``<domain>@<release id>`` (that release's adapter, resident under that
    very name, the one the release is served with) or an artifact digest some release names
    (64 hex digits, or a unique prefix of at least 12), resident under ``name`` (default
    ``adapter-<digest prefix>``). Names with ``@`` are the release loader's
    (docs/DESIGN.md "Serving": ``law@<release>``), so a bare digest can never be put under a
    release's name ahead of it: the loader would take whatever it found there as the release.

    Raises:
        InvalidInputError: A path or other malformed reference, an unknown or pruned release,
            a domain the release has no adapter for, a digest no release names (or several
            match), or a bad ``name``.
    """
    from twinloop.release.promotion import check_servable
    from twinloop.serving.adapters import validate_adapter_name

    if not isinstance(ref, str) or not ref:
        raise InvalidInputError(f"adapter = {ref!r}: name a registered adapter")
    if "@" in ref:
        domain, _, rid = ref.partition("@")
        if not registry.exists(rid):
            raise InvalidInputError(f"adapter = {ref!r}: unknown release {rid!r}")
        check_servable(registry, rid)
        adapters = registry.get(rid).adapters
        if domain not in adapters:
            has = ", ".join(sorted(adapters)) or "none"
            raise InvalidInputError(f"adapter = {ref!r}: release {rid} has no adapter for domain {domain!r} "
                                    f"(it has: {has})")
        if name is not None and name != ref:
            raise InvalidInputError(f"name = {name!r}: a release's adapter is resident only under {ref!r}, the name "
                                    "its release is served with")
        return AdapterRef(validate_adapter_name(ref), adapters[domain], rid, domain)
    if not _DIGEST_REF.fullmatch(ref):
        shown = ref if len(ref) <= 80 else ref[:77] + "..."
        raise InvalidInputError(f"adapter = {shown!r}: not a registered adapter; give its artifact digest (64 "
                                "lowercase hex digits, or a unique prefix of at least 12) or '<domain>@<release id>'"
                                " (folders on the server are never loaded)")
    found = registry.adapter_digests(ref)
    if not found:
        raise InvalidInputError(f"adapter = {ref!r}: no release in the registry names this digest")
    if len(found) > 1:
        raise InvalidInputError(f"adapter = {ref!r}: prefix of {len(found)} digests; give more digits")
    digest = next(iter(found))
    name = f"adapter-{digest[:12]}" if name is None else name
    validate_adapter_name(name)
    if "@" in name:
        raise InvalidInputError(f"name = {name!r}: names with '@' belong to releases' adapters; load a release's "
                                "adapter as '<domain>@<release id>' instead")
    return AdapterRef(name, digest)


def scratch_promoter(settings, registry, domains, foundation: Callable[[], Any], embedder: Callable[[], Any]
                     ) -> Promoter:
    """The :class:`Promoter` of a process that serves nothing (the CLI).

    Before committing, it loads the target release's adapters onto a scratch adapter registry
    on this process's base model — the check a server makes — so ``twinloop swap`` refuses
    exactly what ``POST /v1/admin/swap`` refuses. ``foundation`` and ``embedder`` are called
    only when a release must be loaded (a canary stop or an approval loads no model).
    """
    from twinloop.serving.adapters import AdapterRegistry

    loader: list[ReleaseLoader] = []

    def verify(rid: str) -> ServingRelease:
        if not loader:
            loader.append(ReleaseLoader(registry, AdapterRegistry(foundation()), embedder(),
                                        follow_index=settings.serving.follow_index))
        return loader[0].load(rid)

    return Promoter(registry, CanaryStore(registry.db), domains, settings.release, settings.canary, verify=verify)


class ReleaseControl:
    """Active/Shadow pinning, swap, rollback, canary, breaker and watch of one server."""

    def __init__(self, settings, registry, domains, loader: ReleaseLoader, *, active_id: str) -> None:
        """
        Args:
            settings: The process's settings (release, canary, breaker, rollback sections).
            registry: Release records, pointers and the audit log (the process's one instance).
            domains: Domain policies (approvals).
            loader: Makes releases servable on this process's engine (adapters resident).
            active_id: The committed Active release to start on.
        """
        self.settings = settings
        self.registry = registry
        self.events = registry.events
        self.domains = domains
        self.canaries = CanaryStore(registry.db)
        self.loader = loader
        # The one promotion path (release/promotion.py): the CLI uses the same Promoter with a
        # scratch loader, so both refuse the same releases with the same messages.
        self.promoter = Promoter(registry, self.canaries, domains, settings.release, settings.canary,
                                 verify=loader.load)
        self.faults = FaultInjector()
        self.breaker = CircuitBreaker(self.settings.breaker, on_change=self._breaker_changed)
        self._lock = threading.RLock()
        # Serialises swaps and rollbacks (an operator's, the watch's, the breaker's), so two
        # triggers of one incident make one rollback, not two.
        self._move_lock = threading.RLock()
        self._baseline = LatencyWindow(self.settings.rollback.window)
        self._watch: RollbackWatch | None = None
        self._since_eval = 0
        self._last_move: dict[str, Any] | None = None
        self._active = self.loader.load(active_id)
        self._canary = None
        self._shadow: ServingRelease | None = None
        self._sync_canary()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Outcomes go through a queue to one thread: recording a canary observation writes
        # SQLite and a trigger may swap adapters, neither of which may run on the event loop
        # or on the engine thread (adapters.py: never load/unload from an engine callback).
        self._outcomes: queue.Queue = queue.Queue()
        self._accounting: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="twinloop-release-follower", daemon=True)
            self._thread.start()
            self._accounting = threading.Thread(target=self._account_loop, name="twinloop-release-accounting",
                                                daemon=True)
            self._accounting.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._accounting is not None:
            self._outcomes.put(None)
            self._accounting.join(5)
            self._accounting = None

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every outcome observed so far is accounted (canary, watch, triggers)."""
        done = threading.Event()
        self._outcomes.put(done)
        if self._accounting is None:
            self._drain()
        done.wait(timeout)

    def _account_loop(self) -> None:
        while True:
            item = self._outcomes.get()
            if item is None:
                return
            self._handle(item)

    def _drain(self) -> None:
        while True:
            try:
                item = self._outcomes.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._handle(item)

    def _handle(self, item) -> None:
        if isinstance(item, threading.Event):
            item.set()
            return
        try:
            self._account(*item)
        except Exception:  # accounting must never stop; the next outcome is handled anyway
            log.exception("release accounting failed")

    def _follow(self) -> None:
        while not self._stop.wait(self.settings.release.poll_s):
            try:
                self.sync()
            except Exception:  # a bad poll must not kill the follower; the next one retries
                log.exception("release follower: sync failed")

    def sync(self) -> None:
        """Adopt pointer and canary changes another process committed (no writes here)."""
        committed = self.registry.pointer("active")
        if committed and committed != self._active.id:
            view = self.loader.load(committed)
            with self._lock:
                old, self._active = self._active, view
            log.info("active release changed in the registry", extra={"release": committed, "previous": old.id})
            self._after_move(view.id, old.id, watch=False)
        self._sync_canary()
        self._evaluate_canary()

    def _sync_canary(self) -> None:
        run = self.canaries.current()
        shadow = self.loader.load(run.release_id) if run is not None else None
        with self._lock:
            self._canary, self._shadow = run, shadow

    # -- pinning -----------------------------------------------------------------------------

    @property
    def active(self) -> ServingRelease:
        return self._active

    def pin(self, user_id: str | None) -> tuple[ServingRelease, str | None]:
        """The release a new request is served by, and its canary arm (None without a canary)."""
        with self._lock:
            run, shadow, active = self._canary, self._shadow, self._active
        if run is None or shadow is None:
            return active, None
        if run.mode == "split" and assign_arm(user_id, run.salt, run.ratio) == "shadow":
            return shadow, "shadow"
        return active, "active"

    def mirror_target(self, user_id: str | None) -> ServingRelease | None:
        """In mirror mode, the candidate that gets a copy of this request (its answer discarded)."""
        with self._lock:
            run, shadow = self._canary, self._shadow
        if run is None or shadow is None or run.mode != "mirror":
            return None
        return shadow if assign_arm(user_id, run.salt, run.ratio) == "shadow" else None

    # -- outcomes ----------------------------------------------------------------------------

    def admit(self, release: ServingRelease, arm: str | None) -> bool:
        """Whether the breaker lets a request to Active through (canary traffic bypasses it:
        the canary's own abort rule judges the candidate)."""
        return arm == "shadow" or self.breaker.allow()

    def observe(self, release: ServingRelease, arm: str | None, *, ok: bool, latency_ms: float,
                toxic: bool = False, request_id: str | None = None) -> None:
        """Account one finished request to the breaker (at once: it gates the next admission)
        and, on the accounting thread, to the canary and the rollback watch."""
        if arm != "shadow":
            if ok:
                self.breaker.record_success()
            else:
                self.breaker.record_failure()
        self._outcomes.put((release, arm, ok, latency_ms, toxic, request_id))
        if self._accounting is None:  # not started (a library caller): account inline
            self._drain()

    def _account(self, release: ServingRelease, arm: str | None, ok: bool, latency_ms: float, toxic: bool,
                 request_id: str | None) -> None:
        run = self._canary
        if arm is not None and run is not None:
            self.canaries.record(run.id, arm, ok=ok, latency_ms=latency_ms, toxic=toxic, request_id=request_id)
            self._since_eval += 1
            if not ok or self._since_eval >= CANARY_EVAL_EVERY:
                self._since_eval = 0
                self._evaluate_canary()
        if arm == "shadow":
            return
        watch = self._watch
        if watch is not None and not watch.expired():
            trigger = watch.observe(release.id, ok, latency_ms)
            if trigger is not None:
                self._auto_rollback(trigger.reason, trigger.release_id)
        elif ok and release.id == self._active.id:
            self._baseline.add(latency_ms)

    def _auto_rollback(self, reason: str, release_id: str) -> None:
        """Roll back from ``release_id`` — unless it is no longer Active (another trigger of
        the same incident, or an operator, moved first)."""
        with self._move_lock:
            if self._active.id != release_id:
                return
            try:
                self.rollback(actor="system:rollback-watch", reason=f"automatic: {reason}", automatic=True)
            except Exception as e:  # e.g. nothing to roll back to; the breaker still protects users
                log.error("automatic rollback failed: %s", e)

    def _breaker_changed(self, old: BreakerState, new: BreakerState, info: dict) -> None:
        action = {BreakerState.OPEN: "breaker.opened", BreakerState.HALF_OPEN: "breaker.half_open",
                  BreakerState.CLOSED: "breaker.closed"}[new]
        try:
            self.events.append(action, actor="system:breaker", subject=self._active.id,
                               reason=f"{old.value} → {new.value}", data={k: v for k, v in info.items()
                                                                         if isinstance(v, (int, float, str))})
        except Exception:
            log.exception("could not record breaker event")
        log.warning("circuit breaker %s", new.value, extra={"release": self._active.id})
        # Opening right after a swap means the new release is broken: roll back now rather
        # than wait for the watch's window (paper §5.5: the breaker "gives time for rollback").
        watch = self._watch
        if new == BreakerState.OPEN and watch is not None and not watch.expired():
            threading.Thread(target=self._auto_rollback,
                             args=("circuit breaker opened after the swap", watch.release_id), daemon=True).start()

    # -- moves -------------------------------------------------------------------------------

    def swap(self, rid: str | None, *, actor: str, reason: str = "", force: bool = False) -> dict[str, Any]:
        """Promote ``rid`` (gates checked by the registry), then move the in-memory pointer.

        Returns the move with ``commit_ms`` (registry transaction) and ``switch_ms`` (pointer move).
        """
        with self._move_lock:
            return self._swap(rid, actor=actor, reason=reason, force=force)

    def _swap(self, rid: str, *, actor: str, reason: str, force: bool) -> dict[str, Any]:
        done = self.promoter.swap(rid, actor=actor, reason=reason, force=force)
        crash_point("swap.after_commit")
        t0 = time.perf_counter()
        with self._lock:
            old, self._active = self._active, done.view
        switch_ms = (time.perf_counter() - t0) * 1000
        self._after_move(done.move.to_release, old.id, watch=True)
        return {**done.to_dict(), "switch_ms": switch_ms}

    def rollback(self, *, actor: str, reason: str = "", to: str | None = None,
                 automatic: bool = False) -> dict[str, Any]:
        """Point Active back at ``to`` or the previous release (loaded already, in the usual case)."""
        with self._move_lock:
            return self._rollback(actor=actor, reason=reason, to=to, automatic=automatic)

    def _rollback(self, *, actor: str, reason: str, to: str | None, automatic: bool) -> dict[str, Any]:
        done = self.promoter.rollback(actor=actor, reason=reason, to=to, automatic=automatic)
        crash_point("rollback.after_commit")
        t0 = time.perf_counter()
        with self._lock:
            old, self._active = self._active, done.view
        switch_ms = (time.perf_counter() - t0) * 1000
        self._after_move(done.move.to_release, old.id, watch=False)
        self.breaker.reset()
        return {**done.to_dict(), "switch_ms": switch_ms}

    def _after_move(self, new_id: str, old_id: str, *, watch: bool) -> None:
        with self._lock:
            if watch:
                self._watch = RollbackWatch(new_id, self.settings.rollback, self._baseline.p95())
            elif self._watch is not None and self._watch.release_id != new_id:
                self._watch = None
            self._baseline = LatencyWindow(self.settings.rollback.window)
            self._last_move = {"to": new_id, "from": old_id, "at": time.time()}
            run = self._canary
        if run is not None and run.release_id == new_id and self.canaries.current() is not None:
            # An operator swapped the candidate in while its canary ran: the canary ends here,
            # recorded as stopped (it did not decide anything).
            promotion.conclude_canary(self.registry, self.canaries, run, None, actor="system", stopped=True)
            self._sync_canary()
        # Keep Active, the previous release (instant rollback) and a running canary's candidate.
        keep = {new_id, old_id}
        if self._shadow is not None:
            keep.add(self._shadow.id)
        self.loader.keep_only(keep, timeout=0.0)

    # -- canary ------------------------------------------------------------------------------

    def start_canary(self, rid: str | None, *, actor: str, ratio: float | None = None, mode: str | None = None,
                     reason: str = ""):
        run = self.promoter.start_canary(rid, actor=actor, ratio=ratio, mode=mode, reason=reason)
        self._sync_canary()
        return run

    def stop_canary(self, *, actor: str) -> dict[str, Any]:
        report = self.promoter.stop_canary(actor=actor)
        self._sync_canary()
        return report

    def _evaluate_canary(self) -> None:
        run = self._canary
        if run is None:
            return
        active, shadow = self.canaries.stats(run.id)
        decision = decide(active, shadow, self.settings.canary)
        if decision.action == "continue":
            return
        with self._lock:  # one thread concludes; the others see the canary gone
            if self._canary is None or self._canary.id != run.id:
                return
            self._canary, self._shadow = None, None
        promotion.conclude_canary(self.registry, self.canaries, run, decision, actor="system:canary")
        log.info("canary %s", decision.action, extra={"release": run.release_id})
        if decision.action == "promote" and self.settings.release.auto_swap:
            problems = promotion.gate_problems(self.registry, self.domains, run.release_id, self.settings.release)
            if not problems:
                self.swap(run.release_id, actor="system:canary", reason="canary passed")
            else:
                log.info("canary passed; swap waits: %s", "; ".join(problems))

    def canary_status(self) -> dict[str, Any]:
        return self.promoter.canary_status()

    # -- adapters loaded by an operator (the /v1/lora routes) --------------------------------

    def load_adapter(self, ref: str, *, actor: str, name: str | None = None) -> dict[str, Any]:
        """Make a registered adapter resident (see :func:`resolve_adapter`), audited.

        Only content the registry names is loaded, from the artifact store with its SHA-256
        checked (docs/DESIGN.md "State"); a resident name is never replaced, so an adapter
        serving a release cannot be swapped under it. Errors name the artifact by digest,
        never by its place on disk.

        Raises:
            InvalidInputError: See :func:`resolve_adapter`.
            AdapterNameTakenError: The name is already resident.
            IntegrityError: The artifact is missing or fails its SHA-256 check.
            ModelLoadError: It does not fit the base, or holds NaN or Inf weights.
        """
        target = resolve_adapter(self.registry, ref, name)
        adapters = self.loader.adapters
        folder = self.registry.artifacts.get("adapter", target.digest)
        info = adapters.load(target.name, folder, replace=False, label=f"adapter artifact {target.digest[:12]}")
        data = {"digest": target.digest, "release": target.release, "domain": target.domain}
        try:
            self.events.append("adapter.loaded", actor=actor, subject=target.name, data=data,
                               reason=f"{target.domain}@{target.release}" if target.release else "by digest")
        except Exception:
            # An adapter nobody can account for must not stay resident.
            adapters.unload(target.name, timeout=0)
            raise
        log.info("adapter loaded by an operator", extra={"adapter": target.name, "digest": target.digest})
        return {**info.to_dict(), **data, "loaded": True}

    def unload_adapter(self, name: str, *, actor: str, timeout: float | None = None) -> dict[str, Any]:
        """Unload an adapter an operator loaded, once its requests finish, audited.

        An adapter of a release this server keeps (Active, the previous one, a canary's
        candidate) is refused: release control unloads it when it stops keeping the release.

        Raises:
            InvalidInputError: Not resident, or serving a kept release.
            TimeoutError: Requests still hold it after ``timeout``; it stays resident.
        """
        adapters = self.loader.adapters
        info = adapters.info().get(name)
        if info is None:
            raise InvalidInputError(f"adapter {name!r} is not loaded (resident: {adapters.names()})")
        holder = self._release_using(name)
        if holder is not None:
            raise InvalidInputError(f"adapter {name!r} serves release {holder}, which this server keeps (Active, "
                                    "previous or canary); it is unloaded when that release is no longer kept")
        adapters.unload(name, timeout=timeout)
        self.events.append("adapter.unloaded", actor=actor, subject=name, reason="",
                           data={"digest": info.source})
        return {"name": name, "deleted": True}

    def _release_using(self, name: str) -> str | None:
        with self._lock:
            views = [self._active, self._shadow]
        for view in views:
            if view is not None and name in view.adapters.values():
                return view.id
        # Every release the loader keeps is resident under "<domain>@<release id>".
        _, at, rid = name.partition("@")
        if at and rid in self.loader.resident():
            return rid
        return None

    # -- faults and status -------------------------------------------------------------------

    def inject_fault(self, fault: Fault, *, actor: str) -> Fault:
        self.faults.set(fault)
        self.events.append("fault.injected", actor=actor, subject=fault.release_id,
                           reason=f"error_rate={fault.error_rate:g} delay_ms={fault.delay_ms:g}", data=fault.to_dict())
        return fault

    def status(self) -> dict[str, Any]:
        watch = self._watch
        return {
            "active": self._active.id,
            "shadow": self.registry.pointer("shadow"),
            "previous": self.registry.previous_active(),
            "resident": self.loader.resident(),
            "canary": self._canary.to_dict() if self._canary else None,
            "breaker": self.breaker.snapshot(),
            "watch": watch.snapshot() if watch is not None and not watch.expired() else None,
            "faults": [f.to_dict() for f in self.faults.list()],
            "last_move": self._last_move,
        }
