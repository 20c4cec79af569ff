"""Rebuild the default domain packs' seed corpora and evaluation files from the shared data.

    .venv/bin/python scripts/build_packs.py [--data ../shared/data] [--out src/twinloop/packs]

Writes ``<out>/<domain>/corpus.jsonl.gz`` for law, med, fin and general, and
``<out>/eval/router_queries.jsonl``, ``router_queries_multi.jsonl`` and
``retrieval_queries.jsonl``. The output is a pure function of the data: samples use a fixed
seed and gzip is written with mtime 0 and no file name, so a rebuild is byte-identical and a
diff shows only real changes. Prints the document count and size per domain.

Hand-written inputs (general seed documents, general and multi-domain router queries, law
retrieval queries with their citations) live in ``scripts/pack_sources/``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from twinloop.kernel.atomic import atomic_write_bytes
from twinloop.knowledge.document import Document, normalise_text
from twinloop.knowledge.sources import (
    QAItem,
    load_gdpr,
    load_law_editions,
    load_medquad,
    load_medquad_questions,
    load_pubmedqa,
    load_pubmedqa_questions,
    load_rule_qa,
    load_tatqa,
    load_tatqa_questions,
)

REPO = Path(__file__).resolve().parents[1]
SOURCES = Path(__file__).resolve().parent / "pack_sources"
DOMAINS = ("law", "med", "fin", "general")
SEED = 3
"""Sampling seed; change it only together with the checked-in eval files."""
GENERAL_URI = "urn:twinloop:general-seed:"

# How many questions to sample from each real QA set. Router sets need >= 40 per domain;
# retrieval needs >= 300 lines in all.
ROUTER_SAMPLE = {"PubMedQA": 30, "MedQuAD": 30, "TAT-QA": 60}
RETRIEVAL_SAMPLE = {"PubMedQA": 100, "MedQuAD": 100, "TAT-QA": 80}
MIN_TITLE_WORDS = 3
"""GDPR article titles used as retrieval queries must have this many words: "Tasks" or
"Definitions" alone does not say what is sought."""


def build_corpora(data: Path) -> dict[str, list[Document]]:
    """Seed documents per domain, in a fixed order."""
    medquad_files = sorted((data / "med" / "medquad").glob("medquad_*.jsonl"))
    return {
        "law": load_gdpr(data / "law" / "gdpr" / "gdpr.json") + load_law_editions(data / "law" / "de-editions"),
        "med": load_pubmedqa(data / "med" / "pubmedqa" / "ori_pqal.json") + load_medquad(medquad_files),
        "fin": load_tatqa(data / "fin" / "tatqa" / "tatqa_dataset_dev.json"),
        "general": general_seed(),
    }


def general_seed() -> list[Document]:
    """The hand-written general documents in ``pack_sources/general_seed.yaml``."""
    seed = yaml.safe_load((SOURCES / "general_seed.yaml").read_text("utf-8"))
    return [
        Document.parse(
            {"text": d["text"], "title": d["title"], "source": seed["source"], "uri": GENERAL_URI + d["key"]},
            f"general_seed.yaml {d['key']}",
        )
        for d in seed["documents"]
    ]


def gzip_jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    """Deterministic gzip of JSON lines (no file name, mtime 0)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    return buf.getvalue()


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    _write(path, text.encode("utf-8"))


def _write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    # atomic_write_bytes keeps mkstemp's 0600; package data must be readable by every user.
    path.chmod(0o644)


def _norm(text: str) -> str:
    return normalise_text(text).rstrip(" ?.!")


def _sample(items: list[QAItem], n: int, rng: random.Random) -> list[QAItem]:
    return rng.sample(items, min(n, len(items)))


def _pack_examples(out: Path) -> set[str]:
    examples = set()
    for domain in DOMAINS:
        pack = yaml.safe_load((out / domain / "pack.yaml").read_text("utf-8"))
        examples |= {_norm(q) for q in pack["examples"]}
    return examples


