"""Data loaders (twinloop.knowledge.sources), the shipped domain packs and their eval files.

Tests on the shipped packs always run; tests that read the raw data sets skip when
``../shared/data`` is not next to the repository.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
from datetime import date
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import Document, normalise_text
from twinloop.knowledge.sources import (
    FORMATS,
    detect_and_load,
    detect_format,
    documents_from_jsonl,
    load_gdpr,
    load_law_editions,
    load_markdown_folder,
    load_pubmedqa_questions,
    load_tatqa_questions,
)
from twinloop.knowledge.sources.markdown import HUGE_FILE_CHARS, documents_from_markdown

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DOMAINS = ("law", "med", "fin", "general")
PACKS = files("twinloop") / "packs"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"raw data sets not at {DATA}")


def shipped(domain: str) -> list[Document]:
    blob = (PACKS / domain / "corpus.jsonl.gz").read_bytes()
    return documents_from_jsonl(gzip.decompress(blob).decode("utf-8"), where=f"{domain}/corpus.jsonl.gz")


def eval_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (PACKS / "eval" / name).read_text("utf-8").splitlines() if line.strip()]


def pack(domain: str) -> dict:
    return yaml.safe_load((PACKS / domain / "pack.yaml").read_text("utf-8"))


def _norm(text: str) -> str:
    return normalise_text(text).rstrip(" ?.!")


@pytest.fixture(scope="module", params=["shipped", pytest.param("loaded", marks=needs_data)])
def law(request) -> list[Document]:
    """The law corpus as shipped, and as freshly loaded from the raw data."""
    if request.param == "shipped":
        return shipped("law")
    return load_gdpr(DATA / "law/gdpr/gdpr.json") + load_law_editions(DATA / "law/de-editions")


def find(docs: list[Document], code: str, article: str, part: str | None) -> list[Document]:
    return [d for d in docs if (d.code, d.article, d.part) == (code, article, part)]


def in_force(doc: Document, day: date) -> bool:
    start = doc.in_force_from
    return (start is None or start <= day) and (doc.valid_to is None or day < doc.valid_to)


# --- law: GDPR and the German editions --------------------------------------------------


def test_gdpr_article_17_paragraph_1_keeps_its_points(law):
    [doc] = find(law, "GDPR", "17", "1")
    assert doc.jurisdiction == "EU" and doc.title.startswith("Right to erasure")
    assert doc.text.startswith("The data subject shall have the right to obtain from the controller the erasure")
    assert "\n(a) the personal data are no longer necessary" in doc.text
    assert "\n(f) the personal data have been collected" in doc.text
    assert doc.uri == "http://data.europa.eu/eli/reg/2016/679/oj#art_17-1"
    # Dated 27 April 2016, applicable from 25 May 2018 (Art. 99(2)).
    assert (doc.edition_date, doc.valid_from, doc.valid_to) == (date(2016, 4, 27), date(2018, 5, 25), None)


@pytest.mark.parametrize(
    ("code", "article", "part", "needle"),
    [
        ("GDPR", "10", None, "criminal convictions"),  # no numbered paragraphs: one document
        ("GDPR", "Recital 12", None, "Article 16(2) TFEU"),
        ("GDPR", "6", "1", "Point (f) of the first subparagraph shall not apply"),  # trailing subparagraph
        ("GG", "1", "1", "Die Würde des Menschen ist unantastbar."),
        ("BDSG 2018", "§ 4", "1", "optisch-elektronischen"),  # wrapped after a hyphen: no space
    ],
    ids=["article-without-paragraphs", "recital", "continuation", "gg-art-1", "hyphen-join"],
)
def test_law_citation_units(law, code, article, part, needle):
    docs = find(law, code, article, part)
    assert docs, f"no {code} {article}({part})"
    assert any(needle in d.text for d in docs)


def test_gg_article_21_3_changed_between_2012_and_2020(law):
    docs = find(law, "GG", "21", "3")
    [old] = [d for d in docs if in_force(d, date(2015, 1, 1))]
    [new] = [d for d in docs if in_force(d, date(2021, 1, 1))]
    assert old.text == "Das Nähere regeln Bundesgesetze."
    assert "von staatlicher Finanzierung ausgeschlossen" in new.text
    assert old.valid_to is not None and old.valid_to <= new.valid_from == date(2020, 9, 29)
    assert old.uri != new.uri


@needs_data
def test_editions_unmerged_give_one_document_per_edition():
    docs = load_law_editions(DATA / "law/de-editions", merge_unchanged=False)
    art = {d.edition_date: d for d in find(docs, "GG", "21", "3")}
    assert sorted(art) == [date(2010, 7, 21), date(2012, 7, 11), date(2020, 9, 29)]
    assert art[date(2012, 7, 11)].valid_to == date(2020, 9, 29)
    assert art[date(2012, 7, 11)].text != art[date(2020, 9, 29)].text


def test_law_validity_periods_never_overlap(law):
    """At most one text of a given code/article/paragraph is in force on any day."""
    by_key: dict[tuple, list[Document]] = {}
    for d in law:
        by_key.setdefault((d.code, d.article, d.part, d.title if d.article is None else None), []).append(d)
    for key, docs in by_key.items():
        docs.sort(key=lambda d: d.in_force_from or date.min)
        for a, b in zip(docs, docs[1:]):
            assert a.valid_to is not None and a.valid_to <= b.in_force_from, key


def test_bdsg_1990_ends_when_bdsg_2018_and_gdpr_apply(law):
    old = [d for d in law if d.code == "BDSG 1990"]
    assert old and all(d.valid_to == date(2018, 5, 25) for d in old)
    assert all(d.valid_to is None for d in law if d.code == "BDSG 2018")


# --- the shipped packs ----------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_shipped_corpus_parses_with_unique_uris(domain):
    docs = shipped(domain)  # documents_from_jsonl validates every line
    uris = [d.uri for d in docs]
    assert docs and None not in uris
    assert len(set(uris)) == len(uris)


def test_shipped_corpora_are_small():
    total = sum(len((PACKS / d / "corpus.jsonl.gz").read_bytes()) for d in DOMAINS)
    assert total < 6_000_000


@pytest.mark.parametrize("domain", DOMAINS)
def test_pack_yaml(domain):
    p = pack(domain)
    assert p["name"] == domain and len(p["description"].split()) > 20
    assert p["citations_required"] is (domain != "general")
    assert p["approval_required"] is (domain in ("law", "med"))
    assert 20 <= len(p["examples"]) <= 30
    assert (len(p["rules"]) == 0) is (domain == "general")
    assert p["corpus"] == "corpus.jsonl.gz"
    for rule in p["rules"]:
        re.compile(rule["pattern"], re.IGNORECASE)
        assert isinstance(rule["priority"], int)


@pytest.mark.parametrize(
    ("domain", "query"),
    [("law", "Is this allowed under the GDPR?"), ("law", "What does § 26 BDSG require?"),
     ("med", "How is it diagnosed?"), ("fin", "What was EBITDA in 2019?")],
)
def test_pack_rule_fires(domain, query):
    assert any(re.search(r["pattern"], query, re.IGNORECASE) for r in pack(domain)["rules"])


def test_router_queries_cover_each_domain_and_avoid_examples():
    lines = eval_lines("router_queries.jsonl")
    examples = {_norm(q) for d in DOMAINS for q in pack(d)["examples"]}
    for domain in DOMAINS:
        assert sum(line["domain"] == domain for line in lines) >= 40, domain
    assert not [line["query"] for line in lines if _norm(line["query"]) in examples]
    assert len({_norm(line["query"]) for line in lines}) == len(lines)
    multi = eval_lines("router_queries_multi.jsonl")
    assert len(multi) >= 10 and all(len(m["domains"]) == 2 and set(m["domains"]) <= set(DOMAINS) for m in multi)


def test_retrieval_queries_point_into_the_shipped_corpus():
    lines = eval_lines("retrieval_queries.jsonl")
    assert len(lines) >= 300
    uris = {d: {doc.uri: doc for doc in shipped(d)} for d in DOMAINS}
    for line in lines:
        assert line["relevant"], line["query"]
        for uri in line["relevant"]:
            assert uri in uris[line["domain"]], (line["query"], uri)
            if "as_of" in line:
                assert in_force(uris[line["domain"]][uri], date.fromisoformat(line["as_of"])), line["query"]


@needs_data
def test_build_packs_reproduces_the_shipped_files(tmp_path):
    spec = importlib.util.spec_from_file_location("build_packs", REPO / "scripts" / "build_packs.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for domain in DOMAINS:
        (tmp_path / domain).mkdir()
        shutil.copy(PACKS / domain / "pack.yaml", tmp_path / domain / "pack.yaml")
    assert build.main(["--data", str(DATA), "--out", str(tmp_path)]) == 0
    for rel in [f"{d}/corpus.jsonl.gz" for d in DOMAINS] + [
        "eval/router_queries.jsonl", "eval/router_queries_multi.jsonl", "eval/retrieval_queries.jsonl"
    ]:
        stale = f"{rel} is stale: run scripts/build_packs.py"
        assert (tmp_path / rel).read_bytes() == (PACKS / rel).read_bytes(), stale


# --- QA items --------------------------------------------------------------------------


@needs_data
def test_pubmedqa_questions_mark_the_official_test_split():
    items = load_pubmedqa_questions(DATA / "med/pubmedqa/ori_pqal.json")
    assert len(items) == 1000 and sum(i.split == "test" for i in items) == 500
    assert {i.answer for i in items} == {"yes", "no", "maybe"}


@needs_data
def test_tatqa_questions_point_at_their_context():
    items = load_tatqa_questions(DATA / "fin/tatqa/tatqa_dataset_dev.json")
    uris = {d.uri for d in shipped("fin")}
    assert len(items) == 1668 and all(i.uri in uris for i in items)
    change = next(i for i in items if i.question == "What is the change in Other in 2019 from 2018?")
    assert (change.answer, change.meta["scale"], change.answer_type) == ("-12.6", "million", "arithmetic")


# --- format detection and the generic Markdown loader ----------------------------------


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("notes.xyz", "hello", "unknown document format"),
        ("data.json", "{}", "unknown document format"),
        ("missing.md", None, "no such file"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": "x", "txt": "typo"}\n', "line 2: unknown field 'txt'"),
        ("gdpr.json", "{}", "missing field 'dated'"),
        ("ori_pqal.json", "[1, 2]", "expected an object keyed by PMID"),
    ],
    ids=["unknown-suffix", "unknown-json", "missing", "bad-jsonl-line", "bad-gdpr", "bad-pubmedqa"],
)
def test_detect_and_load_errors_name_the_path(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidInputError) as e:
        detect_and_load(path)
    assert str(path) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize(
    ("relpath", "fmt"),
    [
        ("law/gdpr/gdpr.json", "gdpr"),
        ("law/de-editions", "law-editions"),
        ("med/pubmedqa/ori_pqal.json", "pubmedqa"),
        ("med/medquad/medquad_9_CDC_QA.jsonl", "medquad"),
        ("fin/tatqa/tatqa_dataset_dev.json", "tatqa"),
        ("law/legalbench", "markdown"),
    ],
)
@needs_data
def test_detect_format_of_the_shared_data(relpath, fmt):
    assert detect_format(DATA / relpath) == fmt
    assert detect_and_load(DATA / relpath)


def test_jsonl_gz_and_format_override(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "A fact.", "uri": "x:1"}\n'))
    assert detect_format(path) == "jsonl"
    [doc] = detect_and_load(path)
    assert doc.uri == "x:1"
    with pytest.raises(InvalidInputError, match="unknown format 'nope'"):
        detect_and_load(path, format="nope")
    assert set(FORMATS) >= {"gdpr", "law-editions", "markdown", "jsonl", "pubmedqa", "medquad", "tatqa"}


STATUTE = """---
jurabk: TEST
---
# Test Act

