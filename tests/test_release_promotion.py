"""One promotion path: ``twinloop swap`` / ``rollback`` and the admin API go through the same
``Promoter`` — same gates, same load check before the commit, same messages, same events."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_release_crash import twinloop, world  # noqa: F401  (world is a fixture)
from test_release_flow import Server, make_candidate, pass_gates

from twinloop.kernel.errors import InvalidInputError
from twinloop.release.promotion import GateError, Promoter, ReleaseLoadError


def _broken_candidate(world, tmp_path) -> str:  # noqa: F811
    """A candidate whose adapter artifact is stored intact (its SHA-256 checks out) but does
    not load onto the base: its LoRA targets modules the base does not have."""
    rt = world["rt"]
    reg = rt.releases
    good = reg.artifacts.get("adapter", reg.get(world["rid"]).adapters["fin"])
    bad = tmp_path / "bad-adapter"
    shutil.copytree(good, bad, ignore=shutil.ignore_patterns("MANIFEST*", "manifest*"))
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    art = reg.artifacts.put_dir(bad, "adapter")
    active = reg.pointer("active")
    rel = reg.create_candidate(active, {"fin": art.digest}, rt.knowledge.current_revision(),
                               reg.get(active).router_json, {"test": "broken"})
    pass_gates(rt, rel.id)
    return rel.id


def _pointer_state(rt) -> tuple:
    conn = rt.db.conn
    return (rt.releases.pointer("active"), conn.execute("SELECT COUNT(*) FROM pointer_moves").fetchone()[0],
            len(rt.events.list(limit=1000, action="swap")))


def test_cli_swap_refuses_an_artifact_that_does_not_load_as_the_api_does(world, tmp_path):  # noqa: F811
    bad = _broken_candidate(world, tmp_path)
    before = _pointer_state(world["rt"])

    cli = twinloop(world, "swap", bad)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    cli_message = cli.stderr.strip().splitlines()[-1]
    assert f"release {bad} cannot be promoted: its adapters do not load" in cli_message
    assert _pointer_state(world["rt"]) == before

    with Server(world["settings"]) as server:
        r = server.http.post("/v1/admin/swap", json={"release": bad})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "release_unloadable"
        assert err["message"] in cli_message  # the same words, from the same library call
        assert server.service.active.id == world["base"]
    assert _pointer_state(world["rt"]) == before


def test_cli_rollback_only_returns_to_a_release_that_was_active(world, tmp_path):  # noqa: F811
    rt, rid = world["rt"], world["rid"]
    pass_gates(rt, rid)
    assert twinloop(world, "swap", rid).returncode == 0
    fresh = make_candidate(rt, tmp_path, domain="law", seed=7)  # trained, never gated, never Active
    res = twinloop(world, "rollback", "--to", fresh)
    assert res.returncode == 2 and "was never Active" in res.stderr
    assert rt.releases.pointer("active") == rid
    back = json.loads(twinloop(world, "rollback", "--to", world["base"], "--json").stdout)
    assert back["to_release"] == world["base"] and back["action"] == "rollback"
    again = twinloop(world, "rollback", "--to", rid)  # rolled back: never again by rollback
    assert again.returncode == 2 and "was rolled back" in again.stderr


class _Loads:
    """A verify callback that records what it was asked to load (and can fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, rid: str) -> str:
        self.calls.append(rid)
        if self.fail:
            from twinloop.kernel.errors import IntegrityError

            raise IntegrityError(f"artifact adapter/{rid[:8]} fails its SHA-256 check")
        return f"view:{rid}"


def _promoter(world, verify) -> Promoter:  # noqa: F811
    from twinloop.release.canary import CanaryStore

    rt = world["rt"]
    return Promoter(rt.releases, CanaryStore(rt.db), rt.domains, rt.settings.release, rt.settings.canary, verify)


@pytest.mark.parametrize(("force", "says"), [(False, "no canary yet"), (True, "require a human approval")])
def test_gates_come_before_the_load_and_force_never_skips_an_approval(world, tmp_path, force, says):  # noqa: F811
    rt = world["rt"]
    rid = make_candidate(rt, tmp_path, domain="law", seed=3)  # law's policy requires an approval
    rt.releases.add_report(rid, "qa", True, {"failures": []}, status="qa_passed")
    loads = _Loads()
    with pytest.raises(GateError, match=says) as e:
        _promoter(world, loads).swap(rid, actor="t", force=force)
    assert "approval" in str(e.value)
    assert loads.calls == []  # refused before anything was loaded


