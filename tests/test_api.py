"""The HTTP API on a real server (uvicorn on a loopback port) with the tiny model.

Driven with httpx and the official ``openai`` client; nothing of ours is mocked. Case tables
(a case table per concern): each route's 200, 401, 403, malformed JSON, schema, body-size and token-limit
cases, with every error checked for OpenAI's shape.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import httpx
import openai
import pytest
from helpers import tiny_server_settings
from prometheus_client.parser import text_string_to_metric_families

from twinloop.api import create_app
from twinloop.api.errors import to_api_error
from twinloop.api.logs import ACCESS_LOGGER, JsonFormatter
from twinloop.api.ratelimit import RateLimiter
from twinloop.api.server import ServerThread
from twinloop.kernel.errors import ConfigError
from twinloop.runtime import Runtime
from twinloop.serving.engine import EngineStoppedError, QueueFullError
from twinloop.serving.service import Service

KEYS = {"admin": "admin-key-0001", "operator": "operator-key-0001", "reader": "reader-key-0001"}
MAX_BODY = 4096
LIMIT = 64  # ServingConfig.max_new_tokens_limit in these tests

LAW_DOCS = [
    {"text": "The data subject shall have the right to obtain from the controller the erasure of personal "
             "data concerning him or her without undue delay.", "source": "GDPR", "code": "GDPR",
     "article": "17", "part": "1", "jurisdiction": "EU", "edition_date": "2016-04-27",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_17"},
    {"text": "The controller shall provide information on action taken on a request to the data subject "
             "without undue delay and in any event within one month of receipt of the request.",
     "code": "GDPR", "article": "12", "part": "3", "jurisdiction": "EU", "edition_date": "2016-04-27",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_12"},
]


class Api:
    """A running server and the pieces the tests need."""

    def __init__(self, service: Service, server: ServerThread, limited: ServerThread):
        self.service = service
        self.server = server
        self.url = server.url
        self.limited_url = limited.url
        self.http = httpx.Client(base_url=server.url, timeout=60)

    def call(self, method: str, path: str, role: str | None = "admin", **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {KEYS[role]}"
        return self.http.request(method, path, headers=headers, **kw)

    def openai(self, role: str = "reader") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEYS[role], max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    settings = tiny_server_settings(tmp / "data", limit=LIMIT, api={
        "api_keys": {KEYS[r]: r for r in KEYS}, "max_body_bytes": MAX_BODY,
        "rate_limit_per_minute": 100_000, "auth_failures_per_minute": 100_000})
    service = Service(Runtime(settings))
    app = create_app(service, settings)
    # A second app on the same (already running) service: a tight rate limit, and a route that
    # fails, to see a 500's shape. lifespan="off": the first server owns the service.
    limited_settings = settings.model_copy(update={"api": settings.api.model_copy(update={"rate_limit_per_minute": 3})})
    limited_app = create_app(service, limited_settings)

    def boom() -> None:
        raise RuntimeError("internal detail /secret/path")

    limited_app.add_api_route("/boom", boom, methods=["GET"])
    with ServerThread(app) as server, ServerThread(limited_app, lifespan="off") as limited:
        a = Api(service, server, limited)
        r = a.call("POST", "/v1/ingest", role="operator", json={"domain": "law", "documents": LAW_DOCS})
        assert r.status_code == 200, r.text
        yield a
        a.http.close()


@pytest.fixture(scope="module")
def answered(api) -> str:
    """A request id the request log knows (for feedback)."""
    r = api.call("POST", "/v1/answer", role="reader", json={"query": "What is the right to erasure?"})
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """OpenAI's error shape, the status, a request id, and no internals."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, body
    assert r.headers["x-request-id"] == body["request_id"]
    assert "Traceback" not in r.text
    return err


# -- 200 for every route, with the least role that may call it --------------------------------

