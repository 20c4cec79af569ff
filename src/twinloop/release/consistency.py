"""Is the committed release state consistent? A SIGKILL at any step of the release flow must
leave it so (docs/DESIGN.md "State"). Used by ``twinloop status`` and by the crash tests.

Every invariant the release flow maintains, checked from what is on disk:

- each pointer names an existing release, and the Active one is marked active (or base);
- no other release is marked active;
- the newest Active pointer move names the current Active release (history and pointer agree);
- every adapter of Active and Shadow exists and passes its SHA-256 check;
- a running canary names an existing release marked ``canary``, and is the only one;
- the audit log's hash chain is intact, and every pointer move has its audit event.
"""

from __future__ import annotations

from twinloop.kernel.errors import IntegrityError


def check_consistency(registry, canaries=None) -> list[str]:
    """Every broken invariant, in words (empty: consistent)."""
    problems: list[str] = []
    db = registry.db
    active = registry.pointer("active")
    for name in ("active", "shadow"):
        rid = registry.pointer(name)
        if rid is None:
            continue
        if not registry.exists(rid):
            problems.append(f"the {name} pointer names a missing release {rid}")
            continue
        for domain, digest in registry.get(rid).adapters.items():
            try:
                registry.artifacts.get("adapter", digest)
            except IntegrityError as e:
                problems.append(f"{name} release {rid}, domain {domain}: {e}")
    if active is not None and registry.exists(active):
        status = registry.get(active).status
        if status not in ("active", "base"):
            problems.append(f"Active release {active} has status {status!r}")
    others = [r[0] for r in db.conn.execute("SELECT id FROM releases WHERE status='active' AND id != ?",
                                            (active or "",)).fetchall()]
    if others:
        problems.append(f"release(s) {', '.join(others)} are marked active but Active is {active}")
    last = registry.history("active", 1)
    if active is not None and (not last or last[0]["release_id"] != active):
        problems.append("the Active pointer and its move history disagree")
    moves = db.conn.execute("SELECT COUNT(*) FROM pointer_moves WHERE name='active'").fetchone()[0]
    logged = db.conn.execute("SELECT COUNT(*) FROM events WHERE action IN "
                             "('swap','rollback','rollback.automatic') OR "
                             "(action='release.base')").fetchone()[0]
    if moves != logged:
        problems.append(f"{moves} Active pointer moves but {logged} swap/rollback/base events in the audit log")
    if canaries is not None:
        running = [r for r in canaries.list(1000) if r.status == "running"]
        if len(running) > 1:
            problems.append(f"{len(running)} canaries are running")
        for run in running:
            if not registry.exists(run.release_id):
                problems.append(f"running canary {run.id} names a missing release {run.release_id}")
            elif registry.get(run.release_id).status != "canary":
                problems.append(f"running canary {run.id}: release {run.release_id} has status "
                                f"{registry.get(run.release_id).status!r}, not 'canary'")
    check = registry.events.verify()
    if not check.ok:
        problems += [f"audit log: {p}" for p in check.problems]
    return problems
