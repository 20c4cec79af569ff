"""Corrections over HTTP on a real server (tiny model): roles, approval, feedback, bad input."""

from __future__ import annotations

import httpx
import pytest
from helpers import tiny_server_settings

from twinloop.api import create_app
from twinloop.api.server import ServerThread
from twinloop.runtime import Runtime
from twinloop.serving.service import Service

KEYS = {"op-a-key-000001": "operator", "op-b-key-000001": "operator", "admin-key-00001": "admin",
        "reader-key-0001": "reader"}
Q = "Who is the chief executive of Brennor Dynamics?"


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    settings = tiny_server_settings(tmp_path_factory.mktemp("corr") / "data", limit=16, api={
        "api_keys": KEYS, "rate_limit_per_minute": 100_000, "auth_failures_per_minute": 100_000})
    service = Service(Runtime(settings))
    with ServerThread(create_app(service, settings)) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def key(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


def ask(http, question: str, domain: str) -> dict:
    r = http.post("/v1/answer", json={"query": question, "domain": domain, "max_tokens": 4},
                  headers=key("reader-key-0001"))
    assert r.status_code == 200, r.text
    return r.json()


def test_law_needs_two_other_reviewers_before_it_is_served(http):
    q = "How many days does the Veltrane Data Act allow a controller to answer?"
    made = http.post("/v1/corrections", json={"domain": "law", "question": q, "answer": "21 days"},
                     headers=key("op-a-key-000001")).json()
    assert made["state"] == "pending" and made["approvals_required"] == 2
    assert ask(http, q, "law")["mode"] != "correction"
    own = http.post(f"/v1/corrections/{made['id']}/approve", json={}, headers=key("op-a-key-000001"))
    assert own.status_code == 422 and "cannot also approve" in own.text
    one = http.post(f"/v1/corrections/{made['id']}/approve", json={"note": "checked"}, headers=key("op-b-key-000001"))
    assert one.json()["state"] == "pending" and ask(http, q, "law")["mode"] != "correction"
    two = http.post(f"/v1/corrections/{made['id']}/approve", json={}, headers=key("admin-key-00001")).json()
    assert two["state"] == "active"
    rec = ask(http, q, "law")
    assert rec["mode"] == "correction" and rec["status"] == "answered" and rec["verified"]
    approvers = rec["citations"][0]["correction"]["approved_by"]
    assert len(set(approvers)) == 2 and made["actor"] not in approvers  # key ids, never the keys


def test_feedback_with_a_correction_enters_memory(http):
    first = ask(http, Q, "general")
    assert first["mode"] != "correction"
    r = http.post("/v1/feedback", json={"request_id": first["request_id"], "score": -1,
                                        "correction": "Ilsa Marchetti"}, headers=key("op-a-key-000001"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["correction_id"] is not None
    got = http.get(f"/v1/corrections/{body['correction_id']}", headers=key("op-a-key-000001")).json()
    assert got["feedback_id"] == body["id"] and got["question"] == Q
    assert ask(http, Q, "general")["summary"] == "Ilsa Marchetti"
    listed = http.get("/v1/corrections", params={"domain": "general"}, headers=key("op-b-key-000001")).json()
    assert body["correction_id"] in [c["id"] for c in listed["corrections"]]


CASES = [
    # (method, path, key, body, status, says)
    ("post", "/v1/corrections", "reader-key-0001", {"domain": "general", "question": Q, "answer": "x"}, 403, ""),
    ("post", "/v1/corrections", None, {"domain": "general", "question": Q, "answer": "x"}, 401, ""),
    ("post", "/v1/corrections", "op-a-key-000001", {"domain": "astrology", "question": Q, "answer": "x"}, 422,
     "astrology"),
    ("post", "/v1/corrections", "op-a-key-000001", {"domain": "general", "question": "", "answer": "x"}, 422,
     "question"),
    ("post", "/v1/corrections", "op-a-key-000001", {"domain": "general", "question": Q, "answer": "   "}, 422,
     "answer"),
    ("post", "/v1/corrections", "op-a-key-000001", {"domain": "general", "question": Q, "answer": "x", "extra": 1},
     422, "extra"),
    ("get", "/v1/corrections/999999", "op-a-key-000001", None, 404, "999999"),
    ("get", "/v1/corrections/abc", "op-a-key-000001", None, 422, ""),
    ("get", "/v1/corrections/99999999999999999999999", "op-a-key-000001", None, 404, ""),
    ("get", "/v1/corrections/-5", "op-a-key-000001", None, 404, ""),
    ("post", "/v1/corrections/999999/approve", "op-b-key-000001", {}, 404, ""),
    ("post", "/v1/corrections/999999/remove", "op-b-key-000001", {}, 404, ""),
    ("get", "/v1/corrections?state=gone", "op-a-key-000001", None, 422, "state"),
    ("get", "/v1/corrections?limit=0", "op-a-key-000001", None, 422, "limit"),
]


@pytest.mark.parametrize(("method", "path", "who", "body", "status", "says"), CASES,
                         ids=[f"{c[0]} {c[1]} {c[4]}" for c in CASES])
def test_bad_requests(http, method, path, who, body, status, says):
    r = http.request(method, path, json=body, headers=key(who) if who else {})
    assert r.status_code == status, r.text
    assert says in r.text
    assert "error" in r.json()


def test_a_correction_too_long_for_memory_is_still_accepted_feedback(http):
    first = ask(http, "Where are Brennor Dynamics' headquarters?", "general")
    r = http.post("/v1/feedback", json={"request_id": first["request_id"], "score": -1,
                                        "correction": "Port Dresny. " * 300}, headers=key("op-a-key-000001"))
    assert r.status_code == 201 and r.json()["status"] == "accepted" and r.json()["correction_id"] is None
