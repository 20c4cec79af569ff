"""Dated editions of German federal laws (bundestag/gesetze Markdown) for "as of" retrieval.

``versions.jsonl`` in the folder lists one row per edition file: ``file``, ``law``, ``jurabk``,
``repo_path``, ``repo_commit`` and ``edition_date_from_header`` (the date of the last amending
act named in the file's own header — the reliable "as of" marker; git dates are not).

Date semantics (the store's as-of filter relies on them):

- An edition's text applies from its edition date until the next edition of the same law
  (``valid_to`` is exclusive). Only the editions we hold are known: GG 2012-07-11 is valid to
  2020-09-29 although Art. 21(3) really changed in 2017, and nothing is valid before a law's
  first edition here.
- A paragraph whose text and heading did not change between consecutive editions is one
  document spanning both (``valid_from`` = first edition, ``edition_date`` = the edition its
  text is quoted from). Without this, every unchanged paragraph would appear once per edition
  and a query without a date would get three identical GG Art. 1(1) hits.
- BDSG 1990 and BDSG 2018 are different laws with different numbering (§ 4 is not § 4), so they
  keep their own ``code`` (their jurabk); BDSG 1990's last edition ends on its repeal date,
  2018-05-25, the day BDSG 2018 and the GDPR took effect (see ``REPEALED``). BDSG 2018 starts
  at its edition here, 2019-11-20: its original 2018 wording is not in the data, so there is
  an honest gap rather than a wrong text.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import Document
from twinloop.knowledge.sources.markdown import documents_from_markdown
from twinloop.knowledge.sources.reading import field, read_jsonl, read_text

JURISDICTION = "DE"
REPO_URL = "https://github.com/bundestag/gesetze/blob"
"""uris point at the exact edition file in the repository at its commit, so a citation can be
checked against the very text that was indexed."""

REPEALED: dict[str, date] = {"BDSG 1990": date(2018, 5, 25)}
"""Laws whose newest edition here ceased to apply, by jurabk. BDSG 1990 was replaced by
BDSG 2018 with effect from 2018-05-25 (BDSG 2018 header: "Ersetzt G 204-3 v. 20.12.1990")."""


def load_law_editions(folder: str | Path, merge_unchanged: bool = True) -> list[Document]:
    """One document per article paragraph per period in force, over all editions in ``folder``.

    Args:
        folder: Folder holding ``versions.jsonl`` and the Markdown files it lists.
        merge_unchanged: Keep one document for a paragraph unchanged across consecutive
            editions (see the module docstring); False gives one document per edition.

    Returns:
        Documents with ``code`` = jurabk (``"GG"``, ``"BDSG 2018"``), ``jurisdiction="DE"``,
        ``article`` ("21" or "§ 4"), ``part`` ("3" for paragraph (3)), ``valid_from``/``valid_to``
        and a uri unique per document
        (``https://github.com/bundestag/gesetze/blob/<commit>/g/gg/index.md#art-21-3``).

    Raises:
        InvalidInputError: ``versions.jsonl`` is missing or malformed, or lists a missing file.
    """
    folder = Path(folder)
    index = folder / "versions.jsonl"
    by_law: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n, row in enumerate(read_jsonl(index), start=1):
        where = f"{index} line {n}"
        edition = _edition(row, where)
        by_law[edition["code"]].append(edition)

    docs: list[Document] = []
    for code in sorted(by_law):
        editions = sorted(by_law[code], key=lambda e: e["date"])
        dates = [e["date"] for e in editions]
        if len(set(dates)) != len(dates):
            raise InvalidInputError(f"{index}: two editions of {code!r} share an edition date")
        per_edition = [_edition_documents(folder, e) for e in editions]
        if merge_unchanged:
            docs.extend(_merge(per_edition, dates, REPEALED.get(code)))
        else:
            docs.extend(_stamp(per_edition, dates, REPEALED.get(code)))
    return docs


def _edition(row: dict[str, Any], where: str) -> dict[str, Any]:
    raw_date = field(row, "edition_date_from_header", where)
    try:
        edition_date = date.fromisoformat(raw_date)
    except ValueError as e:
        raise InvalidInputError(f"{where}: edition_date_from_header = {raw_date!r}: not an ISO date") from e
    return {
        "file": field(row, "file", where),
        "code": field(row, "jurabk", where),
        "law": field(row, "law", where),
        "uri": f"{REPO_URL}/{field(row, 'repo_commit', where)}/{field(row, 'repo_path', where)}",
        "date": edition_date,
    }


def _edition_documents(folder: Path, edition: dict[str, Any]) -> list[Document]:
    path = folder / edition["file"]
    meta = {
        "source": f"{edition['law']} ({edition['code']})",
        "code": edition["code"],
        "jurisdiction": JURISDICTION,
        "edition_date": edition["date"],
        "valid_from": edition["date"],
    }
    # min_level=2 drops the "# Title" section, whose body is the header table (Ausfertigungsdatum ...)
    return documents_from_markdown(read_text(path), uri=edition["uri"], meta=meta, min_level=2, where=str(path))


def _fragment(doc: Document) -> str:
    assert doc.uri is not None  # documents_from_markdown always sets one
    return doc.uri.rsplit("#", 1)[1]


def _stamp(per_edition: list[list[Document]], dates: list[date], repealed: date | None) -> list[Document]:
    ends = [*dates[1:], repealed]
    return [_ending(doc, end) for docs, end in zip(per_edition, ends) for doc in docs]


def _ending(doc: Document, valid_to: date | None) -> Document:
    # Re-validated rather than model_copy'd, so a repeal date before the edition fails loudly.
    return Document.parse({**doc.model_dump(), "valid_to": valid_to}, doc.uri or "document")


def _merge(per_edition: list[list[Document]], dates: list[date], repealed: date | None) -> list[Document]:
    """Walk the editions in date order, keeping a paragraph open while its text is unchanged.

    Paragraphs are matched by their uri fragment (``art-21-3``), i.e. by article and paragraph
    number: a renumbered paragraph (old 21(3) is new 21(5)) is a new document, as a citation
    to "Art. 21(3)" must not silently change meaning.
    """
    closed: list[Document] = []
    open_docs: dict[str, Document] = {}
    for docs, edition_date in zip(per_edition, dates):
        current = {_fragment(d): d for d in docs}
        for frag, old in list(open_docs.items()):
            new = current.get(frag)
            if new is None or new.text != old.text or new.title != old.title:
                closed.append(_ending(old, edition_date))
                del open_docs[frag]
        for frag, new in current.items():
            open_docs.setdefault(frag, new)
    closed.extend(_ending(d, repealed) for d in open_docs.values())
    # Output order: by edition, then by position in the file, so rebuilds are identical.
    position = {d.uri: (i, j) for i, docs in enumerate(per_edition) for j, d in enumerate(docs)}
    return sorted(closed, key=lambda d: position[d.uri])
