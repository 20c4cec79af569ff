"""``twinloop ingest / search / route / remove`` as a user runs them (real processes)."""

from __future__ import annotations

import json

from test_cli import run_cli

DOCS = [
    {"text": "A controller shall notify a personal data breach to the supervisory authority within 72 hours.",
     "code": "GDPR", "article": "33", "part": "1", "jurisdiction": "EU", "uri": "gdpr#art_33-1",
     "edition_date": "2018-05-25"},
    {"text": "Paracetamol overdose can cause acute liver failure.", "code": "MedNotes", "uri": "med#paracetamol"},
]


def test_ingest_search_route_remove(tmp_path):
    data = tmp_path / "d"
    env = {"TWINLOOP_DATA_DIR": str(data)}
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in DOCS[:1]) + "\n")
    res = run_cli("ingest", str(src), "--domain", "law", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["added"] == 1

    res = run_cli("ingest", str(src), "--domain", "law", "--json", env=env)
    assert json.loads(res.stdout)[0]["skipped_duplicates"] == 1, "re-ingesting skips duplicates"

    res = run_cli("search", "how fast must a data breach be reported", "--domain", "law", "--json", env=env)
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)["hits"]
    assert hits and hits[0]["citation"]["article"] == "33" and hits[0]["label"].startswith("GDPR Art. 33(1)")

    res = run_cli("route", "How fast must I report a data breach under the GDPR?", "--json", env=env)
    assert res.returncode == 0, res.stderr
    route = json.loads(res.stdout)
    assert route["primary"] == "law" and set(route["scores"]) >= {"law", "med", "fin", "general"}

    res = run_cli("remove", "--domain", "law", "--uri", "gdpr#art_33-1", "--json", env=env)
    assert json.loads(res.stdout)["removed"] == 1
    res = run_cli("search", "data breach 72 hours", "--domain", "law", "--json", env=env)
    assert json.loads(res.stdout)["hits"] == []


def test_bad_inputs_are_one_line_errors(tmp_path):
    env = {"TWINLOOP_DATA_DIR": str(tmp_path / "d")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(DOCS[0]) + "\n" + '{"text": "x", "edition_date": "2020-02-30"}\n')
    cases = [
        (("ingest", str(bad), "--domain", "law"), "line 2: edition_date = '2020-02-30'"),
        (("ingest", str(bad), "--domain", "astrology"), "unknown domain 'astrology'"),
        (("search", "q", "--as-of", "tomorrow"), "as_of = 'tomorrow'"),
        (("ingest", str(tmp_path / "missing.jsonl"), "--domain", "law"), "missing.jsonl"),
    ]
    for args, needle in cases:
        res = run_cli(*args, env=env)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = run_cli("search", "breach", "--json", env=env)
    assert json.loads(res.stdout)["hits"] == [], "the rejected batch stored nothing"
