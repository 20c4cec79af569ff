"""Check the grounding evaluation sets against the packs' seed corpora.

    python scripts/check_grounding_sets.py [--root .] [-v]

Reads ``src/twinloop/packs/eval/grounding_answerable.jsonl`` and
``grounding_unanswerable.jsonl`` and the law, med and fin corpora
(``src/twinloop/packs/<domain>/corpus.jsonl.gz``) and checks:

answerable questions
    fields and types; every cited uri exists in the question's domain corpus; every expected
    phrase occurs (case- and whitespace-insensitive) in at least one cited passage and not in
    the query; an ``as_of`` date selects every cited passage (``valid_from`` or else
    ``edition_date`` <= as_of < ``valid_to``), and a question without one cites only passages
    still in force; the query does not copy a run of 8 words from a cited passage.
unanswerable questions
    fields; ``kind`` and ``expect`` agree (other_jurisdiction and missing_source ->
    out_of_scope, out_of_domain and near_miss -> cannot_verify); every question carries a
    ``probe`` and the probe holds:

    - ``{"terms": [...], "in": "all" | "domain" | [uri substring, ...], "anchor": "..."}``:
      no passage in scope contains any term (case-insensitive, matched at the start of a
      word, so a German compound or a plural counts as a hit). ``anchor`` narrows the scope
      to passages containing it and must itself occur (the neighbouring passage a near miss
      borrows its vocabulary from). Default scope: ``all`` corpora for other_jurisdiction and
      out_of_domain; near_miss must name ``in`` or ``anchor``.
    - ``{"code": ..., "article": ..., "part": ..., "recital": ..., "as_of": ...}``
      (missing_source): no passage of that code (``BDSG`` covers ``BDSG 2018`` and
      ``BDSG 1990``) has that article / paragraph / recital, or none is in force on
      ``as_of``.
both files
    unique ids; domain in law/med/fin; split calibration/test with about half of each
    domain (answerable) and each kind (unanswerable) in calibration; no query repeated or
    equal to a query of the other eval files or the packs' ``qa_cases.jsonl``; minimum
    counts (answerable: 90 in all, law 40, med 25, fin 25; unanswerable: 80 in all,
    other_jurisdiction 20, missing_source 15, out_of_domain 20, near_miss 20).

Prints a count table and every problem found; exits 1 if there is any, else 0. Uses only
the standard library.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

DOMAINS = ("law", "med", "fin")
SPLITS = ("calibration", "test")
KIND_EXPECT = {
    "other_jurisdiction": "out_of_scope",
    "missing_source": "out_of_scope",
    "out_of_domain": "cannot_verify",
    "near_miss": "cannot_verify",
}
MIN_ANSWERABLE = {"law": 40, "med": 25, "fin": 25}
MIN_UNANSWERABLE = {"other_jurisdiction": 20, "missing_source": 15, "out_of_domain": 20, "near_miss": 20}
ANSWERABLE_FIELDS = {"id", "domain", "query", "expected", "citations", "split"}
ANSWERABLE_OPTIONAL = {"as_of", "note"}
UNANSWERABLE_FIELDS = {"id", "domain", "query", "kind", "expect", "split", "probe"}
UNANSWERABLE_OPTIONAL = {"as_of", "note"}
COPY_RUN = 8
"""A query sharing this many consecutive words with a cited passage copies it."""


def norm(text: str) -> str:
    """Casefolded, every run of whitespace (including no-break spaces) one space."""
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ").replace("\u202f", " ")).strip().casefold()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", norm(text))


def term_regex(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(norm(term)))


def parse_day(value: str) -> date:
    return date.fromisoformat(value)


def in_force(doc: dict, day: date) -> bool:
    start = doc.get("valid_from") or doc.get("edition_date")
    if start and parse_day(start) > day:
        return False
    end = doc.get("valid_to")
    return not (end and parse_day(end) <= day)


def read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    rows = []
    if not path.exists():
        problems.append(f"{path}: missing")
        return rows
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}:{n}: not JSON ({exc})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path.name}:{n}: not an object")
            continue
        rows.append(row | {"_line": n})
    return rows


def load_corpora(packs: Path) -> dict[str, list[dict]]:
    corpora = {}
    for domain in DOMAINS:
        with gzip.open(packs / domain / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
            docs = [json.loads(line) for line in fh if line.strip()]
        for doc in docs:
            doc["_norm"] = norm(doc["text"])
        corpora[domain] = docs
    return corpora


def existing_queries(packs: Path, own: set[str]) -> set[str]:
    """Normalised queries of the other eval files and the packs' held-out QA cases."""
    found = set()
    paths = [p for p in sorted((packs / "eval").glob("*.jsonl")) if p.name not in own]
    paths += sorted(packs.glob("*/qa_cases.jsonl"))
    for path in paths:
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                query = json.loads(line).get("query")
                if isinstance(query, str):
                    found.add(norm(query))
    return found


