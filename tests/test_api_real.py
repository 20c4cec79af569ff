"""End to end on the real default models.

A real server on a loopback port over the real SmolLM2-135M-Instruct and all-MiniLM-L6-v2:
law, medicine and finance documents go in through the API; questions come back as verbatim
quotes of cited passages, or as an honest refusal, never with an invented citation or date,
through httpx and the official
``openai`` client, streaming and not; roles give 200/401/403; malformed and oversized
requests get a 4xx with a clear message; /metrics parses.
"""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from twinloop.api import create_app
from twinloop.api.server import ServerThread
from twinloop.kernel.config import ApiConfig
from twinloop.serving.service import Service

pytestmark = pytest.mark.real

KEYS = {"admin": "real-admin-key-01", "operator": "real-operator-key-01", "reader": "real-reader-key-01"}

DOCS = [
    {"text": "The data subject shall have the right to obtain from the controller the erasure of personal data "
             "concerning him or her without undue delay and the controller shall have the obligation to erase "
             "personal data without undue delay.",
     "source": "GDPR (Regulation (EU) 2016/679)", "code": "GDPR", "article": "17", "part": "1",
     "jurisdiction": "EU", "edition_date": "2016-04-27", "title": "Right to erasure ('right to be forgotten')",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_17-1"},
    {"text": "The data subject shall have the right to receive the personal data concerning him or her, which he "
             "or she has provided to a controller, in a structured, commonly used and machine-readable format.",
     "source": "GDPR (Regulation (EU) 2016/679)", "code": "GDPR", "article": "20", "part": "1",
     "jurisdiction": "EU", "edition_date": "2016-04-27", "title": "Right to data portability",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_20-1"},
    {"text": "The controller shall provide information on action taken on a request to the data subject without "
             "undue delay and in any event within one month of receipt of the request.",
     "source": "GDPR (Regulation (EU) 2016/679)", "code": "GDPR", "article": "12", "part": "3",
     "jurisdiction": "EU", "edition_date": "2016-04-27", "title": "Transparent information",
     "uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#art_12-3"},
]
OTHER_DOCS = [
    {"text": "Whipworm (Trichuris trichiura) is an intestinal parasite of humans. The larvae and adult worms live "
             "in the intestine of humans and can cause intestinal disease.",
     "source": "MedQuAD (CDC)", "code": "MedQuAD", "title": "Whipworm", "uri": "http://www.cdc.gov/parasites/whipworm/#1"},
    {"text": "Revenue for fiscal 2019 was $1,234.5 million, an increase of 8% over fiscal 2018. Gross margin was "
             "41.2% compared with 39.8% in the prior year.",
     "source": "TAT-QA", "code": "TAT-QA", "title": "Results of operations", "uri": "tatqa://example/results-2019"},
]
URIS = {d["uri"] for d in DOCS}
QUESTION = "Under the GDPR, does a controller have to erase my personal data when I ask?"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(real_runtime):
    settings = real_runtime.settings.model_copy(update={"api": ApiConfig(
        api_keys={KEYS[r]: r for r in KEYS}, max_body_bytes=MAX_BODY, rate_limit_per_minute=10_000)})
    service = Service(real_runtime)
    with ServerThread(create_app(service, settings), start_timeout_s=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


@pytest.fixture(scope="module")
def ingested(http):
    r = http.post("/v1/ingest", headers=auth("operator"), json={"domain": "law", "documents": DOCS})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["domain"] == "law" and report["added"] + report["skipped_duplicates"] == len(DOCS)
    for domain, doc in (("med", OTHER_DOCS[0]), ("fin", OTHER_DOCS[1])):
        assert http.post("/v1/ingest", headers=auth("operator"),
                         json={"domain": domain, "documents": [doc]}).status_code == 200
    return report


def check_grounded(record: dict, texts: dict[str, str] | None = None) -> None:
    """Claims are verbatim spans of cited, retrieved passages; a refusal makes no claim."""
    texts = texts or {d["uri"]: d["text"] for d in DOCS + OTHER_DOCS}
    retrieved = {p["n"]: p for p in record["retrieved"]}
    by_n = {c["n"]: c for c in record["citations"]}
    for c in record["citations"]:
        assert c["n"] in retrieved and c["uri"] == retrieved[c["n"]]["uri"] and c["label"] == retrieved[c["n"]]["label"]
        assert c["exact_quote"] and c["exact_quote"] in texts[c["uri"]]
        assert c["sha256"] == hashlib.sha256(texts[c["uri"]].encode()).hexdigest()
    for claim in record["claims"]:
        assert claim["citations"] and all(claim["text"] in texts[by_n[n]["uri"]] for n in claim["citations"])
    if record["status"] == "answered":
        assert record["claims"] and record["grounded"] and record["verified"]
    else:
        assert record["claims"] == [] and record["citations"] == [] and record["status"] in ("cannot_verify",
                                                                                               "out_of_scope")


def test_answer_with_citations_from_the_index(http, ingested):
    r = http.post("/v1/answer", headers=auth("reader"), json={"query": QUESTION, "max_tokens": 48, "user_id": "u-1"})
    assert r.status_code == 200, r.text
    record = r.json()
    assert "law" in record["domains"] and record["release_id"].startswith("rel_")
    assert record["request_id"] == r.headers["x-request-id"]
    check_grounded(record)
    labels = {p["label"] for p in record["retrieved"]}
    assert any(label.startswith("GDPR Art. 17(1)") for label in labels)


def test_answer_stream_sse(http, ingested):
    with http.stream("POST", "/v1/answer", headers=auth("reader"),
                     json={"query": QUESTION, "domain": "law", "max_tokens": 32, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert [e["type"] for e in events][0] == "meta" and events[-1]["type"] == "answer"
    assert sum(e["type"] == "delta" for e in events) >= 2, "text arrives in pieces"
    check_grounded(events[-1]["record"])


def test_openai_chat(server, ingested):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS["reader"], max_retries=0, timeout=120)
    assert "twinloop:law" in {m.id for m in client.models.list()}
    resp = client.chat.completions.create(model="twinloop:law", max_tokens=48,
                                          messages=[{"role": "user", "content": QUESTION}])
    text = resp.choices[0].message.content
    extra = resp.model_extra["twinloop"]
    assert text.strip() and extra["domains"] == ["law"]
    assert all(c["label"] and c["exact_quote"] for c in extra["citations"])
    for claim in extra["claims"]:
        assert claim["text"] in text  # the content shows each quote as it is cited


def test_openai_chat_stream(server, ingested):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS["reader"], max_retries=0, timeout=120)
    stream = client.chat.completions.create(model="twinloop", max_tokens=32, stream=True,
                                            messages=[{"role": "user", "content": QUESTION}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    final = chunks[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    extra = final.model_extra["twinloop"]
    assert "law" in extra["domains"] and extra["status"] in ("answered", "cannot_verify", "out_of_scope")


@pytest.mark.parametrize(("domain", "question", "fact"), [
    ("law", "How long does a controller have to act on a data subject's request?", "one month"),
    ("med", "What is the scientific name of the whipworm that infects humans?", "Trichuris trichiura"),
    ("fin", "What was the gross margin in fiscal 2019?", "41.2%"),
])
def test_one_grounded_answer_per_domain(http, ingested, domain, question, fact):
    """The real model under the quote constraint: the fact comes back in the passage's words."""
    r = http.post("/v1/answer", headers=auth("reader"), json={"query": question, "domain": domain})
    record = r.json()
    assert r.status_code == 200 and record["status"] == "answered", record
    check_grounded(record)
    assert any(fact in c["text"] for c in record["claims"]), record["claims"]


def test_a_question_the_index_cannot_answer_is_refused(http, ingested):
    r = http.post("/v1/answer", headers=auth("reader"),
                  json={"query": "What fine does US federal law set for a late breach notification?", "domain": "law"})
    record = r.json()
    assert record["status"] == "out_of_scope" and record["claims"] == [], record
    assert record["completion_tokens"] == 0 and "Searched: law" in record["summary"]
    retrieved = {x["uri"] for x in record["retrieved"]}
    assert {x["uri"] for x in record["possibly_related"]} <= retrieved  # nearest passages, listed, not claimed


@pytest.mark.parametrize(("role", "method", "path", "body", "status"), [
    ("reader", "GET", "/v1/info", None, 200),
    ("reader", "POST", "/v1/generate", {"prompt": "What is the capital of France?", "max_tokens": 16}, 200),
    (None, "GET", "/v1/info", None, 401),
    ("wrong", "POST", "/v1/answer", {"query": QUESTION}, 401),
    ("reader", "POST", "/v1/ingest", {"domain": "law", "documents": DOCS}, 403),
    ("reader", "POST", "/v1/feedback", {"request_id": "req_x", "score": 1}, 403),
    ("operator", "GET", "/v1/lora", None, 403),
    ("operator", "POST", "/v1/feedback", {"request_id": "req_x", "score": 1}, 404),
    ("admin", "GET", "/v1/info", None, 200),
])
def test_roles(http, role, method, path, body, status):
    headers = {} if role is None else auth(role) if role in KEYS else {"Authorization": "Bearer wrong-key-000"}
    r = http.request(method, path, headers=headers, json=body)
    assert r.status_code == status, r.text
    if status >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if path == "/v1/generate":
        assert "paris" in r.json()["text"].lower()


@pytest.mark.parametrize(("name", "content", "status", "says"), [
    ("malformed", b'{"query": "unterminated', 400, "not valid JSON"),
    ("schema", json.dumps({"query": QUESTION, "max_tokens": "lots"}).encode(), 422, "max_tokens = 'lots'"),
    ("oversized", json.dumps({"query": "x" * MAX_BODY}).encode(), 413, f"limit of {MAX_BODY} bytes"),
])
def test_bad_requests_get_a_clear_4xx(server, name, content, status, says):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v1/answer", content=content, headers={**auth("reader"), "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"]


def test_metrics_parse(http, ingested):
    http.post("/v1/answer", headers=auth("reader"), json={"query": QUESTION, "max_tokens": 8})
    r = http.get("/metrics", headers=auth("reader"))
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert families["twinloop_http_request_duration_seconds"].type == "histogram"
    stages = {s.labels.get("stage") for s in families["twinloop_pipeline_stage_duration_seconds"].samples}
    assert {"route", "retrieve", "decide", "generate", "assemble"} <= stages
    tps = [s for s in families["twinloop_engine_tokens_per_second"].samples if s.name.endswith("_count")]
    assert tps and tps[0].value > 0


def test_a_correction_is_served_at_once_and_cited_with_its_provenance(http, ingested):
    question = "Which regulator supervises the Quellmark exchange?"
    before = http.post("/v1/answer", json={"query": question, "domain": "general"}, headers=auth("reader")).json()
    r = http.post("/v1/corrections", json={"domain": "general", "question": question, "answer": "The Orvane Authority",
                                           "source": "Quellmark rulebook, 2026 edition"}, headers=auth("operator"))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["state"] == "active" and made["revision"] is not None
    for asked in (question, "The Quellmark exchange is supervised by which regulator?"):
        rec = http.post("/v1/answer", json={"query": asked, "domain": "general"}, headers=auth("reader")).json()
        assert rec["mode"] == "correction" and rec["summary"] == "The Orvane Authority", rec
        cite = rec["citations"][0]
        assert cite["uri"] == made["uri"] and cite["exact_quote"] == "The Orvane Authority"
        assert cite["correction"]["correction_id"] == made["id"] and cite["correction"]["source"].startswith("Quell")
    other = http.post("/v1/answer", json={"query": "What is the capital of France?", "domain": "general"},
                      headers=auth("reader")).json()
    assert other["mode"] != "correction"
    assert before["mode"] != "correction"
    assert http.post(f"/v1/corrections/{made['id']}/remove", json={"reason": "test"},
                     headers=auth("operator")).json()["state"] == "removed"
    after = http.post("/v1/answer", json={"query": question, "domain": "general"}, headers=auth("reader")).json()
    assert after["mode"] != "correction"
