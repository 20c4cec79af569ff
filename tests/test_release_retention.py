"""Snapshot retention: protected releases survive, the count and age caps, lineage kept,
unreferenced adapters collected (paper App. A)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from twinloop.kernel.config import RetentionConfig
from twinloop.kernel.db import Database
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.registry import ReleaseRegistry
from twinloop.release.retention import plan_prune, prune

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


class World:
    """A registry whose releases get explicit ages (days before NOW)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.store = ArtifactStore(tmp_path / "artifacts")
        self.reg = ReleaseRegistry(Database(tmp_path / "t.db"), self.store)
        self.n = 0

    def adapter(self, payload: str) -> str:
        self.n += 1
        folder = self.tmp / f"src{self.n}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text('{"r": 16}')
        (folder / "adapter_model.safetensors").write_bytes(payload.encode())
        return self.store.put_dir(folder, "adapter").digest

    def release(self, name: str, days: float, parent: str | None = None, adapters: dict[str, str] | None = None) -> str:
        adapters = adapters if adapters is not None else {"law": self.adapter(name)}
        rel = self.reg.create_candidate(parent, adapters, 1, "{}", {"name": name})
        at = (NOW - timedelta(days=days)).isoformat(timespec="milliseconds")
        self.reg.db.conn.execute("UPDATE releases SET created_at=? WHERE id=?", (at, rel.id))
        return rel.id

    def ids(self) -> set[str]:
        return {r[0] for r in self.reg.db.conn.execute("SELECT id FROM releases")}

    def folders(self) -> set[str]:
        return {p.name for p in (self.tmp / "artifacts" / "adapter").iterdir()}


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def build_history(w: World) -> dict[str, str]:
    """base → A1 → A2 → A3 (successive Actives), Shadow S trained from A3, a superseded side
    branch Y, and twelve failed candidates F1..F12 (1..12 days old) plus one 40 days old."""
    r: dict[str, str] = {}
    r["B"] = w.release("B", 60, adapters={})
    r["A1"] = w.release("A1", 50, r["B"])
    r["Y"] = w.release("Y", 45, r["A1"])
    r["A2"] = w.release("A2", 44, r["A1"])
    r["A3"] = w.release("A3", 20, r["A2"])
    r["S"] = w.release("S", 0.5, r["A3"])
    for i in range(1, 13):
        r[f"F{i}"] = w.release(f"F{i}", i, r["A3"])
    r["OLD"] = w.release("OLD", 40, r["A2"])
    for name in ("B", "A1", "Y", "A2", "A3"):
        w.reg.set_pointer("active", r[name], actor="cli:ops", reason=f"to {name}")
    w.reg.set_pointer("shadow", r["F5"], actor="system:shadow")  # history: F5 was once Shadow
    w.reg.set_pointer("shadow", r["S"], actor="system:shadow")
    w.reg.add_report(r["F12"], "qa", False, {"failures": ["law pass rate 0.2"]}, status="qa_failed")
    w.reg.approve(r["F12"], "cli:alice", "looked fine")
    return r


def test_protected_survive_and_count_and_age_caps(world):
    r = build_history(world)
    # K reuses F11's adapter: when F11 goes, that adapter must stay.
    keeper = world.release("K", 0.1, r["A3"], adapters={"law": world.reg.get(r["F11"]).adapters["law"]})
    digest = {name: world.reg.get(rid).adapters.get("law") for name, rid in r.items()}
    plan = prune(world.reg, RetentionConfig(max_snapshots=10, max_age_days=30), actor="cli:ops", now=NOW)

    assert set(plan.protected) == {r["A3"], r["A2"], r["S"]}  # Active, its parent = rollback target, Shadow
    # The ten newest unprotected: K, F1..F9. F10..F12 are beyond the count, OLD and Y beyond the age.
    assert plan.kept == [keeper] + [r[f"F{i}"] for i in range(1, 10)]
    assert set(plan.removed) == {r["F10"], r["F11"], r["F12"], r["OLD"], r["Y"]}
    # Lineage: A2's parent chain up to the base survives though older than 30 days.
    assert set(plan.kept_for_lineage) == {r["A1"], r["B"]}
    assert world.ids() == {r[n] for n in ("B", "A1", "A2", "A3", "S")} | set(plan.kept)
    assert world.reg.ancestors(r["S"])[-1].id == r["B"]

    # Lineage records keep their rows but give up their adapters (A1's; B has none).
    assert {world.reg.get(r[n]).status for n in ("A1", "B")} == {"pruned"}
    assert set(plan.artifacts) == {digest[n] for n in ("F10", "F12", "OLD", "Y", "A1")}
    assert digest["F11"] in world.folders()
    assert not set(plan.artifacts) & world.folders()
    for rid in world.ids():
        if world.reg.get(rid).status == "pruned":
            continue
        for d in world.reg.get(rid).adapters.values():
            world.store.get("adapter", d)  # every remaining snapshot still loads
    assert not [p for p in (world.tmp / "artifacts" / "adapter").iterdir() if p.name.startswith(".")]