## Part 1 - General

### § 1 Scope

(1) This Act applies to
everyone.

(2) It does not apply to cats:

1.  house cats,
2.  lions.

### Art 2

Text without paragraphs.

```
# not a heading
```
"""


def test_markdown_headings_and_paragraphs_become_citations():
    docs = documents_from_markdown(STATUTE, uri="file:///act.md", meta={"jurisdiction": "XX"})
    by_frag = {d.uri.split("#")[1]: d for d in docs}
    assert set(by_frag) == {"par-1-1", "par-1-2", "art-2"}
    first = by_frag["par-1-1"]
    citation = (first.code, first.jurisdiction, first.article, first.part, first.title)
    assert citation == ("TEST", "XX", "§ 1", "1", "Scope")
    assert first.text == "This Act applies to everyone."  # wrapped line joined, "(1)" moved to `part`
    assert by_frag["par-1-2"].text == "It does not apply to cats:\n1. house cats,\n2. lions."
    art2 = by_frag["art-2"]
    assert (art2.article, art2.part, art2.title) == ("2", None, "Art 2 (Part 1 - General)")
    assert "# not a heading" in art2.text


def test_markdown_folder_plain_and_huge_files(tmp_path):
    (tmp_path / "a.txt").write_text("Just one note.\n\nWith two paragraphs.\n")
    (tmp_path / "b.md").write_text(("word " * 2000 + "\n\n") * (HUGE_FILE_CHARS // 10_000 + 2))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.md").write_text("# secret\n\nnot read")
    docs = load_markdown_folder(tmp_path, code="NOTES")
    plain = [d for d in docs if d.uri.endswith("a.txt")]
    huge = [d for d in docs if "b.md" in d.uri]
    assert len(plain) == 1 and plain[0].text == "Just one note.\nWith two paragraphs." and plain[0].code == "NOTES"
    assert len(huge) > 1 and all(len(d.text) <= HUGE_FILE_CHARS for d in huge)
    assert [d.part for d in huge] == [str(n) for n in range(1, len(huge) + 1)]
    assert not any("secret" in d.text for d in docs)


def test_markdown_folder_without_text_files_is_an_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(InvalidInputError, match="no .md/.markdown/.txt files"):
        load_markdown_folder(tmp_path)


def test_markdown_overlong_section_is_cut_into_parts():
    text = "# Notes\n\n" + ("word " * 10_000 + "\n\n") * 5  # ~250k characters under one heading
    docs = documents_from_markdown(text, uri="file:///notes.md")
    assert len(docs) > 1 and all(d.title == "Notes" and len(d.text) <= HUGE_FILE_CHARS for d in docs)
    assert len({d.uri for d in docs}) == len(docs)