def test_swap_loads_before_commit_and_returns_the_view(world):  # noqa: F811
    rt, rid = world["rt"], world["rid"]
    pass_gates(rt, rid)
    loads = _Loads()
    done = _promoter(world, loads).swap(None, actor="t", reason="r")  # None: the Shadow candidate
    assert loads.calls == [rid] and done.view == f"view:{rid}" and rt.releases.pointer("active") == rid
    assert set(done.to_dict()) >= {"action", "from_release", "to_release", "load_ms", "commit_ms"}


def test_a_failed_load_commits_nothing(world):  # noqa: F811
    rt, rid = world["rt"], world["rid"]
    pass_gates(rt, rid)
    before = _pointer_state(rt)
    with pytest.raises(ReleaseLoadError, match="fails its SHA-256 check"):
        _promoter(world, _Loads(fail=True)).swap(rid, actor="t")
    assert _pointer_state(rt) == before


def test_canary_start_verifies_first_and_status_and_stop(world):  # noqa: F811
    rt, rid = world["rt"], world["rid"]
    rt.releases.add_report(rid, "qa", True, {"failures": []}, status="qa_passed")
    loads = _Loads()
    p = _promoter(world, loads)
    assert p.canary_status() == {"canary": None}
    run = p.start_canary(None, actor="t", ratio=0.5)
    assert loads.calls == [rid] and run.release_id == rid
    status = p.canary_status()
    assert status["canary"]["id"] == run.id and status["decision"]["action"] == "continue"
    assert p.stop_canary(actor="t")["action"] == "stopped"
    with pytest.raises(InvalidInputError, match="no canary is running"):
        p.stop_canary(actor="t")
    with pytest.raises(ReleaseLoadError):
        _promoter(world, _Loads(fail=True)).start_canary(rid, actor="t")


def test_approve_records_and_lists(world):  # noqa: F811
    doc = _promoter(world, _Loads()).approve(world["rid"], actor="alice", note="checked")
    assert doc["release"] == world["rid"] and [a["actor"] for a in doc["approvals"]] == ["alice"]


# -- the two-person rule (domain policy approvals_required; docs/DESIGN.md "Releasing") ----------

APPROVALS = [
    # (case, domain, approvers, swap actor, force, refused because ... / None: the swap goes through)
    ("law-none", "law", [], "carol", False, "by 2 distinct reviewer(s); it has 0"),
    ("law-one", "law", ["alice"], "carol", False, "it has 1 (alice)"),
    ("law-one-twice", "law", ["alice", "alice"], "carol", False, "it has 1 (alice)"),
    ("law-self-only", "law", ["alice"], "alice", False, "alice is its only approval, and asks for the swap"),
    ("law-self-only-forced", "law", ["alice"], "alice", True, "two-person rule"),
    ("law-two", "law", ["alice", "bob"], "alice", False, None),
    ("law-two-forced", "law", ["alice", "bob"], "bob", True, None),
    ("med-one", "med", ["alice"], "bob", False, "domain(s) med require"),
    ("med-two", "med", ["alice", "bob"], "carol", False, None),
    ("fin-none", "fin", [], "alice", False, None),
    ("one-reviewer-domain", "tax", ["alice"], "alice", False, None),
    ("one-reviewer-domain-none", "tax", [], "alice", False, "by 1 distinct reviewer(s); it has 0"),
]


@pytest.mark.parametrize(("case", "domain", "approvers", "swapper", "force", "refused"), APPROVALS,
                         ids=[c[0] for c in APPROVALS])
