"""MedQuAD (NIH/CDC question-answer pairs): answers as documents, questions as QA items.

A document is one answer, titled with its question and cited by the NIH/CDC page it was taken
from. Several answers come from one page, so the uri adds a fragment with the pair's id
(``http://www.cdc.gov/parasites/acanthamoeba/#9_CDC_QA-0000001-1``) to stay unique.

The same answer text sometimes appears under two questions (9 times in the CDC set); it is kept
once, under its first question, because one passage should be one citation — and
``load_medquad_questions`` points the other question at that same document.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twinloop.knowledge.document import Document, text_sha256
from twinloop.knowledge.sources.qa import QAItem
from twinloop.knowledge.sources.reading import field, read_jsonl

CODE = "MedQuAD"
SOURCE_NAMES = {
    "CDC": "Centers for Disease Control and Prevention (CDC)",
    "NIHSeniorHealth": "NIH SeniorHealth",
}
"""Readable publisher names for the ``source`` field; other collections keep their own name."""


def _paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _rows(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p} line {n}", row) for p in paths for n, row in enumerate(read_jsonl(p), start=1)]


def _uri(row: dict[str, Any], where: str) -> str:
    return f"{field(row, 'url', where)}#{field(row, 'collection', where)}-{field(row, 'id', where)}"


def load_medquad(paths: str | Path | Iterable[str | Path]) -> list[Document]:
    """One document per distinct answer in the MedQuAD JSONL file(s).

    Raises:
        InvalidInputError: A line lacks ``question``, ``answer``, ``url``, ``id`` or ``collection``.
    """
    docs = []
    seen: set[str] = set()
    for where, row in _rows(_paths(paths)):
        answer = field(row, "answer", where)
        digest = text_sha256(answer)
        if digest in seen:
            continue
        seen.add(digest)
        publisher = str(row.get("source") or "")
        fields = {
            "text": answer,
            "source": f"{SOURCE_NAMES.get(publisher, publisher or 'NIH')}, via MedQuAD",
            "code": CODE,
            "title": field(row, "question", where),
            "uri": _uri(row, where),
        }
        docs.append(Document.parse(fields, where))
    return docs


def load_medquad_questions(paths: str | Path | Iterable[str | Path]) -> list[QAItem]:
    """Every question with its reference answer and the uri of the document holding it.

    Raises:
        InvalidInputError: As ``load_medquad``.
    """
    items = []
    first_uri: dict[str, str] = {}
    for where, row in _rows(_paths(paths)):
        answer = field(row, "answer", where)
        uri = first_uri.setdefault(text_sha256(answer), _uri(row, where))
        items.append(
            QAItem(
                question=field(row, "question", where),
                answer=answer,
                dataset=CODE,
                key=f"{field(row, 'collection', where)}-{field(row, 'id', where)}",
                uri=uri,
                answer_type="free",
                meta={"qtype": str(row.get("qtype") or ""), "focus": str(row.get("focus") or "")},
            )
        )
    return items