def test_prune_is_logged_once_and_a_second_run_is_a_no_op(world):
    build_history(world)
    cfg = RetentionConfig()
    before = world.reg.events.count()
    plan = prune(world.reg, cfg, actor="cli:ops", now=NOW)
    events = world.reg.events.list(action="release.pruned")
    assert len(events) == 1 and world.reg.events.count() == before + 1
    ev = events[0]
    assert ev.actor == "cli:ops" and ev.data["removed"] == plan.removed and ev.data["artifacts"] == plan.artifacts
    assert ev.data["max_snapshots"] == 10 and ev.data["max_age_days"] == 30
    assert world.reg.events.verify().ok

    again = prune(world.reg, cfg, actor="cli:ops", now=NOW)
    assert again.empty and again.kept == plan.kept
    assert world.reg.events.count() == before + 1


def test_dry_run_changes_nothing(world):
    build_history(world)
    ids, folders, n_events = world.ids(), world.folders(), world.reg.events.count()
    plan = prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW, dry_run=True)
    # Removed: F11, F12, OLD, Y; artifacts: theirs plus the lineage record A1's.
    assert plan.dry_run and len(plan.removed) == 4 and len(plan.artifacts) == 5
    assert (world.ids(), world.folders(), world.reg.events.count()) == (ids, folders, n_events)


def test_removed_rows_take_reports_and_approvals_but_not_pointer_history(world):
    r = build_history(world)
    prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW)
    assert not world.reg.exists(r["F12"])
    conn = world.reg.db.conn
    assert conn.execute("SELECT COUNT(*) FROM release_reports WHERE release_id=?", (r["F12"],)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM release_approvals WHERE release_id=?", (r["F12"],)).fetchone()[0] == 0
    assert [m["release_id"] for m in world.reg.history("active")][::-1] == [r[n] for n in ("B", "A1", "Y", "A2", "A3")]
    assert r["F5"] in [m["release_id"] for m in world.reg.history("shadow")]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_previous_active_skips_a_removed_release(world):
    r = build_history(world)
    prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW)
    assert not world.reg.exists(r["Y"])  # was Active once, then superseded; a side branch
    world.reg.set_pointer("active", r["A2"], status={r["A3"]: "rolled_back"})
    # Y is gone and A1, B are lineage records without adapters: nothing servable is left to
    # roll back to, and previous_active never offers a dangling or pruned id.
    assert world.reg.get(r["A1"]).status == "pruned"
    assert world.reg.previous_active() is None


@pytest.mark.parametrize("max_snapshots, max_age_days, removed", [
    (10, 30, {"old"}),             # under the count, over the age
    (2, 365, {"y2", "old"}),       # under the age, over the count
    (2, 30, {"y2", "old"}),
    (10, 365, set()),
], ids=["age-only", "count-only", "both", "neither"])
def test_either_limit_removes(world, max_snapshots, max_age_days, removed):
    base = world.release("base", 0.01, adapters={})
    world.reg.set_pointer("active", base)
    names = {world.release(f"y{i}", 1 + i / 10, base): f"y{i}" for i in range(3)}
    names[world.release("old", 31, base)] = "old"
    plan = plan_prune(world.reg, RetentionConfig(max_snapshots=max_snapshots, max_age_days=max_age_days), NOW)
    assert {names[rid] for rid in plan.removed} == removed
    assert base in plan.protected


def test_unprotected_ancestor_of_a_kept_release_stays(world):
    base = world.release("base", 0.01, adapters={})
    world.reg.set_pointer("active", base)
    old = world.release("old", 90, base)
    child = world.release("child", 1, old)  # kept (young), so its 90-day-old parent stays
    plan = prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW)
    assert plan.removed == [] and plan.kept == [child] and plan.kept_for_lineage == [old]
    # A lineage record: row kept, adapters gone, and never served again.
    assert world.reg.get(old).status == "pruned"
    assert world.reg.get(old).adapters["law"] in plan.artifacts
    from twinloop.kernel.errors import InvalidInputError
    from twinloop.release.promotion import check_servable

    with pytest.raises(InvalidInputError, match="pruned"):
        check_servable(world.reg, old)
    assert prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW).empty  # a second run: nothing


def test_orphan_adapters_are_collected_after_a_grace(world):
    base = world.release("base", 0.01, adapters={})
    world.reg.set_pointer("active", base)
    stale, fresh = world.adapter("crashed job"), world.adapter("job still running")
    for digest, age in ((stale, timedelta(hours=2)), (fresh, timedelta(minutes=10))):
        t = (NOW - age).timestamp()
        os.utime(world.store.root / "adapter" / digest, (t, t))
    plan = prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW)
    assert plan.artifacts == [stale] and world.folders() == {fresh}


def test_a_removed_parent_and_child_go_together(world):
    base = world.release("base", 0.01, adapters={})
    world.reg.set_pointer("active", base)
    parent = world.release("parent", 60, base)
    child = world.release("child", 50, parent)
    grandchild = world.release("grandchild", 40, child)
    plan = prune(world.reg, RetentionConfig(), actor="cli:ops", now=NOW)
    assert set(plan.removed) == {parent, child, grandchild}  # the parent foreign key holds at commit
    assert world.ids() == {base}
