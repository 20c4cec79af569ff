"""Content-addressed artifacts and release records with pointers."""

from __future__ import annotations

import pytest

from twinloop.kernel.db import Database
from twinloop.kernel.errors import IntegrityError, InvalidInputError
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.registry import ReleaseRegistry


def adapter_folder(tmp_path, name="a", payload=b"weights-1"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


def test_same_content_same_address_and_verified(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    a = store.put_dir(adapter_folder(tmp_path, "a"), "adapter")
    b = store.put_dir(adapter_folder(tmp_path, "b"), "adapter")
    c = store.put_dir(adapter_folder(tmp_path, "c", b"weights-2"), "adapter")
    assert a.digest == b.digest != c.digest
    assert (store.get("adapter", a.digest) / "adapter_model.safetensors").read_bytes() == b"weights-1"
    assert not list((tmp_path / "artifacts" / "adapter").glob(".*")), "no temporary folder left"


@pytest.mark.parametrize("damage", ["edit", "delete", "extra-file"])
def test_damaged_artifact_is_refused(tmp_path, damage):
    store = ArtifactStore(tmp_path / "artifacts")
    art = store.put_dir(adapter_folder(tmp_path), "adapter")
    target = art.path / "adapter_model.safetensors"
    if damage == "edit":
        target.write_bytes(b"weights-X")
    elif damage == "delete":
        target.unlink()
    else:
        (art.path / "backdoor.py").write_text("print(1)")
    with pytest.raises(IntegrityError, match="SHA-256"):
        store.get("adapter", art.digest)


def test_release_ids_are_content_addresses_and_pointers_move(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    reg = ReleaseRegistry(Database(tmp_path / "t.db"), store)
    art = store.put_dir(adapter_folder(tmp_path), "adapter")
    r1 = reg.create_candidate(None, {"law": art.digest}, 3, '{"router": 1}', {"seed": 0})
    again = reg.create_candidate(None, {"law": art.digest}, 3, '{"router": 1}', {"seed": 0})
    assert r1.id == again.id and r1.id.startswith("rel_") and len(reg.list()) == 1
    r2 = reg.create_candidate(r1.id, {"law": art.digest}, 4, '{"router": 1}', {"seed": 0})
    assert r2.id != r1.id and r2.parent == r1.id
    assert reg.pointer("active") is None
    reg.set_pointer("active", r1.id)
    reg.set_pointer("shadow", r2.id)
    assert (reg.pointer("active"), reg.pointer("shadow")) == (r1.id, r2.id)
    with pytest.raises(InvalidInputError, match="unknown release 'rel_nope'"):
        reg.set_pointer("active", "rel_nope")
    with pytest.raises(InvalidInputError, match="unknown pointer 'canary'"):
        reg.pointer("canary")


def test_candidate_needs_verified_adapters(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    reg = ReleaseRegistry(Database(tmp_path / "t.db"), store)
    with pytest.raises(IntegrityError):
        reg.create_candidate(None, {"law": "0" * 64}, 1, "{}", {})


# -- metadata, pointers and lineage ----------------------------------------------------------


@pytest.fixture
def reg(tmp_path) -> ReleaseRegistry:
    return ReleaseRegistry(Database(tmp_path / "t.db"), ArtifactStore(tmp_path / "artifacts"))


def chain(reg, tmp_path, n: int) -> list[str]:
    """base → r1 → … → rn, each with its own adapter."""
    ids = [reg.ensure_base("{}", 1, "tiny").id]
    for i in range(1, n + 1):
        art = reg.artifacts.put_dir(adapter_folder(tmp_path, f"r{i}", f"w{i}".encode()), "adapter")
        ids.append(reg.create_candidate(ids[-1], {"law": art.digest}, 1, "{}", {"i": i}).id)
    return ids


def test_set_pointer_writes_history_and_event_together(reg, tmp_path):
    base, r1 = chain(reg, tmp_path, 1)
    previous = reg.set_pointer("active", r1, actor="cli:ops", reason="promoted", event="swap",
                               status={r1: "active", base: "superseded"}, data={"forced": False})
    assert previous == base
    move = reg.history("active")[0]
    assert (move["release_id"], move["previous"], move["actor"], move["reason"]) == (r1, base, "cli:ops", "promoted")
    ev = reg.events.list(action="swap")[0]
    assert ev.subject == r1 and ev.data == {"pointer": "active", "from": base, "to": r1, "forced": False}
    assert (reg.get(r1).status, reg.get(base).status) == ("active", "superseded")


def test_set_pointer_is_all_or_nothing(reg, tmp_path):
    base, r1 = chain(reg, tmp_path, 1)
    moves, events = len(reg.history("active")), reg.events.count()
    # The audit event fails inside the transaction: pointer, history and status stay old.
    with pytest.raises(InvalidInputError, match="unknown event action 'swapp'"):
        reg.set_pointer("active", r1, event="swapp", status={r1: "active"})
    assert reg.pointer("active") == base and len(reg.history("active")) == moves
    assert reg.events.count() == events and reg.get(r1).status == "candidate"
    with pytest.raises(InvalidInputError, match="unknown release status 'live'"):
        reg.set_pointer("active", r1, status={r1: "live"})
    assert reg.pointer("active") == base


def test_previous_active_skips_rolled_back_releases(reg, tmp_path):
    base, r1, r2 = chain(reg, tmp_path, 2)
    assert reg.previous_active() is None  # only the base was ever Active
    reg.set_pointer("active", r1)
    reg.set_pointer("active", r2)
    assert reg.previous_active() == r1
    reg.set_pointer("active", r1, status={r2: "rolled_back"})  # a rollback from r2
    assert reg.previous_active() == base  # not r2, though it was Active more recently
    assert reg.protected() == {r1, base}


def test_ensure_base_is_idempotent_and_sets_active(reg):
    base = reg.ensure_base('{"router": 1}', 2, "tiny")
    assert base.status == "base" and base.adapters == {} and base.parent is None
    assert reg.pointer("active") == base.id
    assert reg.ensure_base('{"router": 1}', 2, "tiny") == base
    assert reg.ensure_base('{"router": 2}', 9, "other") == base  # Active exists: nothing new
    assert len(reg.list()) == 1 and len(reg.history("active")) == 1
    assert len(reg.events.list(action="release.base")) == 1


def test_reports_newest_first_with_status_and_event(reg, tmp_path):
    _base, r1 = chain(reg, tmp_path, 1)
    assert reg.latest_report(r1, "qa") is None
    reg.add_report(r1, "qa", False, {"failures": ["law pass rate 0.5"]}, status="qa_failed", event="qa.failed",
                   actor="system:qa", reason="pass rate")
    reg.add_report(r1, "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    reg.add_report(r1, "canary", True, {"reasons": []})
    assert [(r["kind"], r["passed"]) for r in reg.reports(r1)] == [("canary", True), ("qa", True), ("qa", False)]
    assert reg.latest_report(r1, "qa")["passed"] is True
    assert reg.reports(r1, "qa")[1]["report"] == {"failures": ["law pass rate 0.5"]}
    assert reg.get(r1).status == "qa_passed"
    assert [e.action for e in reg.events.list(action="qa.")] == ["qa.passed", "qa.failed"]
    with pytest.raises(InvalidInputError, match="unknown report kind 'load'"):
        reg.add_report(r1, "load", True, {})
    with pytest.raises(InvalidInputError, match="unknown release 'rel_nope'"):
        reg.add_report("rel_nope", "qa", True, {})


def test_approving_twice_is_one_approval_and_one_event(reg, tmp_path):
    _base, r1 = chain(reg, tmp_path, 1)
    reg.approve(r1, "cli:alice", "reviewed the law answers")
    reg.approve(r1, "cli:alice", "again")
    reg.approve(r1, "cli:bob")
    assert sorted((a["actor"], a["note"]) for a in reg.approvals(r1)) == [("cli:alice", "reviewed the law answers"),
                                                                    ("cli:bob", "")]
    assert len(reg.events.list(action="release.approved")) == 2


def test_lineage_queries(reg, tmp_path):
    base, r1, r2 = chain(reg, tmp_path, 2)
    art = reg.get(r2).adapters["law"]
    sibling = reg.create_candidate(r1, {"law": art}, 1, "{}", {
        "domains": {"law": {"samples": ["a" * 64, "b" * 64]}, "medical": {"samples": []}}}).id
    assert [r.id for r in reg.ancestors(r2)] == [r1, base]
    assert reg.ancestors(base) == []
    assert {r.id for r in reg.children(r1)} == {r2, sibling}  # same millisecond possible: no order asserted
    assert reg.children(r2) == []
    assert reg.training_data(sibling) == {"law": ["a" * 64, "b" * 64], "medical": []}
    assert reg.training_data(r1) == {}
    with pytest.raises(InvalidInputError, match="unknown release 'rel_nope'"):
        reg.children("rel_nope")
