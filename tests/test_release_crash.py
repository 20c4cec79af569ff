"""SIGKILL at each step of the release flow — training, QA, canary, swap, rollback — leaves a
consistent registry, and a restarted server serves the last committed Active release (docs/DESIGN.md "State").

Each case runs a real ``twinloop`` process (CLI, training worker or server) with
``TWINLOOP_CRASH_AT`` naming the point where it kills itself with SIGKILL
(``twinloop/kernel/crashpoints.py``): inside the transaction (nothing of the step may remain) or
just after it committed (all of it must remain, and a restart must use it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from test_release_flow import (
    ADMIN,
    READER,
    Server,
    make_candidate,
    pass_gates,
    tiny_settings,
)

from twinloop.learning.intake import FeedbackIntake, list_samples
from twinloop.learning.sample import Sample
from twinloop.release.canary import CanaryStore
from twinloop.release.consistency import check_consistency
from twinloop.runtime import Runtime

CONFIG = {
    "foundation": {"source": "tiny", "threads": 1},
    "serving": {"answer_max_new_tokens": 4, "max_wait_ms": 1, "max_new_tokens_limit": 16},
    "api": {"api_keys": {ADMIN: "admin", READER: "reader"}},
    "release": {"poll_s": 0.05},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "training": {"learning_rate": 5e-3, "batch_size": 2, "warmup_steps": 1, "steps": 2},
}


@pytest.fixture
def world(tmp_path):
    """A data directory with a base Active release and a candidate in Shadow."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(CONFIG))
    settings = tiny_settings(tmp_path / "data", lora=CONFIG["lora"], training=CONFIG["training"])
    rt = Runtime(settings)
    base = rt.releases.ensure_base(rt.router.spec.to_json(), rt.knowledge.current_revision(), rt.foundation.name).id
    rid = make_candidate(rt, tmp_path)
    return {"rt": rt, "cfg": cfg, "data": tmp_path / "data", "base": base, "rid": rid, "settings": settings}


def twinloop(world, *args: str, crash: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINLOOP_")}
    env["HF_HUB_OFFLINE"] = "1"
    if crash:
        env["TWINLOOP_CRASH_AT"] = crash
    cmd = [sys.executable, "-m", "twinloop", "--data-dir", str(world["data"]), "--config", str(world["cfg"]), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(rt: Runtime) -> dict:
    """What the release state is made of, to compare before and after a crash."""
    conn = rt.db.conn
    return {
        "pointers": dict(conn.execute("SELECT name, release_id FROM release_pointers").fetchall()),
        "statuses": dict(conn.execute("SELECT id, status FROM releases").fetchall()),
        "reports": conn.execute("SELECT COUNT(*) FROM release_reports").fetchone()[0],
        "events": rt.events.count(),
        "moves": conn.execute("SELECT COUNT(*) FROM pointer_moves").fetchone()[0],
        "canaries": [r.status for r in CanaryStore(rt.db).list(100)],
    }


def assert_consistent_and_restart_serves(world, expected_active: str) -> None:
    rt = Runtime(world["settings"])  # a fresh process's view
    assert check_consistency(rt.releases, CanaryStore(rt.db)) == []
    assert rt.releases.pointer("active") == expected_active
    with Server(world["settings"]) as s:
        assert s.http.get("/v1/health").json()["release"] == expected_active
        r = s.ask("restart-check")
        assert r.status_code == 200 and r.json()["release_id"] == expected_active


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point, args", [
    ("pointer.active.in_transaction", ("swap", "{rid}", "--force")),
    ("pointer.active.in_transaction", ("rollback",)),
    ("report.qa.in_transaction", ("qa", "{rid}", "--max-tokens", "2", "--cases", "{cases}")),
    ("qa.mid_run", ("qa", "{rid}", "--max-tokens", "2", "--cases", "{cases}")),
    ("canary.start.in_transaction", ("canary", "start", "{rid}")),
], ids=["swap", "rollback", "qa-report", "qa-mid-run", "canary-start"])
def test_sigkill_inside_a_step_leaves_nothing_of_it(world, tmp_path, point, args):
    rt = world["rt"]
    if args[0] == "rollback":  # something to roll back: the candidate is Active
        pass_gates(rt, world["rid"])
        assert twinloop(world, "swap", world["rid"]).returncode == 0
    if args[0] == "canary":
        rt.releases.add_report(world["rid"], "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "c1", "domain": "fin", "query": "What is a bond?", "expected": ["bond"]})
                     + "\n" + json.dumps({"id": "c2", "domain": "fin", "query": "What is a coupon?",
                                          "expected": ["coupon"]}) + "\n")
    before = snapshot(rt)
    proc = twinloop(world, *(a.format(rid=world["rid"], cases=cases) for a in args), crash=point)
    assert killed(proc), (proc.returncode, proc.stderr[-2000:])
    assert snapshot(rt) == before
    assert_consistent_and_restart_serves(world, before["pointers"]["active"])


