"""The release flow end to end on the tiny model, through a real server and real clients:
QA blocks, canary aborts, swap under load, automatic rollback, breaker fallback, approval,
restart on the committed release, CLI changes followed by a running server (docs/DESIGN.md "Releasing")."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from twinloop.api import create_app
from twinloop.api.server import ServerThread
from twinloop.kernel.config import load_settings
from twinloop.release import promotion
from twinloop.release.canary import CanaryStore, assign_arm
from twinloop.release.consistency import check_consistency
from twinloop.release.promotion import GateError
from twinloop.runtime import Runtime
from twinloop.serving.control import scratch_promoter
from twinloop.serving.faults import Fault
from twinloop.serving.pipeline import AnswerRequest
from twinloop.serving.service import Service

ADMIN = "admin-key-0001"
READER = "reader-key-0001"


def tiny_settings(data: Path, **over):
    sections = {
        "foundation": {"source": "tiny"},
        "serving": {"answer_max_new_tokens": 4, "max_wait_ms": 1, "max_new_tokens_limit": 16},
        "api": {"api_keys": {ADMIN: "admin", READER: "reader"}, "rate_limit_per_minute": 1_000_000},
        "release": {"poll_s": 0.05},
        # latency_margin: a tiny model's LoRA adds a large share of its compute (the real
        # model's overhead is 3–6 %, docs/bench); the latency check is tested in test_release_canary.
        "canary": {"min_queries": 20, "max_queries": 20, "abort_min_requests": 5, "error_margin": 0.2,
                   "latency_margin": 10.0},
        "rollback": {"min_requests": 5, "window": 10},
        "breaker": {"min_requests": 10, "recovery_timeout_s": 0.5},
    }
    for k, v in over.items():
        sections[k] = {**sections.get(k, {}), **v}
    return load_settings(None, data_dir=data, **sections)


def make_adapter(folder: Path, settings, seed: int) -> Path:
    """A real PEFT LoRA folder with non-zero B, so the candidate really differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from twinloop.foundation.tiny import tiny_model, tiny_tokenizer

    torch.manual_seed(seed)
    model = get_peft_model(tiny_model(tiny_tokenizer(), settings.foundation.tiny_layers,
                                      settings.foundation.tiny_hidden),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                      init_lora_weights=False))
    model.save_pretrained(str(folder))
    return folder


def make_candidate(rt: Runtime, tmp: Path, domain: str = "fin", seed: int = 1) -> str:
    reg = rt.releases
    active = reg.pointer("active") or reg.ensure_base(rt.router.spec.to_json(), rt.knowledge.current_revision(),
                                                      rt.foundation.name).id
    art = reg.artifacts.put_dir(make_adapter(tmp / f"adapter-{domain}-{seed}", rt.settings, seed), "adapter")
    adapters = {**reg.get(active).adapters, domain: art.digest}
    rel = reg.create_candidate(active, adapters, rt.knowledge.current_revision(), reg.get(active).router_json,
                               {"test": seed})
    reg.set_pointer("shadow", rel.id)
    return rel.id