_NO_SUBJECT = re.compile(r"(\(are\)|\b(for|of|prevent|to|is|are|with))\s*\?")
"""MedQuAD questions whose subject was lost upstream ("What is (are)  ?", "Who is at risk for ? ?")."""

_CITE = re.compile(r"^(?P<code>.+?) (?P<article>§ \S+|\S+?)\((?P<part>[^)]+)\)$")


def _in_force(doc: Document, day: date) -> bool:
    start = doc.in_force_from
    return (start is None or start <= day) and (doc.valid_to is None or day < doc.valid_to)


def resolve_cite(cite: str, docs: list[Document], as_of: str | None) -> str:
    """uri of the one document ``"GDPR 33(1)"`` / ``"BDSG 2018 § 4(1)"`` names (as of a date)."""
    m = _CITE.match(cite)
    if not m:
        raise SystemExit(f"pack_sources: cannot read citation {cite!r}; write it like 'GDPR 33(1)'")
    day = date.fromisoformat(as_of) if as_of else None
    hits = [
        d
        for d in docs
        if (d.code, d.article, d.part) == (m["code"], m["article"], m["part"]) and (day is None or _in_force(d, day))
    ]
    if len(hits) != 1:
        raise SystemExit(f"pack_sources: citation {cite!r} as of {as_of} matches {len(hits)} documents, not 1")
    assert hits[0].uri is not None
    return hits[0].uri


def build_eval(data: Path, corpora: dict[str, list[Document]], out: Path) -> dict[str, list[dict[str, Any]]]:
    """Router, multi-domain router and retrieval evaluation lines."""
    rng = random.Random(SEED)
    hand = yaml.safe_load((SOURCES / "eval_handwritten.yaml").read_text("utf-8"))
    medquad_files = sorted((data / "med" / "medquad").glob("medquad_*.jsonl"))
    sets = {
        "PubMedQA": load_pubmedqa_questions(data / "med" / "pubmedqa" / "ori_pqal.json"),
        "MedQuAD": [q for q in load_medquad_questions(medquad_files) if not _NO_SUBJECT.search(q.question)],
        "TAT-QA": load_tatqa_questions(data / "fin" / "tatqa" / "tatqa_dataset_dev.json"),
    }
    domain_of = {"PubMedQA": "med", "MedQuAD": "med", "TAT-QA": "fin"}

    # Router: real questions where they exist; general and GDPR/German-law ones hand-written.
    rule_qa = load_rule_qa(data / "law" / "legalbench" / "rule_qa_test.tsv")
    router = [{"query": q.question, "domain": "law", "dataset": q.dataset} for q in rule_qa]
    router += [{"query": q["query"], "domain": "law", "dataset": "hand-written"} for q in hand["law_retrieval"]]
    for name, n in ROUTER_SAMPLE.items():
        sampled = _sample(sets[name], n, rng)
        router += [{"query": q.question, "domain": domain_of[name], "dataset": name} for q in sampled]
    router += [{"query": q, "domain": "general", "dataset": "hand-written"} for q in hand["router_general"]]
    examples = _pack_examples(out)
    clash = [r["query"] for r in router if _norm(r["query"]) in examples]
    if clash:
        raise SystemExit(f"router queries equal to pack examples: {clash}")
    router = _dedup(router)

    multi = [{"query": q["query"], "domains": sorted(q["domains"])} for q in hand["router_multi"]]

    # Retrieval: each question's relevant documents by uri.
    uris = {domain: {d.uri for d in docs} for domain, docs in corpora.items()}
    retrieval: list[dict[str, Any]] = []
    for name, n in RETRIEVAL_SAMPLE.items():
        retrieval += _retrieval_lines(sets[name], n, domain_of[name], uris[domain_of[name]], rng)
    for q in hand["law_retrieval"]:
        line = {"query": q["query"], "domain": "law", "dataset": "hand-written"}
        line["relevant"] = sorted({resolve_cite(c, corpora["law"], q.get("as_of")) for c in q["cite"]})
        if q.get("as_of"):
            line["as_of"] = q["as_of"]
        retrieval.append(line)
    retrieval += _gdpr_title_lines(corpora["law"])
    for q in hand["general_retrieval"]:
        uri = GENERAL_URI + q["key"]
        if uri not in uris["general"]:
            raise SystemExit(f"general_retrieval: no seed document with key {q['key']!r}")
        retrieval.append({"query": q["query"], "domain": "general", "dataset": "hand-written", "relevant": [uri]})
    return {
        "router_queries.jsonl": router,
        "router_queries_multi.jsonl": multi,
        "retrieval_queries.jsonl": _dedup(retrieval),
    }


