"""Bad clients never cause a 500, never count against a release, and cannot flood.

A real server (uvicorn on a loopback port) with the tiny model, driven with httpx. Each concern
is a case table: sampling values and odd input (4xx naming the field, never 500), client
errors and the breaker / rollback watch, failed authentication (throttled, aggregated in the
audit log), metric labels, Host names, strict booleans, documented error responses and
cancellation of a non-streaming request whose client went away.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import httpx
import pytest
from helpers import tiny_server_settings
from prometheus_client.parser import text_string_to_metric_families

from twinloop.api import create_app
from twinloop.api.auth import AuthFailure, FailureAudit
from twinloop.api.middleware import AllowedHostsMiddleware
from twinloop.api.server import ServerThread
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.release.watch import RollbackWatch
from twinloop.runtime import Runtime
from twinloop.serving.engine import EngineStoppedError, QueueFullError
from twinloop.serving.faults import InjectedFault
from twinloop.serving.service import Service, counts_against_release
from twinloop.serving.types import MaxTokensError

KEYS = {"admin": "admin-key-0001", "reader": "reader-key-0001"}
LIMIT = 64
AUTH_BURST = 5


class Server:
    def __init__(self, service: Service, url: str, strict_url: str, app) -> None:
        self.service = service
        self.url = url
        self.strict_url = strict_url  # a second app: a small failed-authentication budget
        self.app = app
        self.http = httpx.Client(base_url=url, timeout=60)

    def call(self, method: str, path: str, role: str | None = "admin", body=None, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {KEYS[role]}"
        if body is not None:  # json.dumps keeps lone surrogates as \\ud800 escapes, as a client may send
            kw["content"] = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.http.request(method, path, headers=headers, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    settings = tiny_server_settings(tmp / "data", limit=LIMIT, api={
        "api_keys": {v: k for k, v in KEYS.items()}, "rate_limit_per_minute": 100_000,
        "auth_failures_per_minute": 100_000})
    service = Service(Runtime(settings))
    app = create_app(service, settings)
    strict = settings.model_copy(update={"api": settings.api.model_copy(update={"auth_failures_per_minute": AUTH_BURST})})
    strict_app = create_app(service, strict)
    with ServerThread(app) as srv, ServerThread(strict_app, lifespan="off") as strict_srv:
        s = Server(service, srv.url, strict_srv.url, strict_app)
        yield s
        s.http.close()


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


# -- sampling values and odd input: 4xx naming the field, never a 500 -------------------------

GEN = {"prompt": "hello", "max_tokens": 4}
SAMPLING = [
    ("tiny-temperature", {**GEN, "temperature": 1e-100}, "temperature", "0.01"),
    ("temperature-below-min", {**GEN, "temperature": 0.001}, "temperature", "0.01"),
    ("temperature-over-max", {**GEN, "temperature": 2.5}, "temperature", "2"),
    ("negative-temperature", {**GEN, "temperature": -1.0}, "temperature", "-1.0"),
    ("seed-beyond-64-bits", {**GEN, "temperature": 0.5, "seed": 2**70}, "seed", str(2**70)),
    ("seed-2-pow-63", {**GEN, "temperature": 0.5, "seed": 2**63}, "seed", str(2**63)),
    ("negative-seed", {**GEN, "temperature": 0.5, "seed": -1}, "seed", "-1"),
]


@pytest.mark.parametrize(("name", "body", "param", "says"), SAMPLING, ids=[c[0] for c in SAMPLING])
def test_bad_sampling_values_are_422(server, name, body, param, says):
    err = assert_error(server.call("POST", "/v1/generate", "reader", body), 422, "invalid_value", param)
    assert says in err["message"]


@pytest.mark.parametrize(("name", "body"), [
    ("greedy", {**GEN, "temperature": 0}),
    ("min-temperature", {**GEN, "temperature": 0.01}),
    ("max-seed", {**GEN, "temperature": 1.0, "seed": 2**63 - 1}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_sampling_limits_themselves_are_served(server, name, body):
    r = server.call("POST", "/v1/generate", "reader", body)
    assert r.status_code == 200, r.text


def test_engine_refuses_what_the_api_refuses(server):
    """The serving layer has the same rule, for callers that are not the HTTP API."""
    with pytest.raises(InvalidInputError, match="temperature = 1e-100"):
        server.service.submit_generate([{"role": "user", "content": "hi"}], max_tokens=4, temperature=1e-100)
    with pytest.raises(InvalidInputError, match="seed"):
        server.service.submit_generate([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.5,
                                       seed=2**64)


SURROGATE = "a\ud800b"
ODD = [
    ("chat-lone-surrogate", "POST", "/v1/chat/completions",
     {"model": "twinloop", "max_tokens": 8, "messages": [{"role": "user", "content": SURROGATE}]},
     422, "messages[0].content"),
    ("chat-parts-lone-surrogate", "POST", "/v1/chat/completions",
     {"model": "twinloop", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]},
     422, "messages[0].content"),
    ("generate-lone-surrogate", "POST", "/v1/generate", {**GEN, "prompt": SURROGATE}, 422, "prompt"),
    ("answer-lone-surrogate", "POST", "/v1/answer", {"query": SURROGATE, "max_tokens": 8}, 422, "query"),
    ("lora-adapter-4096-chars", "POST", "/v1/lora", {"adapter": "a" * 4096}, 422, "adapter"),
    ("lora-path-instead-of-digest", "POST", "/v1/lora", {"adapter": "x", "path": "/" + "a" * 1000}, 422, "path"),
    ("lora-name-4096-chars", "POST", "/v1/lora", {"adapter": "0" * 64, "name": "a" * 4096}, 422, "name"),
    ("lora-delete-name-4096-chars", "DELETE", "/v1/lora/" + "a" * 4096, None, 422, "name"),
    ("tiny-temperature", "POST", "/v1/generate", {**GEN, "temperature": 1e-100}, 422, "temperature"),
    ("seed-beyond-64-bits", "POST", "/v1/generate", {**GEN, "seed": 2**64 + 1}, 422, "seed"),
    ("train-seed-beyond-64-bits", "POST", "/v1/admin/train", {"seed": 2**70}, 422, "seed"),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "param"), ODD, ids=[c[0] for c in ODD])
def test_odd_input_is_a_4xx_naming_the_field(server, name, method, path, body, status, param):
    err = assert_error(server.call(method, path, "admin", body), status, param=param)
    assert len(err["message"]) < 400  # a huge input does not come back whole


# -- client errors never count against the release ------------------------------------------

@pytest.mark.parametrize(("name", "error", "counts"), [
    ("invalid-input", InvalidInputError("bad"), False),
    ("unknown-domain", UnknownDomainError("astrology"), False),
    ("max-tokens", MaxTokensError("too many", 64), False),
    ("queue-full", QueueFullError("full", 1.0), False),
    ("engine-stopping", EngineStoppedError("stopping"), False),
    ("client-cancelled", asyncio.CancelledError(), False),
    ("stream-closed", GeneratorExit(), False),
    ("no-error", None, False),
    ("server-crash", RuntimeError("probability tensor contains nan"), True),
    ("injected-fault", InjectedFault("injected"), True),
], ids=lambda v: v if isinstance(v, str) else "")
def test_which_failures_count_against_a_release(name, error, counts):
    assert counts_against_release(error) is counts


BAD_REQUESTS = [  # each passes or fails at a different layer: schema, service, pipeline, engine
    ("tiny-temperature", "POST", "/v1/generate", {**GEN, "temperature": 1e-100}),
    ("huge-seed", "POST", "/v1/generate", {**GEN, "temperature": 0.5, "seed": 2**70}),
    ("generate-unknown-domain", "POST", "/v1/generate", {**GEN, "domain": "astrology"}),
    ("generate-over-token-limit", "POST", "/v1/generate", {**GEN, "max_tokens": LIMIT + 1}),
    ("answer-bad-date", "POST", "/v1/answer", {"query": "What is erasure?", "as_of": "not-a-date", "max_tokens": 8}),
    ("answer-unknown-domain", "POST", "/v1/answer", {"query": "What is erasure?", "domain": "astrology"}),
    ("answer-lone-surrogate", "POST", "/v1/answer", {"query": SURROGATE, "max_tokens": 8}),
    ("chat-lone-surrogate", "POST", "/v1/chat/completions",
     {"model": "twinloop", "max_tokens": 8, "messages": [{"role": "user", "content": SURROGATE}]}),
]
N_BAD = 12  # more than the breaker's window (10) and the rollback watch's min_requests (10)


@pytest.fixture
def watched(server):
    """A rollback watch on Active, as right after a swap; removed afterwards."""
    control = server.service.control
    control.breaker.reset()
    control._watch = RollbackWatch(control.active.id, server.service.settings.rollback, 0.0)
    yield control
    control._watch = None
    control.breaker.reset()


@pytest.mark.parametrize(("name", "method", "path", "body"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_leave_the_breaker_closed_and_the_watch_quiet(server, watched, name, method, path, body):
    before = len(server.service.runtime.events.list(action="rollback.automatic"))
    for _ in range(N_BAD):
        r = server.call(method, path, "reader", body)
        assert 400 <= r.status_code < 500, r.text
    watched.flush()
    snap = watched.breaker.snapshot()
    assert snap["state"] == "closed" and snap["failures"] == 0
    watch = watched.status()["watch"]
    assert watch is not None and not watch["fired"] and watch["error_rate"] == 0.0
    assert len(server.service.runtime.events.list(action="rollback.automatic")) == before


def test_server_failures_still_count(server, watched):
    """The other side: the same number of server-side failures does reach the breaker."""
    from twinloop.serving.faults import Fault

    watched.faults.set(Fault(watched.active.id, error_rate=1.0))
    try:
        for _ in range(N_BAD):
            server.call("POST", "/v1/answer", "reader", {"query": "What is erasure?", "max_tokens": 8})
    finally:
        watched.faults.clear()
    watched.flush()
    snap = watched.breaker.snapshot()
    assert snap["state"] == "open" or snap["failures"] >= 5


# -- failed authentication: throttled per address, aggregated in the audit log -----------------

@pytest.mark.parametrize(("name", "headers"), [
    ("invalid-bearer", {"Authorization": "Bearer wrong-key-123456"}),
    ("invalid-x-api-key", {"X-API-Key": "wrong-key-123456"}),
    ("missing-key", {}),
])
def test_failed_authentication_is_throttled_and_aggregated(server, name, headers):
    events = server.service.runtime.events
    audit = server.app.state.auth_audit
    audit.flush()
    server.app.state.auth_failure_limiter._buckets.clear()  # a fresh budget for this case
    last = events.list(limit=1)
    since = last[0].seq if last else 0
    with httpx.Client(base_url=server.strict_url, timeout=30) as c:
        codes = Counter(c.get("/v1/info", headers=headers).status_code for _ in range(40))
        assert codes == {401: AUTH_BURST, 429: 40 - AUTH_BURST}
        r = c.get("/v1/info", headers=headers)
        assert_error(r, 429, "auth_rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        # A valid key from the same address is still served: one client's bad key must not
        # lock out the others behind the same proxy.
        assert c.get("/v1/info", headers={"Authorization": f"Bearer {KEYS['reader']}"}).status_code == 200
    written = events.list(action="auth.failed", since_seq=since, limit=1000)
    assert len(written) == 1  # the first refusal of the window; the other 40 are only counted
    audit.flush()
    written = events.list(action="auth.failed", since_seq=since, limit=1000)
    assert sorted(e.data["count"] for e in written) == [1, 40]
    assert all("wrong-key" not in str(e.to_dict()) and "127.0.0.1" not in str(e.to_dict()) for e in written)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("name", "script", "written"), [
    # script: (seconds to advance, client address) per refusal; written: (address, count) per event
    ("one-refusal", [(0, "a")], [("a", 1)]),
    ("flood-in-one-window", [(0, "a")] * 250, [("a", 1), ("a", 249)]),
    ("two-addresses", [(0, "a"), (0, "b"), (0, "a"), (0, "b")], [("a", 1), ("b", 1), ("a", 1), ("b", 1)]),
    ("next-window", [(0, "a"), (1, "a"), (60, "a")], [("a", 1), ("a", 1), ("a", 1)]),
])
def test_failure_audit_windows(name, script, written):
    clock = FakeClock()
    out: list[tuple[str, int]] = []
    audit = FailureAudit(lambda f, count, reasons: out.append((f.client, count)), window_s=60, clock=clock)
    for dt, client in script:
        clock.now += dt
        audit.record(AuthFailure("invalid_key", "/v1/info", "req_x", "abc", "reader", client))
    audit.flush()
    assert sorted(out) == sorted(written)


def test_failure_audit_is_bounded_in_addresses():
    out: list[tuple[str, int]] = []
    audit = FailureAudit(lambda f, count, reasons: out.append((f.client, count)), max_windows=3, clock=FakeClock())
    for i in range(100):
        audit.record(AuthFailure("missing_key", "/v1/info", "req_x", None, "reader", f"10.0.0.{i}"))
    assert len(out) == 4  # three addresses of their own, the rest share one window
    audit.flush()
    assert sum(c for _, c in out) == 100


# -- bounded metric labels -------------------------------------------------------------------

def test_made_up_methods_and_paths_share_one_label(server):
    for i in range(20):
        server.call(f"BREW{i}", "/v1/health", role=None)
        server.call("GET", f"/v1/nothing-{i}", role=None)
    text = server.call("GET", "/metrics", "reader").text
    samples = [s for f in text_string_to_metric_families(text) if f.name == "twinloop_http_request_duration_seconds"
               for s in f.samples if s.name.endswith("_count")]
    methods = {s.labels["method"] for s in samples}
    assert not any(m.startswith("BREW") for m in methods) and "other" in methods
    routes = {s.labels["route"] for s in samples}
    assert not any(r.startswith("/v1/nothing") for r in routes) and "unmatched" in routes


# -- allowed Host names ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "allowed", "host", "ok"), [
    ("localhost-with-port", ["localhost"], "localhost:8080", True),
    ("loopback-ip", ["127.0.0.1"], "127.0.0.1", True),
    ("ipv6-loopback", ["::1"], "[::1]:8080", True),
    ("case-insensitive", ["localhost"], "LOCALHOST", True),
    ("other-name", ["localhost", "127.0.0.1"], "evil.example", False),
    ("rebinding-name", ["localhost"], "localhost.evil.example", False),
    ("empty", ["localhost"], "", False),
    ("subdomain-wildcard", ["*.example.org"], "api.example.org", True),
    ("wildcard-not-apex-lookalike", ["*.example.org"], "badexample.org", False),
    ("star-allows-all", ["*"], "anything.example", True),
])
def test_allowed_hosts_table(name, allowed, host, ok):
    assert AllowedHostsMiddleware(None, allowed, None).allows(host) is ok


@pytest.mark.parametrize(("name", "host", "status"), [
    ("bind-address", None, 200),
    ("localhost", "localhost", 200),
    ("foreign", "evil.example", 400),
])
def test_host_header_checked_by_default(server, name, host, status):
    headers = {"Host": host} if host else {}
    r = server.call("GET", "/v1/health", role=None, headers=headers)
    if status == 400:
        assert_error(r, 400, "invalid_host")
    else:
        assert r.status_code == status, r.text


# -- strict booleans -------------------------------------------------------------------------

STRICT = [
    ("retention-dry-run-0", "/v1/admin/retention", {"dry_run": 0}, "dry_run"),
    ("retention-dry-run-yes", "/v1/admin/retention", {"dry_run": "yes"}, "dry_run"),
    ("retention-dry-run-string-false", "/v1/admin/retention", {"dry_run": "false"}, "dry_run"),
    ("swap-force-1", "/v1/admin/swap", {"force": 1}, "force"),
    ("answer-stream-1", "/v1/answer", {"query": "q", "stream": 1}, "stream"),
    ("generate-stream-yes", "/v1/generate", {**GEN, "stream": "yes"}, "stream"),
    ("chat-stream-0", "/v1/chat/completions", {"model": "twinloop", "messages": [{"role": "user", "content": "q"}],
                                               "stream": 0}, "stream"),
]


@pytest.mark.parametrize(("name", "path", "body", "param"), STRICT, ids=[c[0] for c in STRICT])
def test_booleans_are_strict(server, name, path, body, param):
    assert_error(server.call("POST", path, "admin", body), 422, "invalid_value", param)


# -- documented error responses --------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "codes"), [
    ("post", "/v1/answer", {"401", "403", "422", "429", "503"}),
    ("post", "/v1/generate", {"401", "403", "422", "429", "503"}),
    ("post", "/v1/chat/completions", {"401", "403", "404", "422", "429", "503"}),
    ("get", "/v1/models/{model_id}", {"401", "403", "404", "429"}),
    ("post", "/v1/feedback", {"401", "403", "404", "422", "429"}),
    ("delete", "/v1/lora/{name}", {"401", "403", "409", "429"}),
    ("post", "/v1/admin/train", {"401", "403", "409", "422", "429"}),
    ("get", "/v1/admin/train/{job_id}", {"401", "403", "404", "429"}),
    ("post", "/v1/admin/retention", {"401", "403", "422", "429"}),
])
def test_openapi_documents_error_responses(server, method, path, codes):
    doc = server.call("GET", "/openapi.json", role=None).json()
    documented = doc["paths"][path][method]["responses"]
    assert codes <= set(documented), sorted(documented)
    assert documented["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_health_documents_no_auth_errors(server):
    doc = server.call("GET", "/openapi.json", role=None).json()
    assert "401" not in doc["paths"]["/v1/health"]["get"]["responses"]


# -- a non-streaming request whose client went away is cancelled ------------------------------

@pytest.mark.parametrize(("name", "path", "body"), [
    ("generate", "/v1/generate", {"prompt": "tell me a long story", "max_tokens": LIMIT}),
    ("answer", "/v1/answer", {"query": "tell me a long story", "domain": "general", "max_tokens": LIMIT}),
])
def test_client_gone_cancels_the_generation(server, monkeypatch, name, path, body):
    svc = server.service
    submitted = []
    submit = svc.engine.submit

    def spy(req):
        pending = submit(req)
        submitted.append(pending)
        return pending

    monkeypatch.setattr(svc.engine, "submit", spy)
    # Hold the model, so the request cannot finish before its client hangs up.
    hold, release = threading.Event(), threading.Event()

    def holder():
        with svc.adapters.generating():
            hold.set()
            release.wait(60)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert hold.wait(30)
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            server.call("POST", path, "reader", body, timeout=httpx.Timeout(60, read=1.0))
        for _ in range(600):  # the server sees the disconnect and cancels
            if submitted and (submitted[0]._cancel_requested or submitted[0].done()):
                break
            threading.Event().wait(0.05)
    finally:
        release.set()
        t.join(30)
    if not submitted:
        pytest.skip(f"{name}: this question was answered without generating")
    assert submitted[0].result(30).finish_reason == "cancelled"