OK_CASES = [
    ("health", "GET", "/v1/health", None, None),
    ("docs", "GET", "/docs", None, None),
    ("openapi", "GET", "/openapi.json", None, None),
    ("info", "GET", "/v1/info", "reader", None),
    ("models", "GET", "/v1/models", "reader", None),
    ("model", "GET", "/v1/models/twinloop:law", "reader", None),
    ("answer", "POST", "/v1/answer", "reader", {"query": "Can I have my personal data erased?", "max_tokens": 8}),
    ("answer-forced", "POST", "/v1/answer", "reader",
     {"query": "erasure", "domain": "law", "as_of": "2020-01-01", "jurisdiction": "EU", "user_id": "u1",
      "session_id": "s1"}),
    ("generate", "POST", "/v1/generate", "reader", {"prompt": "Hello", "max_tokens": 8, "session_id": "s1"}),
    ("generate-domain", "POST", "/v1/generate", "reader", {"prompt": "Hello", "max_tokens": 4, "domain": "law",
                                                           "temperature": 0.7, "seed": 3}),
    ("chat", "POST", "/v1/chat/completions", "reader",
     {"model": "twinloop", "messages": [{"role": "user", "content": "What is erasure?"}], "max_tokens": 8}),
    ("ingest", "POST", "/v1/ingest", "operator",
     {"domain": "fin", "documents": [{"text": "Net revenue rose 4 % in the fiscal year.", "source": "report"}]}),
    ("metrics", "GET", "/metrics", "reader", None),
    ("lora-list", "GET", "/v1/lora", "admin", None),
]


