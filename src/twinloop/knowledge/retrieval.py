"""Hybrid retrieval over a view pinned to one index revision (docs/DESIGN.md "Serving").

Lexical BM25 (SQLite FTS5) and dense cosine (FAISS) each rank the chunks a view may see, and
the two lists are fused: by default with relative score fusion (each part's scores min-max
normalised over its candidates, then a weighted sum), or with reciprocal rank fusion
(Cormack et al., 2009: Σ 1/(60 + rank)). A floor τ on the dense cosine (paper §4.5, App. A:
0.3) drops passages unrelated to the question, so an unanswerable question gets no sources
rather than the least bad ones.

What a view may see: documents visible at its revision, in force on the as-of date (default
today), and for each (jurisdiction, code, article, part, clause) only the newest edition in
force then — so "as of 2013" returns GG Art. 21(3) of the 2012 edition and "as of 2021" that
of the 2020 edition.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.corrections import CORRECTION_CODE
from twinloop.knowledge.document import citation_label
from twinloop.knowledge.store import KnowledgeStore

Mode = Literal["hybrid", "bm25", "dense"]
Fusion = Literal["relative", "rrf"]
RRF_K = 60
"""Rank offset of reciprocal rank fusion; 60 is the value of the original paper, robust
across collections."""
CANDIDATES = 50
"""Candidates each part contributes to the fusion (well beyond k, so fusion can reorder)."""
MAX_QUERY_CHARS = 4000
_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hit:
    """One retrieved passage with its citation and the score of each part."""

    chunk_id: int
    doc_id: int
    domain: str
    text: str
    citation: dict
    label: str
    score: float
    """Fused score (RRF in hybrid mode; the part's own score otherwise)."""
    dense: float | None
    """Cosine similarity of query and passage."""
    bm25: float | None
    """BM25 score (higher is better); None when the passage had no lexical match."""
    dense_rank: int | None = None
    bm25_rank: int | None = None

    def to_dict(self) -> dict:
        return {
            "chunk_id": self.chunk_id, "doc_id": self.doc_id, "domain": self.domain, "text": self.text,
            "citation": self.citation, "label": self.label, "score": self.score,
            "scores": {"dense": self.dense, "bm25": self.bm25, "dense_rank": self.dense_rank,
                       "bm25_rank": self.bm25_rank},
        }


@dataclass
class SearchResult:
    query: str
    revision: int
    as_of: str
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"query": self.query, "revision": self.revision, "as_of": self.as_of,
                "hits": [h.to_dict() for h in self.hits], "timings_ms": self.timings_ms}


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression OR-ing the query's words, each quoted so that no user text
    is parsed as FTS syntax (a stray quote or ``NEAR`` must not be an error)."""
    words = [w.lower() for w in _TOKEN.findall(text)][:64]
    words = list(dict.fromkeys(w for w in words if len(w) > 1 or w.isdigit()))
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in words)


@dataclass(frozen=True)
class Eligible:
    """Chunk ids a view may return: an array for FAISS's selector, a set for filtering."""

    ids: np.ndarray
    members: frozenset[int]

    def __len__(self) -> int:
        return len(self.ids)


