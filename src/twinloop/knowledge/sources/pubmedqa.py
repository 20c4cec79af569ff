"""PubMedQA (PQA-L): abstracts as documents and the expert-labelled yes/no/maybe questions.

A document is one abstract's context sections (``BACKGROUND: ...``), keyed by its PubMed uri.
The abstract's conclusion (``LONG_ANSWER``) is left out on purpose: PubMedQA's
"reasoning-required" setting withholds it because it states the answer, and an index holding
it would turn the QA evaluation into string matching.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import Document
from twinloop.knowledge.sources.qa import QAItem
from twinloop.knowledge.sources.reading import field, read_json

CODE = "PubMedQA"
SOURCE = "PubMed abstract (PubMedQA PQA-L)"
DECISIONS = ("yes", "no", "maybe")


def pubmed_uri(pmid: str) -> str:
    """The abstract's PubMed page, the uri its document and QA items are keyed by."""
    return f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/"


def load_pubmedqa(path: str | Path) -> list[Document]:
    """One document per abstract in ``ori_pqal.json``, in PMID order.

    ``edition_date`` is 1 January of the publication year (the data gives the year only);
    58 records have no year and no date.

    Raises:
        InvalidInputError: The file is not PubMedQA JSON (names the PMID and field).
    """
    path = Path(path)
    docs = []
    for pmid, record in _records(path):
        where = f"{path} PMID {pmid}"
        contexts = field(record, "CONTEXTS", where, list)
        labels = record.get("LABELS") or [None] * len(contexts)
        if len(labels) != len(contexts):
            raise InvalidInputError(f"{where}: {len(labels)} LABELS for {len(contexts)} CONTEXTS")
        text = "\n".join(f"{label}: {ctx}" if label else str(ctx) for label, ctx in zip(labels, contexts))
        fields = {
            "text": text,
            "source": SOURCE,
            "code": CODE,
            "article": pmid,
            "title": field(record, "QUESTION", where),
            "uri": pubmed_uri(pmid),
            "edition_date": _year_date(record.get("YEAR"), where),
        }
        docs.append(Document.parse(fields, where))
    return docs


def load_pubmedqa_questions(path: str | Path, test_key: str | Path | None = None) -> list[QAItem]:
    """The labelled questions of ``ori_pqal.json``.

    Args:
        path: ``ori_pqal.json``.
        test_key: ``test_ground_truth.json`` (the official 500-item test split); defaults to
            the file of that name next to ``path`` when it exists. Items in it get
            ``split="test"``, the others ``"train"``.

    Raises:
        InvalidInputError: A record lacks its question or has a decision other than yes/no/maybe.
    """
    path = Path(path)
    key_path = Path(test_key) if test_key else path.with_name("test_ground_truth.json")
    test = set(read_json(key_path)) if test_key or key_path.exists() else set()
    items = []
    for pmid, record in _records(path):
        where = f"{path} PMID {pmid}"
        decision = field(record, "final_decision", where)
        if decision not in DECISIONS:
            raise InvalidInputError(f"{where}: final_decision = {decision!r}: expected one of {DECISIONS}")
        items.append(
            QAItem(
                question=field(record, "QUESTION", where),
                answer=decision,
                dataset=CODE,
                key=pmid,
                uri=pubmed_uri(pmid),
                split="test" if pmid in test else "train",
                answer_type="yes/no/maybe",
                meta={"long_answer": str(record.get("LONG_ANSWER") or "")},
            )
        )
    return items


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected an object keyed by PMID, got {type(data).__name__}")
    for pmid in data:
        if not pmid.isdigit():
            raise InvalidInputError(f"{path}: key {pmid!r} is not a PMID")
    return sorted(data.items(), key=lambda kv: int(kv[0]))


def _year_date(year: Any, where: str) -> date | None:
    if year in (None, ""):
        return None
    try:
        return date(int(year), 1, 1)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{where}: YEAR = {year!r}: not a year") from e
