"""One promotion path: ``twinloop swap`` / ``rollback`` and the admin API go through the same
``Promoter`` — same gates, same load check before the commit, same messages, same events."""

from __future__ import annotations

import json
import shutil

import pytest
from test_release_crash import twinloop, world  # noqa: F401  (world is a fixture)
from test_release_flow import Server, make_candidate, pass_gates

from twinloop.kernel.errors import InvalidInputError
from twinloop.release.promotion import GateError, Promoter, ReleaseLoadError


def _broken_candidate(world, tmp_path) -> str:
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


def _promoter(world, verify) -> Promoter:
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