def pass_gates(rt: Runtime, rid: str) -> None:
    """Record passing QA and canary reports (the gates' own tests are elsewhere)."""
    rt.releases.add_report(rid, "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    rt.releases.add_report(rid, "canary", True, {"reasons": []}, status="canary_passed", event="canary.promoted")


class Server:
    def __init__(self, settings) -> None:
        self.runtime = Runtime(settings)
        self.service = Service(self.runtime)
        self.thread = ServerThread(create_app(self.service, settings))

    def __enter__(self) -> Server:
        self.thread.start()
        self.http = httpx.Client(base_url=self.thread.url, timeout=60,
                                 headers={"Authorization": f"Bearer {ADMIN}"})
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.thread.stop()

    def ask(self, user: str, query: str = "What is the interest rate on a bond?") -> httpx.Response:
        return self.http.post("/v1/answer", json={"query": query, "user_id": user, "domain": "fin"})


def users_in(arm: str, salt: str, ratio: float, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        u = f"user-{i}"
        if assign_arm(u, salt, ratio) == arm:
            out.append(u)
        i += 1
    return out


@pytest.fixture
def server(tmp_path):
    with Server(tiny_settings(tmp_path / "data")) as s:
        yield s


def test_first_start_commits_a_base_release_and_a_restart_keeps_the_active_one(tmp_path):
    settings = tiny_settings(tmp_path / "data")
    with Server(settings) as s:
        base = s.http.get("/v1/health").json()["release"]
        assert base.startswith("rel_") and s.runtime.releases.get(base).status == "base"
        rid = make_candidate(s.runtime, tmp_path)
        pass_gates(s.runtime, rid)
        r = s.http.post("/v1/admin/swap", json={"release": rid, "reason": "test"})
        assert r.status_code == 200, r.text
        assert r.json()["to_release"] == rid and s.http.get("/v1/health").json()["release"] == rid
    with Server(settings) as again:  # a new process on the same data directory
        assert again.http.get("/v1/health").json()["release"] == rid
        assert again.ask("u1").json()["release_id"] == rid
        assert check_consistency(again.runtime.releases, CanaryStore(again.runtime.db)) == []


def test_failing_qa_blocks_canary_and_swap(server, tmp_path):
    """The real dry run on the tiny model: its answers are noise, so QA fails and nothing moves."""
    rid = make_candidate(server.runtime, tmp_path)
    r = server.http.post("/v1/admin/qa", json={"release": rid, "max_tokens": 4})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["passed"] is False and report["failures"]
    assert server.runtime.releases.get(rid).status == "qa_failed"
    stored = server.runtime.releases.latest_report(rid, "qa")
    assert stored is not None and stored["passed"] is False
    r = server.http.post("/v1/admin/canary", json={"release": rid})
    assert r.status_code == 409 and "QA" in r.json()["error"]["message"]
    r = server.http.post("/v1/admin/swap", json={"release": rid})
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
    assert "QA dry-run failed" in r.json()["error"]["message"]
    active = server.http.get("/v1/health").json()["release"]
    assert active != rid
    assert [e.action for e in server.runtime.events.list(action="qa.failed")] == ["qa.failed"]


def test_bad_canary_aborts_early_and_blocks_the_swap(server, tmp_path):
    rt = server.runtime
    rid = make_candidate(rt, tmp_path)
    rt.releases.add_report(rid, "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    r = server.http.post("/v1/admin/canary", json={"release": rid, "ratio": 0.5})
    assert r.status_code == 201, r.text
    salt = rt.settings.canary.salt
    server.http.post("/v1/admin/faults", json={"release": rid, "error_rate": 1.0})
    for u in users_in("active", salt, 0.5, 6):
        assert server.ask(u).status_code == 200
    codes = [server.ask(u).status_code for u in users_in("shadow", salt, 0.5, 6)]
    assert 503 in codes  # canary users met the broken candidate …
    server.service.control.flush()
    status = server.http.get("/v1/admin/canary").json()
    assert status["canary"]["status"] == "aborted", status  # … and the canary stopped it early
    assert rt.releases.get(rid).status == "canary_aborted"
    assert "error rate" in " ".join(rt.releases.latest_report(rid, "canary")["report"]["reasons"])
    # After the abort, every user is served by Active again.
    assert {server.ask(u).json()["release_id"] for u in users_in("shadow", salt, 0.5, 3)} == {
        rt.releases.pointer("active")}
    r = server.http.post("/v1/admin/swap", json={"release": rid})
    assert r.status_code == 409 and "canary did not pass" in r.json()["error"]["message"]


def test_good_canary_passes_and_swaps_automatically(server, tmp_path):
    rt = server.runtime
    rid = make_candidate(rt, tmp_path)
    rt.releases.add_report(rid, "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    assert server.http.post("/v1/admin/canary", json={"release": rid, "ratio": 0.5}).status_code == 201
    salt = rt.settings.canary.salt
    served = set()
    for a, s in zip(users_in("active", salt, 0.5, 25), users_in("shadow", salt, 0.5, 25), strict=True):
        for u in (a, s):
            r = server.ask(u)
            assert r.status_code == 200
            served.add(r.json()["release_id"])
    assert rid in served and len(served) == 2
    deadline = time.time() + 10
    while server.http.get("/v1/health").json()["release"] != rid and time.time() < deadline:
        time.sleep(0.05)
    assert server.http.get("/v1/health").json()["release"] == rid
    assert rt.releases.latest_report(rid, "canary")["passed"] is True
    actions = [e.action for e in rt.events.list(limit=10)]
    assert "canary.promoted" in actions and "swap" in actions


def test_mirror_mode_copies_traffic_without_answering_with_the_candidate(server, tmp_path):
    rt = server.runtime
    rid = make_candidate(rt, tmp_path)
    rt.releases.add_report(rid, "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
    r = server.http.post("/v1/admin/canary", json={"release": rid, "ratio": 1.0, "mode": "mirror"})
    assert r.status_code == 201
    answers = [server.ask(f"m{i}").json() for i in range(4)]
    assert {a["release_id"] for a in answers} == {rt.releases.pointer("active")}
    deadline = time.time() + 10
    store = CanaryStore(rt.db)
    while store.stats(r.json()["id"])[1].requests < 4 and time.time() < deadline:
        time.sleep(0.05)
    active, shadow = store.stats(r.json()["id"])
    assert shadow.requests == 4 and active.requests == 4
    # One request-log row per user request: mirrored answers are not logged.
    assert rt.db.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 4


def test_swap_under_concurrent_load_fails_no_request(server, tmp_path):
    rt = server.runtime
    a = rt.releases.pointer("active")
    b = make_candidate(rt, tmp_path)
    pass_gates(rt, b)
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=server.thread.url, timeout=60, headers={"Authorization": f"Bearer {READER}"}) as c:
            while not stop.is_set():
                r = c.post("/v1/answer", json={"query": "What is a bond coupon?", "user_id": f"c{i}",
                                                "domain": "fin"})
                results.append((r.status_code, r.json().get("release_id") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    moves = []
    for i in range(8):
        time.sleep(0.15)
        if i % 2 == 0:
            moves.append(server.http.post("/v1/admin/swap", json={"release": b, "force": True}).json())
        else:
            moves.append(server.http.post("/v1/admin/rollback", json={"to": a}).json())
            rt.releases.set_status(b, "qa_passed")  # allow swapping it in again
    stop.set()
    for t in threads:
        t.join()
    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    assert {rel for _, rel in results} == {a, b}
    assert all(m["switch_ms"] < 50 for m in moves), moves
    assert check_consistency(rt.releases, CanaryStore(rt.db)) == []


def test_automatic_rollback_fires_on_injected_errors(server, tmp_path):
    rt = server.runtime
    base = rt.releases.pointer("active")
    rid = make_candidate(rt, tmp_path)
    pass_gates(rt, rid)
    for i in range(5):  # a pre-swap latency baseline
        assert server.ask(f"w{i}").status_code == 200
    assert server.http.post("/v1/admin/swap", json={"release": rid}).status_code == 200
    server.http.post("/v1/admin/faults", json={"release": rid, "error_rate": 1.0})
    codes = [server.ask(f"u{i}").status_code for i in range(8)]
    assert codes[0] == 503 and codes[0:3] == [503, 503, 503]
    server.service.control.flush()
    assert server.http.get("/v1/health").json()["release"] == base
    ev = rt.events.list(action="rollback.automatic")
    # One rollback, whichever trigger saw the incident first: the watch's error rate or the
    # breaker opening (both count the same injected errors).
    assert len(ev) == 1 and ev[0].actor == "system:rollback-watch"
    assert "error rate" in ev[0].reason or "circuit breaker" in ev[0].reason
    assert rt.releases.get(rid).status == "rolled_back"
    assert server.ask("after").status_code == 200
    # Rolling back again never returns to the release that was rolled back.
    assert rt.releases.previous_active() != rid


def test_breaker_opens_with_a_clear_fallback_then_recovers(server):
    rt = server.runtime
    base = rt.releases.pointer("active")
    server.http.post("/v1/admin/faults", json={"error_rate": 1.0})  # Active itself fails
    codes = [server.ask(f"b{i}").status_code for i in range(10)]
    assert codes == [503] * 10
    assert server.http.get("/v1/health").json()["breaker"] == "open"
    r = server.ask("b-fallback")
    assert r.status_code == 200
    body = r.json()
    assert body["finish_reason"] == "circuit_open" and "temporarily unavailable" in body["text"]
    assert body["verified"] is False
    server.http.post("/v1/admin/faults", json={"error_rate": 0.0})
    time.sleep(0.6)  # recovery_timeout_s = 0.5
    assert [server.ask(f"h{i}").status_code for i in range(3)] == [200, 200, 200]
    assert server.http.get("/v1/health").json()["breaker"] == "closed"
    actions = [e.action for e in rt.events.list(action="breaker.")]
    assert actions[::-1] == ["breaker.opened", "breaker.half_open", "breaker.closed"]
    assert rt.releases.pointer("active") == base


def test_approval_required_for_law(server, tmp_path):
    rt = server.runtime
    rid = make_candidate(rt, tmp_path, domain="law")
    pass_gates(rt, rid)
    r = server.http.post("/v1/admin/swap", json={"release": rid, "force": True})
    assert r.status_code == 409 and "approval" in r.json()["error"]["message"]
    r = server.http.post(f"/v1/admin/releases/{rid}/approve", json={"note": "checked the new articles"})
    assert r.status_code == 200 and r.json()["approvals"][0]["actor"].startswith("key:")
    ev = server.runtime.events.list(action="release.approved")
    assert ev[0].subject == rid and ev[0].reason == "checked the new articles"
    # Law needs two reviewers (two-person rule): one key's approval alone does not swap.
    r = server.http.post("/v1/admin/swap", json={"release": rid})
    assert r.status_code == 409 and "approv" in r.json()["error"]["message"]
    rt.releases.approve(rid, "cli:second-reviewer", "read it too")
    assert server.http.post("/v1/admin/swap", json={"release": rid}).status_code == 200


def test_cli_style_registry_moves_reach_a_running_server(server, tmp_path):
    """``twinloop swap`` / ``rollback`` write the registry; the server follows within poll_s."""
    rt = server.runtime
    base = rt.releases.pointer("active")
    rid = make_candidate(rt, tmp_path)
    pass_gates(rt, rid)
    other = Runtime(rt.settings)  # another process's view of the same data directory
    promoter = scratch_promoter(other.settings, other.releases, other.domains, lambda: other.foundation,
                                lambda: other.embedder)  # what the CLI uses
    promoter.swap(rid, actor="cli:test")
    deadline = time.time() + 5
    while server.http.get("/v1/health").json()["release"] != rid and time.time() < deadline:
        time.sleep(0.02)
    assert server.ask("x").json()["release_id"] == rid
    promoter.rollback(actor="cli:test")
    deadline = time.time() + 5
    while server.http.get("/v1/health").json()["release"] != base and time.time() < deadline:
        time.sleep(0.02)
    assert server.http.get("/v1/health").json()["release"] == base


def test_admin_routes_need_admin_and_bad_input_is_4xx(server, tmp_path):
    reader = {"Authorization": f"Bearer {READER}"}
    for method, path in [("GET", "/v1/admin/status"), ("POST", "/v1/admin/swap"), ("POST", "/v1/admin/rollback"),
                         ("GET", "/v1/admin/events"), ("POST", "/v1/admin/canary")]:
        assert server.http.request(method, path, headers=reader, json={}).status_code == 403
    assert server.http.post("/v1/admin/swap", json={"release": "rel_nope"}).status_code == 422
    assert server.http.post("/v1/admin/rollback", json={}).status_code == 422  # nothing to roll back to
    assert server.http.post("/v1/admin/canary", json={"release": "x", "ratio": 2}).status_code == 422
    assert server.http.post("/v1/admin/faults", json={"release": "rel_nope", "error_rate": 1}).status_code == 404
    assert server.http.get("/v1/admin/releases/rel_nope").status_code == 404
    assert server.http.post("/v1/admin/canary", json={}).status_code == 422  # no Shadow yet
    # Failed authentication is audited (without the key).
    httpx.get(server.thread.url + "/v1/info", headers={"Authorization": "Bearer wrong-key-123"})
    ev = server.runtime.events.list(action="auth.failed")
    assert ev and "wrong-key" not in str(ev[0].to_dict())
    assert server.http.get("/v1/admin/events/verify").json()["ok"] is True


def test_swap_and_rollback_in_process_keep_inflight_requests_on_their_release(tmp_path):
    """A request admitted before a swap finishes on the release it was admitted with."""
    settings = tiny_settings(tmp_path / "data")
    svc = Service(Runtime(settings))
    svc.start()
    try:
        before = svc.active.id
        rid = make_candidate(svc.runtime, tmp_path)
        pass_gates(svc.runtime, rid)
        svc.control.faults.set(Fault(before, delay_ms=300))  # hold the request in flight
        got = {}
        t = threading.Thread(target=lambda: got.update(r=svc.answer(AnswerRequest(query="bond?", domain="fin"))))
        t.start()
        time.sleep(0.1)
        svc.control.swap(rid, actor="test")
        t.join()
        assert got["r"].release_id == before and svc.active.id == rid
    finally:
        svc.stop()


def test_gate_error_names_every_problem(tmp_path):
    rt = Runtime(tiny_settings(tmp_path / "data"))
    rid = make_candidate(rt, tmp_path, domain="law")
    with pytest.raises(GateError) as e:
        promotion.commit_swap(rt.releases, rt.domains, rid, rt.settings.release, actor="t")
    msg = str(e.value)
    assert "no QA dry-run" in msg and "no canary" in msg and "approval" in msg


def test_automatic_rollback_fires_on_latency(tmp_path):
    """The p95 trigger: max(latency floor, factor × the pre-swap p95) (paper §5.4)."""
    settings = tiny_settings(tmp_path / "data", rollback={"latency_p95_ms": 150.0, "latency_factor": 2.0,
                                                          "min_requests": 4, "window": 4})
    with Server(settings) as s:
        rt = s.runtime
        base = rt.releases.pointer("active")
        rid = make_candidate(rt, tmp_path)
        pass_gates(rt, rid)
        for i in range(4):
            assert s.ask(f"w{i}").status_code == 200
        assert s.http.post("/v1/admin/swap", json={"release": rid}).status_code == 200
        s.http.post("/v1/admin/faults", json={"release": rid, "delay_ms": 400})
        codes = [s.ask(f"slow{i}").status_code for i in range(4)]
        assert codes == [200] * 4  # slow, not failing: the breaker stays closed
        s.service.control.flush()
        assert rt.releases.pointer("active") == base and s.http.get("/v1/health").json()["release"] == base
        ev = rt.events.list(action="rollback.automatic")
        assert len(ev) == 1 and "latency p95" in ev[0].reason
        assert s.http.get("/v1/health").json()["breaker"] == "closed"


def test_api_rollback_to_a_release_never_active_is_refused(server, tmp_path):
    """A fresh candidate (no QA, no canary, no approval) cannot be made Active by naming it
    as a rollback target: rollback only returns to a release that was Active before."""
    rt = server.runtime
    active = rt.releases.pointer("active")
    fresh = make_candidate(rt, tmp_path, domain="law", seed=11)
    r = server.http.post("/v1/admin/rollback", json={"to": fresh, "reason": "sneak it in"})
    assert r.status_code in (409, 422), r.text
    assert "never Active" in r.json()["error"]["message"]
    assert rt.releases.pointer("active") == active
    assert not [e for e in rt.events.list(action="rollback") if e.subject == fresh]