def check_common(row: dict, name: str, required: set[str], optional: set[str], problems: list[str]) -> bool:
    where = f"{name}:{row['_line']} {row.get('id', '?')}"
    keys = set(row) - {"_line"}
    ok = True
    if missing := required - keys:
        problems.append(f"{where}: missing field(s) {sorted(missing)}")
        ok = False
    if extra := keys - required - optional:
        problems.append(f"{where}: unknown field(s) {sorted(extra)}")
    for key in ("id", "domain", "query", "split"):
        if key in row and (not isinstance(row[key], str) or not row[key].strip()):
            problems.append(f"{where}: {key} must be a non-empty string")
            ok = False
    if ok and row["domain"] not in DOMAINS:
        problems.append(f"{where}: domain {row['domain']!r} not one of {DOMAINS}")
        ok = False
    if ok and row["split"] not in SPLITS:
        problems.append(f"{where}: split {row['split']!r} not one of {SPLITS}")
    if "as_of" in row:
        try:
            parse_day(row["as_of"])
        except (TypeError, ValueError):
            problems.append(f"{where}: as_of {row['as_of']!r} is not an ISO date")
            ok = False
    return ok


def check_answerable(rows: list[dict], corpora: dict[str, list[dict]], problems: list[str],
                     warnings: list[str]) -> None:
    name = "grounding_answerable.jsonl"
    by_uri = {d: {doc["uri"]: doc for doc in docs} for d, docs in corpora.items()}
    for row in rows:
        if not check_common(row, name, ANSWERABLE_FIELDS, ANSWERABLE_OPTIONAL, problems):
            continue
        where = f"{name}:{row['_line']} {row['id']}"
        expected, citations = row["expected"], row["citations"]
        if (not isinstance(expected, list) or not expected
                or not all(isinstance(p, str) and p.strip() for p in expected)):
            problems.append(f"{where}: expected must be a non-empty list of non-empty strings")
            continue
        if not isinstance(citations, list) or not citations or not all(isinstance(u, str) for u in citations):
            problems.append(f"{where}: citations must be a non-empty list of uris")
            continue
        docs = []
        for uri in citations:
            doc = by_uri[row["domain"]].get(uri)
            if doc is None:
                problems.append(f"{where}: cited uri not in the {row['domain']} corpus: {uri}")
            else:
                docs.append(doc)
        if len(docs) != len(citations):
            continue
        query = norm(row["query"])
        for phrase in expected:
            p = norm(phrase)
            if not any(p in doc["_norm"] for doc in docs):
                problems.append(f"{where}: expected phrase {phrase!r} not in any cited passage")
            if p in query:
                problems.append(f"{where}: expected phrase {phrase!r} occurs in the query itself")
        day = parse_day(row["as_of"]) if "as_of" in row else None
        for doc in docs:
            if day is not None and not in_force(doc, day):
                problems.append(f"{where}: cited {doc['uri']} is not in force on as_of {row['as_of']}")
            if day is None and doc.get("valid_to"):
                problems.append(f"{where}: cites {doc['uri']}, superseded on {doc['valid_to']}, "
                                "without an as_of that selects it")
        qwords = words(row["query"])
        runs = {tuple(qwords[i:i + COPY_RUN]) for i in range(len(qwords) - COPY_RUN + 1)}
        for doc in docs:
            dwords = words(doc["text"])
            if runs & {tuple(dwords[i:i + COPY_RUN]) for i in range(len(dwords) - COPY_RUN + 1)}:
                problems.append(f"{where}: query copies {COPY_RUN}+ consecutive words of {doc['uri']}")
        cited = {doc["uri"] for doc in docs}
        also = [doc["uri"] for doc in corpora[row["domain"]] if doc["uri"] not in cited
                and any(norm(p) in doc["_norm"] for p in expected)
                and (day is None or in_force(doc, day))]
        if also:
            warnings.append(f"{where}: an expected phrase also occurs in {len(also)} uncited passage(s), "
                            f"e.g. {also[0]}")


