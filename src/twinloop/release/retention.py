"""Snapshot retention: which releases and adapter artifacts may be deleted (paper,
App. A: "Maximum snapshots: 10", 30 days).

The rule, read as two caps (an operator who sets "maximum 10 snapshots" expects never to find
50 on disk after a busy week, and one who sets "30 days" expects a month-old failed candidate
to be gone even on a quiet system):

1. **Protected** releases are never removed: Active, Shadow, their parents and the rollback
   target (:meth:`ReleaseRegistry.protected`). They do not count towards the cap.
2. Of the other releases, newest first, a release is **kept** only while it is both among the
   newest ``max_snapshots`` *and* no older than ``max_age_days``; exceeding either limit
   removes it.
3. **Lineage is never broken**: a release that a kept release descends from is not deleted. A
   release id is the hash of its content, parent included, so a child cannot be re-parented
   without becoming another release, and ``releases.parent`` is a foreign key. Such an
   ancestor beyond the limits becomes a **lineage record** (status ``pruned``): its row,
   reports and lineage stay, its adapters are deleted (unless a snapshot still names them).
   So the line of past Active releases no longer costs disk, and the registry refuses to
   swap or roll back to a pruned release (it has nothing to serve). These are listed apart
   (``kept_for_lineage``).

Removing a release deletes its row with its gate reports and approvals; the pointer history
(``pointer_moves``) is audit data and stays. :meth:`ReleaseRegistry.previous_active` joins
``releases``, so it never offers a removed release as a rollback target.

Adapter artifacts that no remaining release names are then deleted. A folder that no release
row names at all, removed or remaining (an adapter written by a training job that has not
recorded its candidate yet, or left by a crash), is deleted only once it is older than
``orphan_grace``, so retention never races a running job.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from twinloop.kernel.atomic import fsync_dir
from twinloop.kernel.config import RetentionConfig
from twinloop.release.registry import ReleaseRegistry

ORPHAN_GRACE = timedelta(hours=1)
"""An adapter folder no release has ever named is left alone this long: a training job records
its candidate seconds after writing the adapter, so an hour is ample yet bounds the leak."""


@dataclass
class PrunePlan:
    """What retention removes (or, for a dry run, would remove)."""

    removed: list[str] = field(default_factory=list)
    """Release ids whose rows are deleted, with their reports and approvals."""
    artifacts: list[str] = field(default_factory=list)
    """Adapter digests whose folders are deleted: named by no remaining release."""
    kept: list[str] = field(default_factory=list)
    """Unprotected releases within both limits, newest first."""
    kept_for_lineage: list[str] = field(default_factory=list)
    """Releases beyond the limits kept because a kept release descends from them."""
    protected: list[str] = field(default_factory=list)
    """Active, Shadow, their parents and the rollback target."""
    dry_run: bool = False

    @property
    def empty(self) -> bool:
        return not self.removed and not self.artifacts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_time(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _stored_adapters(registry: ReleaseRegistry) -> dict[str, Path]:
    """Digest → folder of every committed adapter artifact (temporaries start with a dot)."""
    root = registry.artifacts.root / "adapter"
    if not root.is_dir():
        return {}
    return {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def plan_prune(registry: ReleaseRegistry, cfg: RetentionConfig, now: datetime | None = None, *,
               orphan_grace: timedelta = ORPHAN_GRACE) -> PrunePlan:
    """Decide what retention removes, changing nothing.

    Args:
        registry: The release registry (its database and artifact store).
        cfg: ``max_snapshots`` and ``max_age_days`` (paper, App. A).
        now: The time ages are measured at (default: the current UTC time); a naive
            datetime is read as UTC.
        orphan_grace: How old an adapter folder that no release ever named must be before it
            is collected.

    Returns:
        The plan; see the module docstring for the rule.
    """
    now = datetime.now(UTC) if now is None else (now if now.tzinfo else now.replace(tzinfo=UTC))
    max_age = timedelta(days=cfg.max_age_days)
    # Same order as ReleaseRegistry.list: newest first, insertion order breaking ties.
    rows = registry.db.conn.execute(
        "SELECT id, parent, created_at, adapters, status FROM releases ORDER BY created_at DESC, rowid DESC").fetchall()
    parent = {r["id"]: r["parent"] for r in rows}
    protected = registry.protected()

    kept: list[str] = []
    unprotected = [r for r in rows if r["id"] not in protected]
    for rank, row in enumerate(unprotected):
        if rank < cfg.max_snapshots and now - _parse_time(row["created_at"]) <= max_age:
            kept.append(row["id"])

    # Lineage closure: every ancestor of a surviving release survives (module docstring, 3).
    survivors = set(protected) | set(kept)
    for rid in list(survivors):
        p = parent.get(rid)
        while p is not None and p not in survivors:
            survivors.add(p)
            p = parent.get(p)
    kept_for_lineage = [r["id"] for r in unprotected if r["id"] in survivors and r["id"] not in kept
                        and r["status"] != "pruned"]
    removed = [r["id"] for r in rows if r["id"] not in survivors]

    # Adapters stay while a snapshot (protected or kept) names them; lineage records and
    # removed releases give theirs up.
    snapshots = set(protected) | set(kept)
    named_by_survivors: set[str] = set()
    named_by_removed: set[str] = set()
    for row in rows:
        digests = set(json.loads(row["adapters"]).values())
        (named_by_survivors if row["id"] in snapshots else named_by_removed).update(digests)
    artifacts = []
    for digest, folder in sorted(_stored_adapters(registry).items()):
        if digest in named_by_survivors:
            continue
        if digest in named_by_removed:
            artifacts.append(digest)
            continue
        # Named by no row: an orphan. Its folder's mtime is when its files were written.
        try:
            written = datetime.fromtimestamp(folder.stat().st_mtime, UTC)
        except FileNotFoundError:
            continue
        if now - written > orphan_grace:
            artifacts.append(digest)
    return PrunePlan(removed=removed, artifacts=artifacts, kept=kept, kept_for_lineage=kept_for_lineage,
                     protected=sorted(protected))


def _delete_folder(folder: Path) -> None:
    """Rename, then remove: a crash half-way leaves a dot-named temporary that
    :meth:`ArtifactStore.clean_temporaries` removes, never a half-deleted artifact at its address."""
    tmp = folder.with_name(f".{folder.name[:16]}.tmp-prune-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, tmp)
    except FileNotFoundError:
        return  # another prune got there first
    fsync_dir(folder.parent)
    shutil.rmtree(tmp, ignore_errors=True)


def prune(registry: ReleaseRegistry, cfg: RetentionConfig, *, actor: str, now: datetime | None = None,
          dry_run: bool = False, orphan_grace: timedelta = ORPHAN_GRACE) -> PrunePlan:
    """Apply retention: delete release rows and unreferenced adapter artifacts.

    The plan is computed inside the write transaction, so no release can be recorded or a
    pointer moved between deciding and deleting. The rows, their reports and approvals, and
    one ``release.pruned`` audit event commit together; the artifact folders are deleted
    after the commit, so a crash in between leaves only unreferenced folders, which the next
    run collects — never a release naming a deleted adapter. A plan that removes nothing
    writes no event, so running retention twice is a no-op.

    Args:
        registry: The release registry.
        cfg: The retention limits.
        actor: Who runs it (``cli:<user>``, ``system:retention``), for the audit event.
        now: The time ages are measured at (default: now, UTC).
        dry_run: Only compute and return the plan.
        orphan_grace: See :func:`plan_prune`.
    """
    if dry_run:
        plan = plan_prune(registry, cfg, now, orphan_grace=orphan_grace)
        plan.dry_run = True
        return plan
    with registry.db.transaction() as conn:
        plan = plan_prune(registry, cfg, now, orphan_grace=orphan_grace)
        if plan.empty:
            return plan
        if plan.removed:
            marks = ",".join("?" * len(plan.removed))
            # Reports and approvals reference their release, so they go first. The releases go
            # in one statement: SQLite checks the parent foreign key at the end of a statement,
            # so a removed child and its removed parent may be deleted in any order.
            for table in ("release_reports", "release_approvals"):
                conn.execute(f"DELETE FROM {table} WHERE release_id IN ({marks})", plan.removed)
            conn.execute(f"DELETE FROM releases WHERE id IN ({marks})", plan.removed)
        if plan.kept_for_lineage:
            marks = ",".join("?" * len(plan.kept_for_lineage))
            conn.execute(f"UPDATE releases SET status='pruned' WHERE id IN ({marks})", plan.kept_for_lineage)
        registry.events.append(
            "release.pruned", actor=actor, conn=conn,
            reason=f"retention: keep {cfg.max_snapshots} newest snapshots within {cfg.max_age_days} days",
            data={"removed": plan.removed, "artifacts": plan.artifacts, "kept_for_lineage": plan.kept_for_lineage,
                  "max_snapshots": cfg.max_snapshots, "max_age_days": cfg.max_age_days})
    stored = _stored_adapters(registry)
    for digest in plan.artifacts:
        if digest in stored:
            _delete_folder(stored[digest])
    return plan
