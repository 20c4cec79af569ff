"""Revisioned storage and hybrid retrieval: isolation, as-of, removal, persistence, rebuild."""

from __future__ import annotations

import logging

import pytest

from twinloop.kernel.config import RetrievalConfig
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.knowledge.retrieval import Retriever
from twinloop.knowledge.store import KnowledgeStore

ERASURE = {
    "text": "The data subject shall have the right to obtain from the controller the erasure of personal "
            "data concerning him or her without undue delay.",
    "source": "GDPR", "jurisdiction": "EU", "code": "GDPR", "article": "17", "part": "1",
    "edition_date": "2018-05-25", "uri": "eli/reg/2016/679#art_17-1", "title": "Right to erasure",
}
PORTABILITY = {
    "text": "The data subject shall have the right to receive the personal data concerning him or her in a "
            "structured, commonly used and machine-readable format.",
    "code": "GDPR", "jurisdiction": "EU", "article": "20", "part": "1", "uri": "eli/reg/2016/679#art_20-1",
}
ASPIRIN = {"text": "Low-dose aspirin reduces the risk of a second heart attack in adults with coronary disease.",
           "code": "MedNotes", "uri": "med/aspirin"}
# GG Art. 21(3): "Das Nähere regeln Bundesgesetze." until the 2017 amendment; in the 2020
# edition (3) excludes parties hostile to the constitution from state funding.
GG_2012 = {"text": "(3) Das Nähere regeln Bundesgesetze.", "code": "GG", "jurisdiction": "DE", "article": "21",
           "part": "3", "edition_date": "2012-07-11", "valid_from": "2012-07-11", "valid_to": "2020-09-29",
           "uri": "gg/2012#art_21-3"}
GG_2020 = {"text": "(3) Parteien, die nach ihren Zielen oder dem Verhalten ihrer Anhänger darauf ausgerichtet "
                   "sind, die freiheitliche demokratische Grundordnung zu beeinträchtigen oder zu beseitigen, "
                   "sind von staatlicher Finanzierung ausgeschlossen.",
           "code": "GG", "jurisdiction": "DE", "article": "21", "part": "3", "edition_date": "2020-09-29",
           "valid_from": "2020-09-29", "uri": "gg/2020#art_21-3"}


def uris(result):
    return [h.citation["uri"] for h in result.hits]


def test_ingest_and_search_returns_citation_and_part_scores(knowledge):
    store, retriever = knowledge
    rep = store.ingest("law", [ERASURE, PORTABILITY])
    assert (rep.added, rep.skipped_duplicates, rep.revision) == (2, 0, 1)
    res = retriever.view().search("right to have my personal data erased", "law")
    top = res.hits[0]
    assert top.citation["uri"] == ERASURE["uri"]
    assert top.citation["article"] == "17" and top.citation["edition_date"] == "2018-05-25"
    assert len(top.citation["sha256"]) == 64
    assert top.label == "GDPR Art. 17(1) [2018-05-25]"
    assert top.dense is not None and top.dense >= 0.3
    assert top.bm25 is not None and top.bm25_rank == 1 and top.dense_rank == 1
    assert top.text in ERASURE["text"]


def test_duplicates_skipped_but_new_editions_kept(knowledge):
    store, _ = knowledge
    store.ingest("law", [ERASURE])
    again = dict(ERASURE, text="  The data subject shall have the RIGHT to obtain from the controller the erasure "
                               "of personal data concerning him or her without undue delay. ")
    rep = store.ingest("law", [again, ERASURE])
    assert (rep.added, rep.skipped_duplicates, rep.revision) == (0, 2, None)
    rep = store.ingest("law", [dict(ERASURE, edition_date="2030-01-01", uri="later")])
    assert rep.added == 1, "the same text in another edition is a new document"


def test_pinned_view_is_unchanged_by_later_ingestion(knowledge):
    store, retriever = knowledge
    store.ingest("med", [ASPIRIN])
    pinned = retriever.view()
    before = pinned.search("aspirin after a heart attack", "med").to_dict()
    store.ingest("med", [{"text": "Aspirin after myocardial infarction: daily low-dose aspirin is recommended "
                                  "for secondary prevention of heart attack.", "uri": "med/new"}])
    after = pinned.search("aspirin after a heart attack", "med").to_dict()
    assert [h["citation"]["uri"] for h in after["hits"]] == [h["citation"]["uri"] for h in before["hits"]]
    assert "med/new" in uris(retriever.view().search("aspirin after a heart attack", "med"))
    assert retriever.view(1).revision == 1