def test_sigkill_of_the_training_worker_before_its_release(world):
    rt = world["rt"]
    FeedbackIntake(rt.db, rt.domains).submit([Sample("fin", "What is the TL fee?", "Twelve loop credits.",
                                                     source="correction")])
    before = snapshot(rt)
    proc = twinloop(world, "train", "--steps", "2", crash="shadow.before_release")
    assert proc.returncode != 0
    after = snapshot(rt)
    assert after["pointers"] == before["pointers"] and after["statuses"] == before["statuses"]
    assert [r["status"] for r in list_samples(rt.db, "fin")] == ["new"]  # trained again next run
    assert_consistent_and_restart_serves(world, world["base"])


def test_sigkill_while_a_canary_concludes(world):
    """The conclusion (canary row, report, status, event) is one transaction."""
    rt = world["rt"]
    rt.releases.add_report(world["rid"], "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    assert twinloop(world, "canary", "start", world["rid"]).returncode == 0
    before = snapshot(rt)
    script = (
        "import sys; from twinloop.kernel.config import load_settings; from twinloop.runtime import Runtime\n"
        "from twinloop.release import promotion; from twinloop.release.canary import CanaryStore, CanaryDecision\n"
        f"rt = Runtime(load_settings({str(world['cfg'])!r}, data_dir={str(world['data'])!r}))\n"
        "store = CanaryStore(rt.db)\n"
        "promotion.conclude_canary(rt.releases, store, store.current(), CanaryDecision('abort', ['x'], {}),"
        " actor='t')\n")
    env = {**os.environ, "TWINLOOP_CRASH_AT": "report.canary.in_transaction", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert killed(proc), proc.stderr[-2000:]
    assert snapshot(rt) == before and CanaryStore(rt.db).current() is not None
    assert_consistent_and_restart_serves(world, world["base"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("point", ["swap.after_commit", "rollback.after_commit"])
def test_server_killed_right_after_committing_a_move_restarts_on_it(world, point):
    """A real ``twinloop serve`` process dies between the registry commit and its in-memory
    switch: the restarted server must serve what was committed."""
    rt = world["rt"]
    pass_gates(rt, world["rid"])
    if point.startswith("rollback"):
        assert twinloop(world, "swap", world["rid"]).returncode == 0
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINLOOP_")}
    env.update(HF_HUB_OFFLINE="1", TWINLOOP_CRASH_AT=point)
    proc = subprocess.Popen([sys.executable, "-m", "twinloop", "--data-dir", str(world["data"]), "--config",
                             str(world["cfg"]), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        path, body = (("/v1/admin/swap", {"release": world["rid"]}) if point.startswith("swap")
                      else ("/v1/admin/rollback", {}))
        with pytest.raises(httpx.HTTPError):  # the server dies mid-request
            httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    expected = world["rid"] if point.startswith("swap") else world["base"]
    assert_consistent_and_restart_serves(world, expected)