def probe_scope(row: dict, probe: dict, corpora: dict[str, list[dict]], problems: list[str],
                where: str) -> list[dict] | None:
    scope = probe.get("in")
    if scope is None:
        if row["kind"] == "near_miss" and "anchor" not in probe:
            problems.append(f"{where}: a near_miss probe needs 'in' or 'anchor'")
            return None
        scope = "domain" if row["kind"] == "near_miss" else "all"
    if scope == "all":
        docs = [doc for d in DOMAINS for doc in corpora[d]]
    elif scope == "domain":
        docs = list(corpora[row["domain"]])
    elif isinstance(scope, list) and scope and all(isinstance(s, str) and s for s in scope):
        docs = [doc for d in DOMAINS for doc in corpora[d] if any(s in doc["uri"] for s in scope)]
        for s in scope:
            if not any(s in doc["uri"] for doc in docs):
                problems.append(f"{where}: probe scope {s!r} matches no passage")
    else:
        problems.append(f"{where}: probe 'in' must be 'all', 'domain' or a list of uri substrings")
        return None
    if "anchor" in probe:
        rx = term_regex(probe["anchor"])
        docs = [doc for doc in docs if rx.search(doc["_norm"])]
        if not docs:
            problems.append(f"{where}: probe anchor {probe['anchor']!r} occurs in no passage in scope")
            return None
    if not docs:
        problems.append(f"{where}: probe scope is empty")
        return None
    return docs


def check_missing_source(probe: dict, corpora: dict[str, list[dict]], problems: list[str], where: str) -> None:
    code = probe.get("code")
    if not isinstance(code, str) or not code:
        problems.append(f"{where}: missing_source probe needs a 'code'")
        return
    docs = [doc for doc in corpora["law"] if doc.get("code") == code or doc.get("code", "").startswith(code + " ")]
    if not docs:
        problems.append(f"{where}: probe code {code!r} matches no passage (use a held code)")
        return
    hits = docs
    if "recital" in probe:
        hits = [doc for doc in hits if doc["uri"].endswith(f"#rct_{probe['recital']}")]
    if "article" in probe:
        hits = [doc for doc in hits if str(doc.get("article")) == str(probe["article"])]
    if "part" in probe:
        hits = [doc for doc in hits if str(doc.get("part")) == str(probe["part"])]
    if "as_of" in probe:
        day = parse_day(probe["as_of"])
        hits = [doc for doc in hits if in_force(doc, day)]
    if not {"recital", "article", "part", "as_of"} & set(probe):
        problems.append(f"{where}: missing_source probe names no article, part, recital or as_of")
    elif hits:
        problems.append(f"{where}: the index holds what the probe says is missing: {hits[0]['uri']}")


def check_unanswerable(rows: list[dict], corpora: dict[str, list[dict]], problems: list[str]) -> None:
    name = "grounding_unanswerable.jsonl"
    for row in rows:
        if not check_common(row, name, UNANSWERABLE_FIELDS, UNANSWERABLE_OPTIONAL, problems):
            continue
        where = f"{name}:{row['_line']} {row['id']}"
        kind = row["kind"]
        if kind not in KIND_EXPECT:
            problems.append(f"{where}: kind {kind!r} not one of {sorted(KIND_EXPECT)}")
            continue
        if row["expect"] != KIND_EXPECT[kind]:
            problems.append(f"{where}: kind {kind} expects {KIND_EXPECT[kind]!r}, not {row['expect']!r}")
        if kind == "missing_source" and row["domain"] != "law":
            problems.append(f"{where}: missing_source questions are about legal sources (domain law)")
        probe = row["probe"]
        if not isinstance(probe, dict):
            problems.append(f"{where}: probe must be an object")
            continue
        if kind == "missing_source":
            if "as_of" in probe and row.get("as_of") != probe["as_of"]:
                problems.append(f"{where}: an edition probe's as_of must equal the question's as_of")
            check_missing_source(probe, corpora, problems, where)
            continue
        terms = probe.get("terms")
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
            problems.append(f"{where}: probe needs a non-empty list of 'terms'")
            continue
        docs = probe_scope(row, probe, corpora, problems, where)
        if docs is None:
            continue
        for term in terms:
            rx = term_regex(term)
            hit = next((doc for doc in docs if rx.search(doc["_norm"])), None)
            if hit is not None:
                m = rx.search(hit["_norm"])
                problems.append(f"{where}: distinctive term {term!r} occurs in {hit['uri']}: "
                                f"...{hit['_norm'][max(0, m.start() - 50):m.end() + 50]}...")