def test_approvals_by_distinct_reviewers(world, tmp_path, case, domain, approvers, swapper, force, refused):  # noqa: F811
    rt = world["rt"]
    if domain == "tax":  # a user domain that keeps the one-reviewer default
        rt.domains.add({"name": "tax", "description": "Tax questions.", "approval_required": True})
    rid = make_candidate(rt, tmp_path, domain=domain, seed=5)
    pass_gates(rt, rid)
    p = _promoter(world, _Loads())
    for who in approvers:
        doc = p.approve(rid, actor=who, note="checked")
    if approvers:
        assert doc["required"] == (2 if domain in ("law", "med") else 1 if domain == "tax" else 0)
        assert doc["complete"] is (refused is None)
    if refused is None:
        assert p.swap(rid, actor=swapper, force=force).move.to_release == rid
        return
    before = _pointer_state(rt)
    with pytest.raises(GateError, match=re.escape(refused)) as e:
        p.swap(rid, actor=swapper, force=force)
    assert "approval" in str(e.value)
    assert _pointer_state(rt) == before


def test_approval_needs_a_named_actor(world):  # noqa: F811
    with pytest.raises(InvalidInputError, match="must name its reviewer"):
        _promoter(world, _Loads()).approve(world["rid"], actor=" ")


SPECS = [
    ("default-one", {}, 1, None),
    ("two", {"approval_required": True, "approvals_required": 2}, 2, None),
    ("zero", {"approval_required": True, "approvals_required": 0}, None, "approvals_required = 0"),
    ("negative", {"approval_required": True, "approvals_required": -1}, None, "approvals_required = -1"),
    ("too-many", {"approval_required": True, "approvals_required": 11}, None, "approvals_required = 11"),
    ("not-a-number", {"approval_required": True, "approvals_required": "two"}, None, "approvals_required = 'two'"),
    ("without-policy", {"approvals_required": 2}, None, "needs approval_required: true"),
]


@pytest.mark.parametrize(("case", "extra", "count", "says"), SPECS, ids=[c[0] for c in SPECS])
def test_domain_approvals_required_is_validated(case, extra, count, says):
    from twinloop.knowledge.domains import _parse_spec

    data = {"name": "tax", "description": "Tax questions.", **extra}
    if says is None:
        assert _parse_spec(data, "domain").approvals_required == count
    else:
        with pytest.raises(InvalidInputError, match=says):
            _parse_spec(data, "domain")


@pytest.mark.parametrize(("pack", "count"), [("law", 2), ("med", 2), ("fin", 1), ("general", 1)])
def test_packs_two_person_rule(pack, count):
    from twinloop.knowledge.domains import load_pack

    assert load_pack(pack).approvals_required == count


# -- adapters are named through the registry, never by a path ------------------------------------

REFS = [
    ("release-ref", "fin@{rid}", None, "fin@{rid}", None),
    ("digest", "{digest}", "mine", "mine", None),
    ("digest-prefix", "{digest:.12}", None, "adapter-{digest:.12}", None),
    ("path", "/etc", None, None, "folders on the server are never loaded"),
    ("relative-path", "../x", None, None, "not a registered adapter"),
    ("short", "{digest:.11}", None, None, "not a registered adapter"),
    ("unknown-digest", "f" * 64, None, None, "no release in the registry names"),
    ("unknown-release", "fin@rel_nope", None, None, "unknown release 'rel_nope'"),
    ("unknown-domain", "med@{rid}", None, None, "no adapter for domain 'med'"),
    ("at-name-for-digest", "{digest}", "fin@{rid}", None, "names with '@' belong to releases"),
    ("other-name-for-release", "fin@{rid}", "x", None, "resident only under 'fin@"),
    ("bad-name", "{digest}", "a b", None, "invalid adapter name"),
]


@pytest.mark.parametrize(("case", "ref", "name", "resident", "says"), REFS, ids=[c[0] for c in REFS])
def test_resolve_adapter(world, case, ref, name, resident, says):  # noqa: F811
    from twinloop.serving.control import resolve_adapter

    reg, rid = world["rt"].releases, world["rid"]
    ids = {"rid": rid, "digest": reg.get(rid).adapters["fin"]}
    ref, name = ref.format(**ids), name.format(**ids) if name else None
    if says is not None:
        with pytest.raises(InvalidInputError, match=says):
            resolve_adapter(reg, ref, name)
        return
    got = resolve_adapter(reg, ref, name)
    assert got.name == resident.format(**ids) and got.digest == ids["digest"]
    assert (got.release, got.domain) == ((rid, "fin") if "@" in ref else (None, None))