def test_as_of_returns_the_edition_in_force(knowledge):
    store, retriever = knowledge
    store.ingest("law", [GG_2012, GG_2020])
    view = retriever.view()
    q = "Artikel 21 Parteien Finanzierung Bundesgesetze"
    assert uris(view.search(q, "law", as_of="2013-01-01", tau=0.0)) == [GG_2012["uri"]]
    assert uris(view.search(q, "law", as_of="2021-06-01", tau=0.0)) == [GG_2020["uri"]]
    assert uris(view.search(q, "law", tau=0.0)) == [GG_2020["uri"]], "default as-of is today"
    assert uris(view.search(q, "law", as_of="2001-01-01", tau=0.0)) == [], "nothing was in force yet"
    assert uris(view.search(q, "law", as_of="2021-06-01", jurisdiction="EU", tau=0.0)) == []


def test_catalog_holds_articles_with_their_validity_and_no_recitals(knowledge):
    store, retriever = knowledge
    recital = {"text": "Recital text about fines.", "code": "GDPR", "jurisdiction": "EU", "article": "Recital 104",
               "uri": "eli/reg/2016/679#rct_104"}
    store.ingest("law", [ERASURE, GG_2012, GG_2020, recital])
    store.ingest("med", [ASPIRIN])
    cat = retriever.catalog()
    assert cat["jurisdictions"]["law"] == {"EU", "DE"} and "med" not in cat["jurisdictions"]
    assert cat["articles"]["GDPR"] == {"17"}, "a recital is not an article"
    assert set(cat["in_force"]["GG"]["21"]) == {("2012-07-11", "2020-09-29"), ("2020-09-29", None)}


def test_removal_is_a_revision_and_erasure_forgets(knowledge):
    store, retriever = knowledge
    store.ingest("law", [ERASURE, PORTABILITY])
    old = retriever.view()
    rep = store.remove("law", uris=[ERASURE["uri"]], note="withdrawn")
    assert rep.removed == 1 and rep.revision == old.revision + 1
    q = "erasure of personal data without undue delay"
    assert ERASURE["uri"] not in uris(retriever.view().search(q, "law"))
    assert ERASURE["uri"] in uris(old.search(q, "law")), "a view pinned before removal still sees it"
    store.remove("law", uris=[ERASURE["uri"]], erase=True, note="right to be forgotten")
    assert ERASURE["uri"] not in uris(old.search(q, "law")), "erased text is gone from every view"
    rows = store.db.conn.execute("SELECT text FROM kn_documents WHERE uri=?", (ERASURE["uri"],)).fetchall()
    assert [r[0] for r in rows] == [""]
    assert store.db.conn.execute("SELECT count(*) FROM kn_fts WHERE kn_fts MATCH 'undue'").fetchone()[0] == 0


def test_restart_serves_same_results(tmp_path, embedder):
    cfg = RetrievalConfig(chunk_words=40, chunk_overlap=8)

    def open_store():
        store = KnowledgeStore(Database(tmp_path / "kb.db"), tmp_path / "idx", embedder, cfg)
        return store, Retriever(store, k=5, tau=0.3)

    store, retriever = open_store()
    store.ingest("law", [ERASURE, PORTABILITY, GG_2020])
    before = retriever.view().search("machine-readable format for my data", "law").to_dict()
    store2, retriever2 = open_store()
    after = retriever2.view().search("machine-readable format for my data", "law").to_dict()
    assert [h["chunk_id"] for h in after["hits"]] == [h["chunk_id"] for h in before["hits"]]
    assert [h["score"] for h in after["hits"]] == [h["score"] for h in before["hits"]]