@pytest.mark.parametrize(("name", "method", "path", "role", "body"), OK_CASES, ids=[c[0] for c in OK_CASES])
def test_route_ok(api, name, method, path, role, body):
    r = api.call(method, path, role=role, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"].startswith("req_")


def test_openapi_documents_routes_and_keys(api):
    spec = api.call("GET", "/openapi.json", role=None).json()
    for path in ("/v1/answer", "/v1/generate", "/v1/chat/completions", "/v1/models", "/v1/feedback", "/v1/ingest",
                 "/v1/health", "/v1/info", "/metrics", "/v1/lora", "/v1/lora/{name}"):
        assert path in spec["paths"], path
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


def test_answer_record(api):
    r = api.call("POST", "/v1/answer", role="reader",
                 json={"query": "Can I have my personal data erased under the GDPR?", "domain": "law"})
    rec = r.json()
    assert rec["request_id"] == r.headers["x-request-id"]
    assert rec["domains"] == ["law"] and rec["release_id"].startswith("rel_")
    assert {"route", "retrieve", "decide", "total"} <= set(rec["timings_ms"])
    uris = {d["uri"] for d in LAW_DOCS}
    assert rec["retrieved"] and {p["uri"] for p in rec["retrieved"]} <= uris
    # The answer contract; whatever the tiny model's noise, a claim is a quote of a cited passage.
    assert {"status", "summary", "claims", "citations", "as_of", "jurisdiction", "searched", "release_id",
            "request_id", "timings_ms"} <= set(rec)
    assert rec["status"] in ("answered", "cannot_verify", "out_of_scope")
    assert set(rec["searched"]) >= {"domains", "as_of", "jurisdiction", "top_scores"}
    texts = {d["uri"]: d["text"] for d in LAW_DOCS}
    by_n = {c["n"]: c for c in rec["citations"]}
    for claim in rec["claims"]:
        assert claim["citations"] and all(claim["text"] in texts[by_n[n]["uri"]] for n in claim["citations"])
    for c in rec["citations"]:
        assert c["uri"] in uris and c["exact_quote"] in texts[c["uri"]]
    if rec["status"] != "answered":
        assert rec["claims"] == [] and rec["citations"] == []


@pytest.mark.parametrize(("body", "asked"), [
    ({"query": "How long does a controller have to answer a request?", "jurisdiction": "US"}, {"jurisdiction": "US"}),
    ({"query": "What does the California Consumer Privacy Act require?"}, {"source": "CCPA"}),
    ({"query": "What does Article 150 GDPR say about erasure?"}, {"source": "GDPR", "article": "150"}),
], ids=["jurisdiction-param", "source-not-held", "article-not-held"])
def test_a_question_about_what_the_index_does_not_hold_is_out_of_scope(api, body, asked):
    r = api.call("POST", "/v1/answer", role="reader", json={**body, "domain": "law"})
    rec = r.json()
    assert r.status_code == 200 and rec["status"] == "out_of_scope", rec
    assert rec["claims"] == [] and rec["citations"] == [] and rec["completion_tokens"] == 0  # nothing generated
    assert asked.items() <= rec["searched"]["asked_for"].items()
    assert "Searched: law" in rec["summary"] and rec["mode"] == "refused"


def test_openai_client_sends_as_of_and_jurisdiction_as_extra_body(api):
    resp = api.openai().chat.completions.create(
        model="twinloop:law", max_tokens=8, messages=[{"role": "user", "content": "How long to answer a request?"}],
        extra_body={"as_of": "2020-01-01", "jurisdiction": "US"})
    extra = resp.model_extra["twinloop"]
    assert extra["status"] == "out_of_scope" and extra["as_of"] == "2020-01-01" and extra["jurisdiction"] == "US"
    assert "Out of scope" in resp.choices[0].message.content


def test_generate_result(api):
    r = api.call("POST", "/v1/generate", role="reader", json={"prompt": "Say hi", "max_tokens": 5})
    body = r.json()
    assert set(body) == {"request_id", "text", "prompt_tokens", "completion_tokens", "finish_reason", "timings"}
    assert body["completion_tokens"] <= 5 and body["prompt_tokens"] > 0
    assert {"queue_ms", "generate_ms", "total_ms"} == set(body["timings"])
    # Logged, so feedback can refer to it.
    assert api.service.requestlog.get(body["request_id"])["kind"] == "generate"


def _sse(r: httpx.Response) -> list:
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_answer_stream(api):
    r = api.call("POST", "/v1/answer", role="reader", json={"query": "erasure of personal data", "stream": True,
                                                            "domain": "law", "max_tokens": 12})
    assert r.status_code == 200, r.text
    events = _sse(r)
    assert events[0]["type"] == "meta" and events[0]["domains"] == ["law"]
    assert events[-1]["type"] == "answer"
    record = events[-1]["record"]
    deltas = "".join(e["text"] for e in events if e["type"] == "delta")
    assert record["request_id"] == events[0]["request_id"]
    # The constrained decoder streams "[n]" and passage text only; the record is the blocking shape.
    assert deltas.startswith("[1]") or deltas.startswith("[2]") or not deltas
    blocking = api.call("POST", "/v1/answer", role="reader",
                        json={"query": "erasure of personal data", "domain": "law", "max_tokens": 12}).json()
    same = ("status", "summary", "claims", "citations", "mode", "grounded", "as_of", "searched")
    assert {k: record[k] for k in same} == {k: blocking[k] for k in same}


def test_generate_stream(api):
    r = api.call("POST", "/v1/generate", role="reader", json={"prompt": "Hi", "max_tokens": 6, "stream": True})
    events = _sse(r)
    result = events[-1]
    assert result["type"] == "result"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == result["text"]


def test_feedback_stored_and_joined(api, answered):
    r = api.call("POST", "/v1/feedback", role="operator",
                 json={"request_id": answered, "score": -0.5, "correction": "Art. 17 GDPR applies."})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["request_id"] == answered and body["score"] == -0.5 and body["id"] > 0
    assert body["status"] == "accepted"  # filtered at once: a training sample for Shadow
    stored = [f for f in api.service.runtime.feedback.list() if f["id"] == body["id"]]
    assert stored and stored[0]["query"] == "What is the right to erasure?"


def test_ingest_report_and_answerable(api):
    doc = {"text": "Article 20 gives the data subject the right to data portability in a machine-readable format.",
           "code": "GDPR", "article": "20", "jurisdiction": "EU", "uri": "https://example.org/gdpr/20"}
    r = api.call("POST", "/v1/ingest", role="operator", json={"domain": "law", "documents": [doc, doc]})
    report = r.json()
    assert report["domain"] == "law" and report["added"] == 1 and report["skipped_duplicates"] == 1
    assert report["revision"] is not None
    r = api.call("POST", "/v1/answer", role="reader",
                 json={"query": "right to data portability machine-readable", "domain": "law", "max_tokens": 4})
    assert "https://example.org/gdpr/20" in {p["uri"] for p in r.json()["retrieved"]}


# -- 401 / 403 --------------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/v1/answer", {"query": "q"}),
    ("POST", "/v1/generate", {"prompt": "p"}),
    ("POST", "/v1/chat/completions", {"model": "twinloop", "messages": [{"role": "user", "content": "q"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/info", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/feedback", {"request_id": "req_x", "score": 1}),
    ("POST", "/v1/ingest", {"domain": "law", "documents": [{"text": "t"}]}),
    ("GET", "/v1/lora", None),
    ("POST", "/v1/lora", {"adapter": "law@rel_nowhere"}),
    ("DELETE", "/v1/lora/x", None),
]
BAD_CREDENTIALS = {
    "no-key": ({}, "missing_api_key"),
    "bad-bearer": ({"Authorization": "Bearer not-a-key-at-all"}, "invalid_api_key"),
    "bad-x-api-key": ({"X-API-Key": "not-a-key-at-all"}, "invalid_api_key"),
    "basic-scheme": ({"Authorization": f"Basic {KEYS['admin']}"}, "missing_api_key"),
}


@pytest.mark.parametrize("cred", list(BAD_CREDENTIALS))
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_401(api, method, path, body, cred):
    headers, code = BAD_CREDENTIALS[cred]
    r = api.call(method, path, role=None, headers=headers, json=body)
    assert_error(r, 401, code)
    assert r.headers["www-authenticate"] == "Bearer"


def test_401_before_body_is_parsed(api):
    """A caller without a key learns nothing about the body: 401, not 400."""
    r = api.call("POST", "/v1/answer", role=None, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 401, "missing_api_key")


FORBIDDEN = [
    ("reader", "POST", "/v1/feedback", {"request_id": "req_x", "score": 1}),
    ("reader", "POST", "/v1/ingest", {"domain": "law", "documents": [{"text": "t"}]}),
    ("reader", "GET", "/v1/lora", None),
    ("reader", "POST", "/v1/lora", {"adapter": "law@rel_nowhere"}),
    ("reader", "DELETE", "/v1/lora/x", None),
    ("operator", "GET", "/v1/lora", None),
    ("operator", "POST", "/v1/lora", {"adapter": "law@rel_nowhere"}),
    ("operator", "DELETE", "/v1/lora/x", None),
]


@pytest.mark.parametrize(("role", "method", "path", "body"), FORBIDDEN,
                         ids=[f"{r} {m} {p}" for r, m, p, _ in FORBIDDEN])
def test_403(api, role, method, path, body):
    err = assert_error(api.call(method, path, role=role, json=body), 403, "insufficient_role")
    assert repr(role) in err["message"]


def test_x_api_key_header_works(api):
    r = api.call("GET", "/v1/info", role=None, headers={"X-API-Key": KEYS["reader"]})
    assert r.status_code == 200 and r.json()["release"].startswith("rel_")


# -- malformed, schema, size and token limits -------------------------------------------------

POST_ROUTES = ["/v1/answer", "/v1/generate", "/v1/chat/completions", "/v1/feedback", "/v1/ingest", "/v1/lora"]
MALFORMED = {
    "truncated": (b'{"query": "a"', "application/json"),
    "not-json": (b"query=a", "application/json"),
    "empty": (b"", "application/json"),
    "form-content-type": (b"query=a", "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("path", POST_ROUTES)
def test_malformed_json_400(api, path, case):
    content, ctype = MALFORMED[case]
    err = assert_error(api.call("POST", path, content=content, headers={"content-type": ctype}), 400, "invalid_json")
    assert "JSON" in err["message"]


SCHEMA = [
    ("answer-missing-query", "/v1/answer", {"user_id": "u"}, "query", "missing field 'query'"),
    ("answer-query-type", "/v1/answer", {"query": 12}, "query", "query = 12"),
    ("answer-unknown-field", "/v1/answer", {"query": "q", "max_token": 5}, "max_token", "unknown field 'max_token'"),
    ("answer-max-tokens-type", "/v1/answer", {"query": "q", "max_tokens": "many"}, "max_tokens", "'many'"),
    ("answer-max-tokens-zero", "/v1/answer", {"query": "q", "max_tokens": 0}, "max_tokens", "max_tokens = 0"),
    ("answer-body-array", "/v1/answer", [1, 2], None, "request body = [1, 2]"),
    ("generate-temperature", "/v1/generate", {"prompt": "p", "temperature": 5}, "temperature", "temperature = 5"),
    ("generate-empty-prompt", "/v1/generate", {"prompt": ""}, "prompt", "prompt = ''"),
    ("feedback-score", "/v1/feedback", {"request_id": "req_x", "score": 2}, "score", "score = 2"),
    ("feedback-score-type", "/v1/feedback", {"request_id": "req_x", "score": "good"}, "score", "'good'"),
    ("ingest-no-documents", "/v1/ingest", {"domain": "law", "documents": []}, "documents", "documents = []"),
    ("ingest-document-not-object", "/v1/ingest", {"domain": "law", "documents": ["text"]}, "documents[0]",
     "documents[0] = 'text'"),
    ("chat-no-messages", "/v1/chat/completions", {"model": "twinloop", "messages": []}, "messages", "messages = []"),
    ("chat-bad-role", "/v1/chat/completions", {"model": "twinloop", "messages": [{"role": "boss", "content": "q"}]},
     "messages[0].role", "'boss'"),
    ("chat-n", "/v1/chat/completions", {"model": "twinloop", "n": 2, "messages": [{"role": "user", "content": "q"}]},
     "n", "n = 2"),
    ("lora-path-field", "/v1/lora", {"adapter": "law@x", "path": "/etc"}, "path", "path"),
]


@pytest.mark.parametrize(("name", "path", "body", "param", "says"), SCHEMA, ids=[c[0] for c in SCHEMA])
def test_schema_422(api, name, path, body, param, says):
    err = assert_error(api.call("POST", path, json=body), 422, "invalid_value")
    assert err["param"] == param
    assert says in err["message"]


SEMANTIC = [
    ("answer-bad-date", "/v1/answer", {"query": "q", "as_of": "2020-13-45"}, "invalid_input", "as_of = '2020-13-45'"),
    ("answer-blank-query", "/v1/answer", {"query": "   "}, "invalid_input", "query"),
    ("answer-query-too-long", "/v1/answer", {"query": "x" * 4001}, "invalid_input", "over the limit of 4000"),
    ("answer-bad-jurisdiction", "/v1/answer", {"query": "q", "jurisdiction": "Narnia"}, "invalid_input",
     "jurisdiction = 'Narnia'"),
    ("chat-bad-as-of", "/v1/chat/completions",
     {"model": "twinloop:law", "as_of": "yesterday", "messages": [{"role": "user", "content": "q"}]},
     "invalid_input", "as_of = 'yesterday'"),
    ("chat-bad-jurisdiction", "/v1/chat/completions",
     {"model": "twinloop:law", "jurisdiction": "E", "messages": [{"role": "user", "content": "q"}]},
     "invalid_input", "jurisdiction = 'E'"),
    ("ingest-bad-field", "/v1/ingest",
     {"domain": "law", "documents": [{"text": "fine"}, {"text": "x", "edition_date": "2020-13-01"}]},
     "invalid_input", "document 1: edition_date = '2020-13-01'"),
    ("ingest-unknown-field", "/v1/ingest", {"domain": "law", "documents": [{"text": "x", "colour": "red"}]},
     "invalid_input", "document 0: unknown field 'colour'"),
    ("ingest-missing-text", "/v1/ingest", {"domain": "law", "documents": [{"uri": "u"}]},
     "invalid_input", "document 0: missing field 'text'"),
    ("chat-no-user-message", "/v1/chat/completions",
     {"model": "twinloop", "messages": [{"role": "system", "content": "be brief"}]}, "invalid_value", "no 'user'"),
    ("chat-image-part", "/v1/chat/completions",
     {"model": "twinloop", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "invalid_value", "only text parts"),
]


@pytest.mark.parametrize(("name", "path", "body", "code", "says"), SEMANTIC, ids=[c[0] for c in SEMANTIC])
def test_invalid_input_422(api, name, path, body, code, says):
    err = assert_error(api.call("POST", path, json=body), 422, code)
    assert says in err["message"]


TOKEN_LIMIT = [
    ("answer", "/v1/answer", {"query": "q", "max_tokens": LIMIT + 1}),
    ("generate", "/v1/generate", {"prompt": "p", "max_tokens": 10**9}),
    ("chat-max-tokens", "/v1/chat/completions",
     {"model": "twinloop", "messages": [{"role": "user", "content": "q"}], "max_tokens": LIMIT + 1}),
    ("chat-max-completion-tokens", "/v1/chat/completions",
     {"model": "twinloop", "messages": [{"role": "user", "content": "q"}], "max_completion_tokens": LIMIT + 1}),
]


@pytest.mark.parametrize(("name", "path", "body"), TOKEN_LIMIT, ids=[c[0] for c in TOKEN_LIMIT])
def test_max_tokens_over_limit(api, name, path, body):
    err = assert_error(api.call("POST", path, json=body), 422, "max_tokens_exceeded")
    assert err["param"] == "max_tokens" and f"limit of {LIMIT}" in err["message"]


def _chunks(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/v1/answer", "/v1/ingest", "/v1/chat/completions"])
def test_oversized_body_413(api, path, chunked):
    data = json.dumps({"query": "x" * (MAX_BODY + 10)}).encode()
    with httpx.Client(base_url=api.url, timeout=30) as fresh:  # the server closes the connection after a 413
        headers = {"Authorization": f"Bearer {KEYS['admin']}", "content-type": "application/json"}
        r = fresh.post(path, content=_chunks(data) if chunked else data, headers=headers)
    if chunked:
        assert "content-length" not in r.request.headers
    err = assert_error(r, 413, "body_too_large")
    assert str(MAX_BODY) in err["message"]


UNKNOWN_DOMAIN = [
    ("answer", "/v1/answer", {"query": "q", "domain": "astrology"}),
    ("generate", "/v1/generate", {"prompt": "p", "domain": "astrology"}),
    ("ingest", "/v1/ingest", {"domain": "astrology", "documents": [{"text": "Mars is in retrograde."}]}),
]


@pytest.mark.parametrize(("name", "path", "body"), UNKNOWN_DOMAIN, ids=[c[0] for c in UNKNOWN_DOMAIN])
def test_unknown_domain_422(api, name, path, body):
    err = assert_error(api.call("POST", path, json=body), 422, "unknown_domain")
    assert err["param"] == "domain" and "'astrology'" in err["message"]


@pytest.mark.parametrize("model", ["gpt-4o", "twinloop:astrology", "twinloop:"])
def test_unknown_model_404(api, model):
    r = api.call("POST", "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "q"}]})
    err = assert_error(r, 404, "model_not_found")
    assert err["param"] == "model" and repr(model) in err["message"]
    assert_error(api.call("GET", f"/v1/models/{model}"), 404, "model_not_found")


def test_feedback_unknown_request_404(api):
    err = assert_error(api.call("POST", "/v1/feedback", json={"request_id": "req_never", "score": 1}), 404,
                       "unknown_request")
    assert "'req_never'" in err["message"]


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/v1/nothing", 404), ("GET", "/v1/answer", 405),
                                                        ("PUT", "/v1/feedback", 405)])
def test_unknown_route_and_method(api, method, path, status):
    assert_error(api.call(method, path), status)


ODD_INPUTS = [
    ("fts-syntax", "/v1/answer", {"query": '"unbalanced AND (OR NOT * NEAR', "max_tokens": 2}),
    ("nul-byte", "/v1/answer", {"query": "erasure\u0000now", "max_tokens": 2}),
    ("emoji", "/v1/answer", {"query": "🙂" * 50, "max_tokens": 2}),
    ("sql-jurisdiction", "/v1/answer", {"query": "erasure", "jurisdiction": "'; DROP TABLE requests; --",
                                        "max_tokens": 2}),
    ("ancient-date", "/v1/answer", {"query": "erasure", "as_of": "0001-01-01", "max_tokens": 2}),
    ("huge-int", "/v1/answer", {"query": "q", "max_tokens": 10**40}),
    ("nan-temperature", "/v1/generate", b'{"prompt": "p", "temperature": NaN}'),
    ("deep-nesting", "/v1/ingest", b'{"domain": "law", "documents": [' + b"[" * 500 + b"]" * 500 + b"]}"),
    ("null-everything", "/v1/answer", {"query": None, "user_id": None}),
    ("feedback-null-correction", "/v1/feedback", {"request_id": "req_x", "score": 0, "correction": None}),
    ("chat-null-content", "/v1/chat/completions", {"model": "twinloop", "messages": [{"role": "user"}]}),
    ("generate-long-prompt", "/v1/generate", {"prompt": "y" * 3000, "max_tokens": 1}),
]


@pytest.mark.parametrize(("name", "path", "body"), ODD_INPUTS, ids=[c[0] for c in ODD_INPUTS])
def test_odd_input_is_never_a_500(api, name, path, body):
    if isinstance(body, bytes):
        r = api.call("POST", path, content=body, headers={"content-type": "application/json"})
    else:
        r = api.call("POST", path, json=body)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error(r, r.status_code)


# -- rate limit, request ids, 500s -------------------------------------------------------------


def test_rate_limit_429(api):
    with httpx.Client(base_url=api.limited_url, timeout=30) as c:
        headers = {"Authorization": f"Bearer {KEYS['reader']}"}
        statuses = [c.get("/v1/info", headers=headers).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        r = c.get("/v1/info", headers=headers)
        err = assert_error(r, 429, "rate_limit_exceeded")
        assert int(r.headers["retry-after"]) >= 1 and "3 requests per minute" in err["message"]
        # Per key: another key still has its allowance.
        assert c.get("/v1/info", headers={"Authorization": f"Bearer {KEYS['admin']}"}).status_code == 200


def test_token_bucket_refills():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.acquire("k") is None for _ in range(60))
    wait = limiter.acquire("k")
    assert wait == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.acquire("k") is None and limiter.acquire("other") is None


def test_unexpected_error_is_a_clean_500(api):
    r = httpx.get(f"{api.limited_url}/boom")
    err = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert r.json()["request_id"] in err["message"]


@pytest.mark.parametrize(("given", "kept"), [("trace-42.a:b", True), ("bad id!", False), ("x" * 65, False)])
def test_request_id_header(api, given, kept):
    r = api.call("GET", "/v1/health", role=None, headers={"X-Request-ID": given})
    assert (r.headers["x-request-id"] == given) is kept
    if not kept:
        assert r.headers["x-request-id"].startswith("req_")


def test_client_request_id_does_not_key_the_log(api):
    """Client ids need not be unique; the answer is logged under a fresh id."""
    r = api.call("POST", "/v1/answer", role="reader", json={"query": "erasure", "max_tokens": 4},
                 headers={"X-Request-ID": "client-1"})
    assert r.headers["x-request-id"] == "client-1"
    assert r.json()["request_id"].startswith("req_")


def test_engine_errors_map_to_429_and_503():
    full = to_api_error(QueueFullError("queue full", retry_after_s=2.2))
    assert full.status == 429 and full.headers["Retry-After"] == "3" and full.code == "queue_full"
    stopped = to_api_error(EngineStoppedError("stopped"))
    assert stopped.status == 503 and int(stopped.headers["Retry-After"]) >= 1


# -- the official openai client ---------------------------------------------------------------


def test_openai_models(api):
    ids = [m.id for m in api.openai().models.list()]
    assert ids[0] == "twinloop" and {"twinloop:law", "twinloop:med", "twinloop:fin", "twinloop:general"} <= set(ids)
    assert api.openai().models.retrieve("twinloop:law").id == "twinloop:law"


def test_openai_chat(api):
    resp = api.openai().chat.completions.create(
        model="twinloop:law", max_tokens=8,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Can I have my personal data erased?"}])
    assert resp.object == "chat.completion" and resp.model == "twinloop:law"
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].finish_reason in ("stop", "length")
    extra = resp.model_extra["twinloop"]
    assert extra["domains"] == ["law"] and extra["release_id"].startswith("rel_")
    assert extra["status"] in ("answered", "cannot_verify", "out_of_scope") and isinstance(extra["citations"], list)
    assert {"summary", "claims", "searched", "as_of", "jurisdiction", "grounded"} <= set(extra)
    assert resp.usage.completion_tokens <= 8
    assert api.service.requestlog.get(extra["request_id"]) is not None


def test_openai_chat_stream(api):
    stream = api.openai().chat.completions.create(
        model="twinloop", max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "What does GDPR Article 17 say?"}]}])
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason in ("stop", "length")
    extra = final[0].model_extra["twinloop"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if extra["status"] in ("unverified", "no_sources"):
        assert "UNVERIFIED" in text  # the notice arrives as the last delta
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 8


@pytest.mark.parametrize(("role", "key", "error"), [
    ("bad-key", "wrong-key-0000", openai.AuthenticationError),
    ("reader", KEYS["reader"], None),
])
def test_openai_client_auth(api, role, key, error):
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    if error is None:
        assert client.models.list().data
    else:
        with pytest.raises(error) as e:
            client.models.list()
        assert e.value.code == "invalid_api_key"


def test_openai_client_errors(api):
    client = api.openai()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="twinloop", max_tokens=LIMIT + 1, stream=True,
                                       messages=[{"role": "user", "content": "q"}])
    assert e.value.code == "max_tokens_exceeded"


# -- metrics and logs -------------------------------------------------------------------------


def test_metrics_parse(api, answered):
    api.call("POST", "/v1/answer", role=None, json={"query": "q"})  # an auth failure to count
    r = api.call("GET", "/metrics", role="reader")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("twinloop_http_request_duration_seconds", "twinloop_pipeline_stage_duration_seconds",
                 "twinloop_engine_batch_size", "twinloop_engine_tokens_per_second"):
        assert families[name].type == "histogram", name
    assert families["twinloop_engine_queue_depth"].type == "gauge"
    stages = {s.labels["stage"] for s in families["twinloop_pipeline_stage_duration_seconds"].samples}
    assert {"route", "retrieve", "decide", "assemble"} <= stages
    requests = families["twinloop_http_request_duration_seconds"].samples
    assert any(s.labels.get("route") == "/v1/answer" and s.labels.get("domain") == "law"
               and s.labels.get("release", "").startswith("rel_") for s in requests)
    failures = {s.labels["reason"]: s.value for s in families["twinloop_auth_failures"].samples
                if s.name.endswith("_total")}
    assert failures.get("missing_key", 0) >= 1
    errors = {s.labels["type"] for s in families["twinloop_errors"].samples}
    assert "missing_api_key" in errors
    tokens = [s.value for s in families["twinloop_engine_generated_tokens"].samples if s.name.endswith("_total")]
    assert tokens[0] > 0


def test_access_log_is_json_without_pii(api, caplog):
    secret_query, user = "SECRET-QUESTION about erasure", "alice@example.com"
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        r = api.call("POST", "/v1/answer", role="reader", json={"query": secret_query, "user_id": user,
                                                                "max_tokens": 4})
        rid = r.headers["x-request-id"]
        deadline = time.monotonic() + 5
        while not [x for x in caplog.records if getattr(x, "request_id", None) == rid]:
            assert time.monotonic() < deadline, "no access log line"
            time.sleep(0.02)
    fmt = JsonFormatter()
    lines = [fmt.format(x) for x in caplog.records]
    mine = [json.loads(line) for line in lines if rid in line and '"route"' in line]
    assert mine[0]["route"] == "/v1/answer" and mine[0]["status"] == 200 and mine[0]["release"].startswith("rel_")
    assert mine[0]["latency_ms"] > 0 and mine[0]["key"] and mine[0]["key"] != KEYS["reader"]
    text = "\n".join(lines)
    assert secret_query not in text and user not in text and KEYS["reader"] not in text


# -- binding ----------------------------------------------------------------------------------


def test_non_loopback_without_keys_refused(api):
    open_settings = api.service.settings.model_copy(
        update={"api": api.service.settings.api.model_copy(update={"api_keys": {}, "host": "0.0.0.0"})})
    with pytest.raises(ConfigError, match="refusing to serve on '0.0.0.0' without API keys"):
        create_app(api.service, open_settings)
    loopback = open_settings.model_copy(update={"api": open_settings.api.model_copy(update={"host": "::1"})})
    create_app(api.service, loopback)  # open, but only to local processes
    with_keys = api.service.settings.model_copy(
        update={"api": api.service.settings.api.model_copy(update={"host": "0.0.0.0"})})
    create_app(api.service, with_keys)


def test_cli_serve_refuses_non_loopback_without_keys(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "twinloop", "--data-dir", str(tmp_path), "serve", "--host", "0.0.0.0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "without API keys" in r.stderr
