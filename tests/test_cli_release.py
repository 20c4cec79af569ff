"""The release commands as an operator runs them (real processes, tiny model): releases,
status, approve, swap, rollback, canary, events --verify on an intact and a tampered log,
export/import, prune; bad input is one line and exit 2."""

from __future__ import annotations

import json
import sqlite3

import pytest
from test_release_crash import twinloop, world  # noqa: F401  (world is a fixture)
from test_release_flow import pass_gates


def ok(proc) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return proc.stdout


def test_release_commands_end_to_end(world, tmp_path):  # noqa: F811
    rid, base = world["rid"], world["base"]
    listed = json.loads(ok(twinloop(world, "releases", "--json")))
    assert listed["active"] == base and listed["shadow"] == rid
    shown = json.loads(ok(twinloop(world, "releases", rid, "--json")))
    assert shown["ancestors"] == [base] and shown["status"] == "candidate"

    refused = twinloop(world, "swap", rid)
    assert refused.returncode == 2 and "no QA dry-run" in refused.stderr and "Traceback" not in refused.stderr
    pass_gates(world["rt"], rid)
    move = json.loads(ok(twinloop(world, "swap", rid, "--reason", "tested", "--json")))
    assert move["from_release"] == base and move["to_release"] == rid
    status = json.loads(ok(twinloop(world, "status", "--json")))
    assert status["active"] == rid and status["previous"] == base and status["consistent"]
    back = json.loads(ok(twinloop(world, "rollback", "--json")))
    assert back["to_release"] == base and back["action"] == "rollback"

    events = json.loads(ok(twinloop(world, "events", "--json", "--limit", "50")))
    actions = [e["action"] for e in events]
    assert actions[:2] == ["rollback", "swap"] and "release.base" in actions
    assert events[1]["actor"].startswith("cli:") and events[1]["reason"] == "tested"
    assert "chain verified" in ok(twinloop(world, "events", "--verify"))
    exported = tmp_path / "events.jsonl"
    ok(twinloop(world, "events", "--export", str(exported)))
    lines = [json.loads(x) for x in exported.read_text().splitlines()]
    assert len(lines) == len(events) and lines[0]["seq"] == 1

    bundle, base_bundle = tmp_path / "rel.tar.gz", tmp_path / "base.tar.gz"
    ok(twinloop(world, "export", rid, "--out", str(bundle)))
    ok(twinloop(world, "export", base, "--out", str(base_bundle)))
    other = dict(world, data=tmp_path / "other-data")  # a fresh data directory elsewhere
    orphan = twinloop(other, "import", str(bundle))
    assert orphan.returncode == 2 and "import the parent" in orphan.stderr
    ok(twinloop(other, "import", str(base_bundle)))
    assert f"imported {rid} (status candidate)" in ok(twinloop(other, "import", str(bundle)))

    plan = json.loads(ok(twinloop(world, "prune", "--json")))
    assert plan["dry_run"] is True and base in plan["protected"]


def test_events_verify_catches_a_tampered_log(world):  # noqa: F811
    pass_gates(world["rt"], world["rid"])
    ok(twinloop(world, "swap", world["rid"]))
    db = sqlite3.connect(world["data"] / "twinloop.db")
    db.execute("DROP TRIGGER events_no_update")  # what an attacker with file access can do
    db.execute("UPDATE events SET actor='someone-else' WHERE action='swap'")
    db.commit()
    db.close()
    res = twinloop(world, "events", "--verify")
    assert res.returncode == 1 and "TAMPERED" in res.stdout and "was edited" in res.stdout
    status = twinloop(world, "status")
    assert status.returncode == 1 and "INCONSISTENT" in status.stdout


@pytest.mark.parametrize("args, says", [
    (("swap", "rel_nope"), "unknown release 'rel_nope'"),
    (("rollback", "--to", "rel_nope"), "unknown release 'rel_nope'"),
    (("approve", "rel_nope"), "unknown release 'rel_nope'"),
    (("canary", "stop"), "no canary is running"),
    (("canary", "start", "{rid}", "--ratio", "3"), "ratio"),
    (("import", "/nonexistent/x.tar.gz"), "x.tar.gz"),
], ids=["swap", "rollback", "approve", "canary-stop", "canary-ratio", "import"])
def test_bad_input_is_one_line(world, args, says):  # noqa: F811
    if args[:2] == ("canary", "start"):
        world["rt"].releases.add_report(world["rid"], "qa", True, {"failures": []}, status="qa_passed")
    res = twinloop(world, *(a.format(rid=world["rid"]) for a in args))
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2
