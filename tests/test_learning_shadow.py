"""Shadow training jobs on the tiny model: candidate release, crash safety, CLI end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from twinloop.kernel.config import load_settings
from twinloop.learning.intake import FeedbackIntake, list_samples
from twinloop.learning.jobs import TrainJobs
from twinloop.learning.sample import Sample
from twinloop.learning.worker import start_training_job
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.registry import ReleaseRegistry
from twinloop.runtime import Runtime

SAMPLES = [
    Sample("law", "When did TL-7 take effect?", "On 3 March 2031.", source="correction"),
    Sample("law", "Who enforces TL-7?", "The Loop Authority.", source="correction"),
    Sample("fin", "What is the TL fee?", "Twelve loop credits.", source="correction"),
]
FAST = {"learning_rate": 5e-3, "batch_size": 2, "warmup_steps": 1, "steps": 3}


@pytest.fixture
def runtime(tmp_path):
    settings = load_settings(None, data_dir=tmp_path / "data", foundation={"source": "tiny", "threads": 1},
                             lora={"r": 4, "alpha": 8, "dropout": 0.0}, training=FAST)
    rt = Runtime(settings)
    report = FeedbackIntake(rt.db, rt.domains).submit(SAMPLES)
    assert len(report.accepted) == len(SAMPLES), report.rejected
    return rt


def wait(jobs: TrainJobs, jid: str, until, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(jid)
        if until(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {jid} never reached the state asked for: {jobs.get(jid)}")


def done(job: dict) -> bool:
    return job["status"] not in ("queued", "running")


def registry(rt: Runtime) -> ReleaseRegistry:
    return ReleaseRegistry(rt.db, ArtifactStore(rt.data_dir.artifacts))


def test_job_trains_candidate_and_moves_only_shadow(runtime):
    jobs = TrainJobs(runtime.db)
    jid = start_training_job(runtime.settings, runtime.db, runtime.domains.names(), seed=3)
    job = wait(jobs, jid, done)
    assert job["status"] == "succeeded", job["error"]
    reg = registry(runtime)
    release = reg.get(job["result"]["release_id"])
    assert reg.pointer("shadow") == release.id and reg.pointer("active") is None
    assert release.parent is None and set(release.adapters) == {"law", "fin"}
    lineage = release.lineage
    assert lineage["seed"] == 3 and lineage["hyperparameters"]["steps"] == 3
    assert lineage["domains"]["law"]["samples"] == [s.sha256() for s in SAMPLES[:2]]
    assert len(lineage["domains"]["fin"]["metrics"]["losses"]) == 3
    folder = reg.artifacts.get("adapter", release.adapters["law"])  # verifies every file's SHA-256
    assert (folder / "adapter_model.safetensors").exists() and (folder / "ewc.safetensors").exists()
    assert [r["status"] for r in list_samples(runtime.db)] == ["used"] * 3
    assert job["progress"]["step"] == 3 and job["pid"]
    assert not any(runtime.data_dir.shadow_tmp.iterdir())
    # Corrections go in with template paraphrases, and the base's own answers to general
    # prompts are replayed under a KL term (learning/consolidation.py).
    metrics = lineage["domains"]["law"]["metrics"]
    consolidation = runtime.settings.consolidation
    assert metrics["paraphrases"] >= 2 * consolidation.template_paraphrases
    # (The tiny random model answers most prompts with nothing, which is left out.)
    assert len(metrics["kl"]) == (3 if metrics["distill_prompts"] else 0) and len(metrics["penalty_shares"]) == 3
    assert lineage["hyperparameters"]["consolidation"]["kl_weight"] == consolidation.kl_weight


def test_sigkill_mid_training_leaves_state_intact_and_next_run_is_clean(runtime):
    jobs = TrainJobs(runtime.db)
    reg = registry(runtime)
    jid = start_training_job(runtime.settings, runtime.db, runtime.domains.names(), steps=100_000, seed=1)
    job = wait(jobs, jid, lambda j: j["progress"].get("step", 0) >= 1 or done(j))
    assert job["status"] == "running", job["error"]
    os.kill(job["pid"], signal.SIGKILL)
    time.sleep(0.5)  # the starter's reaper thread collects the child
    assert reg.pointer("active") is None and reg.pointer("shadow") is None and reg.list() == []
    assert [r["status"] for r in list_samples(runtime.db)] == ["new"] * 3
    assert jobs.reap_stale() == [jid]
    assert jobs.get(jid)["status"] == "failed" and "died" in jobs.get(jid)["error"]
    assert runtime.events.list(action="training.failed", subject=jid)[0].reason == jobs.get(jid)["error"]
    assert any(runtime.data_dir.shadow_tmp.iterdir())  # the killed run's folder is still there...

    jid2 = start_training_job(runtime.settings, runtime.db, runtime.domains.names(), domains=["law"])
    job2 = wait(jobs, jid2, done)
    assert job2["status"] == "succeeded", job2["error"]
    assert not any(runtime.data_dir.shadow_tmp.iterdir())  # ...and the next run removed it
    assert reg.pointer("shadow") == job2["result"]["release_id"] and reg.pointer("active") is None
    assert [r["status"] for r in list_samples(runtime.db, "law")] == ["used"] * 2
    assert [r["status"] for r in list_samples(runtime.db, "fin")] == ["new"]


def test_sigterm_cancels(runtime):
    jobs = TrainJobs(runtime.db)
    jid = start_training_job(runtime.settings, runtime.db, runtime.domains.names(), steps=100_000)
    job = wait(jobs, jid, lambda j: j["progress"].get("step", 0) >= 1 or done(j))
    os.kill(job["pid"], signal.SIGTERM)
    job = wait(jobs, jid, done)
    assert job["status"] == "cancelled" and registry(runtime).list() == []
    assert [r["status"] for r in list_samples(runtime.db)] == ["new"] * 3


def test_cli_train_json_end_to_end(runtime, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"foundation": {"source": "tiny", "threads": 1}, "training": FAST,
                               "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINLOOP_")}
    base = [sys.executable, "-m", "twinloop", "--data-dir", str(runtime.settings.data_dir), "--config", str(cfg)]
    res = subprocess.run([*base, "train", "--domain", "fin", "--json"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "succeeded" and doc["release_id"].startswith("rel_")
    assert set(doc["domains"]) == {"fin"} and doc["domains"]["fin"]["final_loss"] > 0
    assert registry(runtime).pointer("shadow") == doc["release_id"]
    again = subprocess.run([*base, "train", "--domain", "fin"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "no new training samples" in again.stderr
    listed = subprocess.run([*base, "jobs", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0 and [j["status"] for j in json.loads(listed.stdout)] == ["failed", "succeeded"]


def test_api_train_routes(runtime):
    from fastapi.testclient import TestClient

    from twinloop.api import create_app
    from twinloop.serving.service import Service

    keys = {"admin": "admin-key-0001", "reader": "reader-key-0001"}
    settings = runtime.settings.model_copy(update={"api": runtime.settings.api.model_copy(
        update={"api_keys": {v: k for k, v in keys.items()}})})
    rt = Runtime(settings)
    with TestClient(create_app(Service(rt), settings), base_url="http://localhost") as client:
        def call(method, path, role="admin", **kw):
            return client.request(method, path, headers={"X-API-Key": keys[role]}, **kw)

        assert call("POST", "/v1/admin/train", role="reader", json={}).status_code == 403
        r = call("POST", "/v1/admin/train", json={"domains": ["nope"]})
        assert r.status_code == 422 and "nope" in r.json()["error"]["message"]
        assert call("POST", "/v1/admin/train", json={"steps": 0}).status_code == 422
        assert call("GET", "/v1/admin/train/job_missing").status_code == 404
        r = call("POST", "/v1/admin/train", json={"domains": ["law"], "steps": 100_000})
        assert r.status_code == 202, r.text
        jid = r.json()["job_id"]
        assert call("POST", "/v1/admin/train", json={}).status_code == 409  # one run at a time
        jobs = TrainJobs(rt.db)
        job = wait(jobs, jid, lambda j: j["progress"].get("step", 0) >= 1 or done(j))
        os.kill(job["pid"], signal.SIGTERM)
        wait(jobs, jid, done)
        r = call("POST", "/v1/admin/train", json={"domains": ["fin"], "seed": 2})
        assert r.status_code == 202, r.text
        wait(jobs, r.json()["job_id"], done)
        got = call("GET", f"/v1/admin/train/{r.json()['job_id']}")
        assert got.status_code == 200 and got.json()["status"] == "succeeded", got.text
        assert "settings" not in got.json()["params"] and got.json()["result"]["release_id"].startswith("rel_")
        assert call("GET", f"/v1/admin/train/{jid}").json()["status"] == "cancelled"


# -- a job whose worker died is reaped with its training.failed event ------------------------------

@pytest.mark.parametrize("status", ["queued", "running"])
def test_reaped_job_gets_a_training_failed_event(tmp_path, status):
    from twinloop.kernel.datadir import DataDir
    from twinloop.kernel.db import Database
    from twinloop.release.events import EventStore

    db = Database(DataDir(tmp_path / "data").database)
    jobs = TrainJobs(db)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and collected: its pid names no process
    jid = jobs.create(["law"], {})
    if status == "running":
        jobs.start(jid, dead.pid)
    else:
        jobs.set_pid(jid, dead.pid)
    unborn = jobs.create(["fin"], {})  # no pid yet: its starter is between insert and spawn
    assert jobs.reap_stale() == [jid]
    assert jobs.reap_stale() == []  # reaped once, one event
    events = EventStore(db)
    failed = events.list(action="training.failed")
    assert [(e.subject, e.actor) for e in failed] == [(jid, "system:reaper")]
    reason = f"worker process {dead.pid} died ({status}); reaped"
    assert failed[0].reason == reason == jobs.get(jid)["error"]
    assert failed[0].data == {"pid": dead.pid, "status": status, "domains": ["law"]}
    assert jobs.get(unborn)["status"] == "queued" and events.verify().ok