@pytest.mark.parametrize("damage", ["flip-byte", "delete", "truncate"])
def test_corrupt_or_missing_vector_file_is_rebuilt(tmp_path, embedder, caplog, damage):
    cfg = RetrievalConfig(chunk_words=40, chunk_overlap=8)
    store = KnowledgeStore(Database(tmp_path / "kb.db"), tmp_path / "idx", embedder, cfg)
    store.ingest("law", [ERASURE, PORTABILITY])
    q = "erasure of personal data"
    expected = [h.chunk_id for h in Retriever(store, 5, 0.3).view().search(q, "law", mode="dense").hits]
    f = tmp_path / "idx" / "law.faiss"
    data = bytearray(f.read_bytes())
    if damage == "flip-byte":
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "delete":
        f.unlink()
    else:
        f.write_bytes(bytes(data[:100]))
    with caplog.at_level(logging.WARNING):
        fresh = KnowledgeStore(Database(tmp_path / "kb.db"), tmp_path / "idx", embedder, cfg)
        got = [h.chunk_id for h in Retriever(fresh, 5, 0.3).view().search(q, "law", mode="dense").hits]
    assert got == expected
    assert any("rebuilding" in r.message for r in caplog.records)


def test_index_file_behind_database_is_synced(tmp_path, embedder):
    cfg = RetrievalConfig(chunk_words=40, chunk_overlap=8)
    a = KnowledgeStore(Database(tmp_path / "kb.db"), tmp_path / "idx", embedder, cfg)
    a.ingest("law", [ERASURE])
    b = KnowledgeStore(Database(tmp_path / "kb.db"), tmp_path / "idx", embedder, cfg)
    b.vectors("law")  # b loads its index now ...
    a.ingest("law", [PORTABILITY])  # ... and another writer commits after that
    res = Retriever(b, 5, 0.3).view().search("machine-readable format", "law", mode="dense")
    assert PORTABILITY["uri"] in uris(res)


def test_modes_and_floor(knowledge):
    store, retriever = knowledge
    store.ingest("law", [ERASURE, PORTABILITY])
    view = retriever.view()
    assert view.search("erasure", "law", mode="bm25").hits[0].dense is None
    assert all(h.bm25 is None or h.bm25_rank for h in view.search("erasure", "law", mode="dense").hits)
    assert view.search("recipe for banana bread with walnuts", "law").hits == [], "unrelated: below τ"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query": ""}, InvalidInputError, "non-empty"),
        ({"query": "x" * 5000}, InvalidInputError, "over the limit"),
        ({"query": "q", "as_of": "2020-13-45"}, InvalidInputError, "as_of = '2020-13-45'"),
        ({"query": "q", "domains": "astrology"}, UnknownDomainError, "unknown domain 'astrology'"),
        ({"query": "q", "mode": "magic"}, InvalidInputError, "unknown retrieval mode"),
        ({"query": "q", "k": 0}, InvalidInputError, "k must be"),
    ],
    ids=["empty", "too-long", "bad-date", "unknown-domain", "bad-mode", "bad-k"],
)
def test_bad_search_input(knowledge, kwargs, error, match):
    _, retriever = knowledge
    with pytest.raises(error, match=match):
        retriever.view().search(**kwargs)


def test_fts_syntax_in_query_is_not_an_error(knowledge):
    store, retriever = knowledge
    store.ingest("law", [ERASURE])
    res = retriever.view().search('erasure" AND NEAR( * OR "', "law", mode="bm25")
    assert uris(res) == [ERASURE["uri"]]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"text": ""}, "text"),
        ({"text": "ok", "edition_date": "yesterday"}, "edition_date = 'yesterday'"),
        ({"text": "ok", "colour": "red"}, "unknown field 'colour'"),
        ({"text": "ok", "valid_from": "2020-01-01", "valid_to": "2019-01-01"}, "valid_to"),
        ("just a string", "expected an object"),
    ],
    ids=["empty", "bad-date", "unknown-field", "dates-reversed", "not-object"],
)
def test_bad_documents_reject_batch_and_keep_stored_data(knowledge, doc, match):
    store, _ = knowledge
    store.ingest("law", [ERASURE])
    with pytest.raises(InvalidInputError, match=match):
        store.ingest("law", [PORTABILITY, doc])
    assert store.current_revision() == 1
    assert store.stats()["law"]["documents"] == 1


def test_unknown_domain_on_ingest(knowledge):
    store, _ = knowledge
    with pytest.raises(UnknownDomainError, match="unknown domain 'astrology'"):
        store.ingest("astrology", [ASPIRIN])