def _dedup(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for line in lines:
        key = _norm(line["query"])
        if key not in seen:
            seen.add(key)
            out.append(line)
    return out


def _retrieval_lines(
    items: list[QAItem], n: int, domain: str, corpus_uris: set[str | None], rng: random.Random
) -> list[dict[str, Any]]:
    """Sampled questions whose supporting documents are in the corpus.

    A question asked of several documents (MedQuAD repeats "What is (are) X ?" for each part
    of a page) lists all of them as relevant. TAT-QA questions that occur more than once
    ("What is the change in Other in 2019 from 2018?") are skipped: without their table they
    name no document at all.
    """
    by_question: dict[str, set[str]] = defaultdict(set)
    count: dict[str, int] = defaultdict(int)
    for item in items:
        if item.uri in corpus_uris:
            by_question[_norm(item.question)].add(item.uri)
            count[_norm(item.question)] += 1
    candidates = [
        item
        for item in items
        if item.uri in corpus_uris and not (item.dataset == "TAT-QA" and count[_norm(item.question)] > 1)
    ]
    lines = []
    for q in _sample(candidates, n, rng):
        relevant = sorted(by_question[_norm(q.question)])
        lines.append({"query": q.question, "domain": domain, "dataset": q.dataset, "relevant": relevant})
    return lines


def _gdpr_title_lines(law: list[Document]) -> list[dict[str, Any]]:
    by_article: dict[str, list[str]] = defaultdict(list)
    titles: dict[str, str] = {}
    for d in law:
        if d.code == "GDPR" and d.article and not d.article.startswith("Recital") and d.uri and d.title:
            by_article[d.article].append(d.uri)
            titles[d.article] = d.title
    return [
        {"query": titles[a], "domain": "law", "dataset": "GDPR article titles", "relevant": sorted(by_article[a])}
        for a in sorted(by_article, key=int)
        if len(titles[a].split()) >= MIN_TITLE_WORDS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "twinloop" / "packs", help="packs folder")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: not a folder")

    corpora = build_corpora(args.data)
    total = 0
    for domain, docs in corpora.items():
        dupes = len(docs) - len({d.uri for d in docs})
        if dupes:
            raise SystemExit(f"{domain}: {dupes} documents share a uri")
        blob = gzip_jsonl(d.model_dump(mode="json", exclude_none=True) for d in docs)
        _write(args.out / domain / "corpus.jsonl.gz", blob)
        total += len(blob)
        codes = ", ".join(f"{c} {n}" for c, n in _counts(d.code or "-" for d in docs))
        print(f"{domain:8} {len(docs):5} documents  {len(blob) / 1e6:5.2f} MB  ({codes})")
    print(f"{'total':8} {sum(map(len, corpora.values())):5} documents  {total / 1e6:5.2f} MB")

    for name, lines in build_eval(args.data, corpora, args.out).items():
        write_jsonl(args.out / "eval" / name, lines)
        key = "domains" if "multi" in name else "domain"
        per = ", ".join(f"{d} {n}" for d, n in _counts(str(line[key]) for line in lines))
        print(f"eval/{name}: {len(lines)} lines ({per})")
    return 0


def _counts(values: Iterable[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return sorted(counts.items())


if __name__ == "__main__":
    sys.exit(main())