def check_sets(answerable: list[dict], unanswerable: list[dict], known: set[str], problems: list[str]) -> None:
    ids = Counter(r.get("id") for r in answerable + unanswerable)
    for key, n in ids.items():
        if n > 1:
            problems.append(f"id {key!r} used {n} times")
    queries = Counter(norm(r["query"]) for r in answerable + unanswerable if isinstance(r.get("query"), str))
    for query, n in queries.items():
        if n > 1:
            problems.append(f"query repeated {n} times: {query!r}")
        if query in known:
            problems.append(f"query equals one of the other eval files or qa_cases: {query!r}")

    def balance(rows: list[dict], key: str, label: str) -> None:
        groups = defaultdict(Counter)
        for r in rows:
            groups[r.get(key)][r.get("split")] += 1
        for group, splits in groups.items():
            n = sum(splits.values())
            if abs(splits["calibration"] - n / 2) > max(1, 0.1 * n):
                problems.append(f"{label} {group}: {splits['calibration']} of {n} in calibration, "
                                "not about half")

    balance(answerable, "domain", "answerable domain")
    balance(unanswerable, "kind", "unanswerable kind")
    balance(unanswerable, "domain", "unanswerable domain")

    per_domain = Counter(r.get("domain") for r in answerable)
    if len(answerable) < 90:
        problems.append(f"{len(answerable)} answerable questions, want at least 90")
    for domain, n in MIN_ANSWERABLE.items():
        if per_domain[domain] < n:
            problems.append(f"{per_domain[domain]} answerable {domain} questions, want at least {n}")
    per_kind = Counter(r.get("kind") for r in unanswerable)
    if len(unanswerable) < 80:
        problems.append(f"{len(unanswerable)} unanswerable questions, want at least 80")
    for kind, n in MIN_UNANSWERABLE.items():
        if per_kind[kind] < n:
            problems.append(f"{per_kind[kind]} unanswerable {kind} questions, want at least {n}")


def table(answerable: list[dict], unanswerable: list[dict]) -> str:
    lines = ["answerable          calibration  test  total  (as_of)"]
    for domain in DOMAINS:
        rows = [r for r in answerable if r.get("domain") == domain]
        c = Counter(r.get("split") for r in rows)
        lines.append(f"  {domain:<17} {c['calibration']:>11} {c['test']:>5} {len(rows):>6}  "
                     f"({sum('as_of' in r for r in rows)})")
    c = Counter(r.get("split") for r in answerable)
    lines.append(f"  {'all':<17} {c['calibration']:>11} {c['test']:>5} {len(answerable):>6}")
    lines.append("unanswerable        calibration  test  total  law med fin  expect")
    for kind, expect in KIND_EXPECT.items():
        rows = [r for r in unanswerable if r.get("kind") == kind]
        c = Counter(r.get("split") for r in rows)
        d = Counter(r.get("domain") for r in rows)
        lines.append(f"  {kind:<17} {c['calibration']:>11} {c['test']:>5} {len(rows):>6}  "
                     f"{d['law']:>3} {d['med']:>3} {d['fin']:>3}  {expect}")
    c = Counter(r.get("split") for r in unanswerable)
    lines.append(f"  {'all':<17} {c['calibration']:>11} {c['test']:>5} {len(unanswerable):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="repository root (default: this script's parent's parent)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also list answerable questions whose expected phrase occurs in uncited passages")
    args = ap.parse_args(argv)

    packs = args.root / "src" / "twinloop" / "packs"
    own = {"grounding_answerable.jsonl", "grounding_unanswerable.jsonl"}
    problems: list[str] = []
    warnings: list[str] = []
    answerable = read_jsonl(packs / "eval" / "grounding_answerable.jsonl", problems)
    unanswerable = read_jsonl(packs / "eval" / "grounding_unanswerable.jsonl", problems)
    corpora = load_corpora(packs)

    check_answerable(answerable, corpora, problems, warnings)
    check_unanswerable(unanswerable, corpora, problems)
    check_sets(answerable, unanswerable, existing_queries(packs, own), problems)

    print(table(answerable, unanswerable))
    print(f"{len(warnings)} answerable question(s) whose expected phrase also occurs in uncited passages "
          "(not an error: the citation check still requires the cited one)")
    if args.verbose:
        for w in warnings:
            print("  note:", w)
    for p in problems:
        print("PROBLEM:", p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