class Retriever:
    """Searches a :class:`KnowledgeStore`; cheap to share between threads."""

    def __init__(self, store: KnowledgeStore, k: int, tau: float, fusion: Fusion = "relative",
                 lexical_weight: float = 0.5) -> None:
        self.store = store
        self.k = k
        self.tau = tau
        self.fusion = fusion
        self.lexical_weight = lexical_weight
        self._eligible: OrderedDict[tuple, Eligible] = OrderedDict()
        self._catalogs: dict[tuple[int, int], dict[str, dict]] = {}
        self._eligible_lock = threading.Lock()

    def view(self, revision: int | None = None) -> View:
        """A view pinned to ``revision`` (default: the newest)."""
        current = self.store.current_revision()
        if revision is None:
            revision = current
        if not 0 <= revision <= current:
            raise InvalidInputError(f"index revision {revision} does not exist (newest is {current})")
        return View(self, revision)

    def catalog(self, revision: int | None = None) -> dict[str, dict]:
        """What a revision holds: ``{"jurisdictions": {domain: {...}}, "articles": {code: {...}},
        "in_force": {code: {article: ((from, to), ...)}}, "parts": {code: {article: {...}}}}``
        (``parts``: the numbered paragraphs stored for an article, in any edition).

        ``articles`` counts every edition (an article that existed in any edition is held);
        ``in_force`` keeps each article's validity intervals, so a question about an article
        "as in force in 2015" can be checked against the editions of that date. Recitals are
        not articles: "Recital 104" does not make an "Article 104". Cached per (revision,
        newest revision).
        """
        rev = self.store.current_revision() if revision is None else revision
        key = (rev, self.store.current_revision())
        with self._eligible_lock:
            if key in self._catalogs:
                return self._catalogs[key]
        rows = self.store.db.conn.execute(
            "SELECT DISTINCT domain, jurisdiction, code, article, part, in_force_from, valid_to FROM kn_documents "
            "WHERE erased = 0 AND added_rev <= ? AND (removed_rev IS NULL OR removed_rev > ?) "
            "AND (code IS NULL OR code != ?)", (rev, rev, CORRECTION_CODE)).fetchall()
        jurisdictions: dict[str, set[str]] = {}
        articles: dict[str, set[str]] = {}
        in_force: dict[str, dict[str, set[tuple[str | None, str | None]]]] = {}
        parts: dict[str, dict[str, set[str]]] = {}
        for domain, jur, code, article, part, start, end in rows:
            if jur:
                jurisdictions.setdefault(domain, set()).add(jur)
            if code:
                articles.setdefault(code, set())
                n = article_number(article)
                if n is not None:
                    articles[code].add(n)
                    in_force.setdefault(code, {}).setdefault(n, set()).add((start, end))
                    if part:
                        parts.setdefault(code, {}).setdefault(n, set()).add(str(part).strip().lower())
        found = {"jurisdictions": {d: frozenset(v) for d, v in jurisdictions.items()},
                 "articles": {c: frozenset(v) for c, v in articles.items()},
                 "in_force": {c: {a: tuple(sorted(iv, key=str)) for a, iv in arts.items()}
                              for c, arts in in_force.items()},
                 "parts": {c: {a: frozenset(ps) for a, ps in arts.items()} for c, arts in parts.items()}}
        with self._eligible_lock:
            self._catalogs = {key: found}  # only the newest view is asked for in practice
        return found

    # Correction documents are never eligible: correction memory serves them to the questions
    # in their scope (serving/memory.py); as passages they would take a place in the top k of
    # unrelated questions and change their answers (docs/DESIGN.md "Learning").
    # The chunks a (domain, revision, as-of, jurisdiction) may see are fixed for a revision,
    # so an LRU cache makes repeated queries cheap. The newest revision is part of the key:
    # an erasure (a new revision) must hide text from old pinned views too.
    def eligible_chunks(self, domain: str, revision: int, as_of: date, jurisdiction: str | None) -> Eligible:
        key = (domain, revision, as_of, jurisdiction, self.store.current_revision())
        with self._eligible_lock:
            if key in self._eligible:
                self._eligible.move_to_end(key)
                return self._eligible[key]
        d = as_of.isoformat()
        rows = self.store.db.conn.execute(
            """
            WITH vis AS (
                SELECT id, jurisdiction, code, article, part, clause, edition_date, in_force_from
                FROM kn_documents
                WHERE domain = :domain AND erased = 0 AND added_rev <= :rev
                  AND (removed_rev IS NULL OR removed_rev > :rev)
                  AND (in_force_from IS NULL OR in_force_from <= :d)
                  AND (valid_to IS NULL OR valid_to > :d)
                  AND (:jur IS NULL OR jurisdiction = :jur)
                  AND (code IS NULL OR code != :correction)
            ),
            ranked AS (
                SELECT id, ROW_NUMBER() OVER (
                    PARTITION BY coalesce(jurisdiction, ''), code, article, coalesce(part, ''), coalesce(clause, '')
                    ORDER BY coalesce(edition_date, in_force_from, '') DESC, id DESC) AS rn
                FROM vis WHERE code IS NOT NULL AND article IS NOT NULL
            ),
            docs AS (
                SELECT id FROM vis WHERE code IS NULL OR article IS NULL
                UNION ALL SELECT id FROM ranked WHERE rn = 1
            )
            SELECT c.id FROM kn_chunks c JOIN docs ON docs.id = c.doc_id ORDER BY c.id
            """,
            {"domain": domain, "rev": revision, "d": d, "jur": jurisdiction, "correction": CORRECTION_CODE},
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        found = Eligible(ids, frozenset(ids.tolist()))
        with self._eligible_lock:
            self._eligible[key] = found
            while len(self._eligible) > 256:
                self._eligible.popitem(last=False)
        return found


_ARTICLE_NUMBER = re.compile(r"\d+\s*[a-zA-Z]?\b")


def article_number(label: Any) -> str | None:
    """The number of an article label as the catalog keys it: "§ 4f", "Art. 12" → "4f", "12";
    None for a recital ("Recital 104" does not make an "Article 104") or no number."""
    text = str(label or "")
    number = _ARTICLE_NUMBER.search(text)
    if number is None or text.casefold().startswith("recital"):
        return None
    return number.group(0).replace(" ", "").lower()


class View:
    """Everything one index revision holds; what a release pins."""

    def __init__(self, retriever: Retriever, revision: int) -> None:
        self.retriever = retriever
        self.store = retriever.store
        self.revision = revision

    def search(self, query: str, domains: list[str] | str | None = None, *, k: int | None = None,
               as_of: date | str | None = None, jurisdiction: str | None = None, mode: Mode = "hybrid",
               tau: float | None = None, query_vector: np.ndarray | None = None,
               fusion: Fusion | None = None) -> SearchResult:
        """Top-k passages for a query across one or more domains.

        Args:
            query: The user's question.
            domains: Domain names; None searches every domain holding documents.
            k: Passages returned (default from config, paper App. A: 5).
            as_of: Date whose law is wanted (ISO string or date); default today.
            jurisdiction: Only documents of this jurisdiction (e.g. "DE").
            mode: ``hybrid`` (default), or one part alone (``bm25``, ``dense``) for comparison.
            tau: Dense-similarity floor (default from config); ignored in ``bm25`` mode.
            query_vector: The query's embedding when the caller already has it (router).
            fusion: How hybrid mode merges the parts (default from config).
        """
        t0 = time.perf_counter()
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty string")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInputError(f"query is {len(query)} characters, over the limit of {MAX_QUERY_CHARS}")
        if mode not in ("hybrid", "bm25", "dense"):
            raise InvalidInputError(f"unknown retrieval mode {mode!r}; use hybrid, bm25 or dense")
        k = self.retriever.k if k is None else k
        if not 1 <= k <= 100:
            raise InvalidInputError(f"k must be between 1 and 100, got {k}")
        tau = self.retriever.tau if tau is None else tau
        fusion = fusion or self.retriever.fusion
        if fusion not in ("relative", "rrf"):
            raise InvalidInputError(f"unknown fusion {fusion!r}; use relative or rrf")
        day = parse_date(as_of) if as_of is not None else date.today()
        if isinstance(domains, str):
            domains = [domains]
        if domains is None:
            domains = self._domains_with_documents()
        for d in domains:
            self.store.check_domain(d)
        timings: dict[str, float] = {}
        if query_vector is None and mode != "bm25":
            t = time.perf_counter()
            query_vector = self.store.embedder.encode([query])[0]
            timings["embed"] = (time.perf_counter() - t) * 1000
        hits: list[Hit] = []
        t = time.perf_counter()
        for domain in domains:
            hits.extend(self._search_domain(query, query_vector, domain, k, day, jurisdiction, mode, tau, fusion))
        timings["search"] = (time.perf_counter() - t) * 1000
        hits.sort(key=lambda h: h.score, reverse=True)
        timings["total"] = (time.perf_counter() - t0) * 1000
        return SearchResult(query, self.revision, day.isoformat(), hits[:k],
                            {a: round(b, 3) for a, b in timings.items()})

    def _domains_with_documents(self) -> list[str]:
        rows = self.store.db.conn.execute(
            "SELECT DISTINCT domain FROM kn_documents WHERE added_rev <= ? ORDER BY domain", (self.revision,)
        ).fetchall()
        return [r[0] for r in rows]

    def _search_domain(self, query, qvec, domain, k, day, jurisdiction, mode, tau, fusion) -> list[Hit]:
        allowed = self.retriever.eligible_chunks(domain, self.revision, day, jurisdiction)
        if len(allowed) == 0:
            return []
        lexical: list[tuple[int, float]] = []
        dense: list[tuple[int, float]] = []
        if mode in ("hybrid", "bm25"):
            lexical = self._bm25(query, domain, allowed)
        vi = self.store.vectors(domain)
        if mode in ("hybrid", "dense"):
            vi.sync()
            dense = vi.search(qvec, CANDIDATES, allowed.ids)
        bm25_rank = {cid: r for r, (cid, _s) in enumerate(lexical, start=1)}
        bm25_score = dict(lexical)
        dense_rank = {cid: r for r, (cid, _s) in enumerate(dense, start=1)}
        cosine = dict(dense)
        if mode == "bm25":
            scored = [(cid, s) for cid, s in lexical]
        elif mode == "dense":
            scored = list(dense)
        else:
            scored = fuse(lexical, dense, fusion, self.retriever.lexical_weight)
        if mode != "bm25":
            missing = [cid for cid, _ in scored[: k * 4] if cid not in cosine]
            if missing and qvec is not None:
                for cid, vec in vi.vectors(missing).items():
                    cosine[cid] = float(np.dot(vec, qvec))
            scored = [(cid, s) for cid, s in scored if cosine.get(cid, -1.0) >= tau]
        top = scored[:k]
        rows = self._chunk_rows([cid for cid, _ in top])
        hits = []
        for cid, s in top:
            row = rows.get(cid)
            if row is None:
                continue
            citation = json.loads(row["meta"])
            hits.append(Hit(
                chunk_id=cid, doc_id=row["doc_id"], domain=domain, text=row["text"], citation=citation,
                label=citation_label(citation), score=round(float(s), 6),
                dense=round(cosine[cid], 4) if cid in cosine else None,
                bm25=round(bm25_score[cid], 4) if cid in bm25_score else None,
                dense_rank=dense_rank.get(cid), bm25_rank=bm25_rank.get(cid),
            ))
        return hits

    def _bm25(self, query: str, domain: str, allowed: Eligible) -> list[tuple[int, float]]:
        match = fts_query(query)
        if match is None:
            return []
        # FTS5's bm25() is lower-is-better; negate it so every score here is higher-is-better.
        # Rows of other domains, revisions or editions are filtered after ranking; a few
        # hundred lexical candidates leave plenty after that filter.
        rows = self.store.db.conn.execute(
            "SELECT f.rowid, -bm25(kn_fts) AS s FROM kn_fts f JOIN kn_chunks c ON c.id = f.rowid "
            "WHERE kn_fts MATCH ? AND c.domain = ? ORDER BY bm25(kn_fts) LIMIT ?",
            (match, domain, CANDIDATES * 8),
        ).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows if int(r[0]) in allowed.members][:CANDIDATES]

    def _chunk_rows(self, chunk_ids: list[int]) -> dict[int, dict]:
        if not chunk_ids:
            return {}
        rows = self.store.db.conn.execute(
            f"SELECT c.id, c.doc_id, c.text, d.meta FROM kn_chunks c JOIN kn_documents d ON d.id = c.doc_id "
            f"WHERE c.id IN ({','.join('?' * len(chunk_ids))})",
            chunk_ids,
        ).fetchall()
        return {r["id"]: dict(r) for r in rows}


def fuse(lexical: list[tuple[int, float]], dense: list[tuple[int, float]], method: Fusion,
         lexical_weight: float) -> list[tuple[int, float]]:
    """Merge two best-first (chunk id, score) lists into one, best first."""
    fused: dict[int, float] = {}
    for weight, part in ((lexical_weight, lexical), (1.0 - lexical_weight, dense)):
        if not part:
            continue
        if method == "rrf":
            for rank, (cid, _s) in enumerate(part, start=1):
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank)
        else:
            values = [s for _c, s in part]
            lo, hi = min(values), max(values)
            span = hi - lo
            for cid, s in part:
                # A list of one candidate (or ties) normalises to 1: it is that part's best.
                norm = (s - lo) / span if span > 0 else 1.0
                fused[cid] = fused.get(cid, 0.0) + weight * norm
    return sorted(fused.items(), key=lambda x: x[1], reverse=True)


def parse_date(value: date | str) -> date:
    """An ISO date, or an input error naming the value."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as e:
        raise InvalidInputError(f"as_of = {value!r} is not an ISO date (YYYY-MM-DD)") from e
