"""The GDPR as citable paragraphs, from GDPRtEXT's ``gdpr.json`` (coolharsh55/GDPRtEXT).

One document per article paragraph ("Art. 17(1)"), its points folded into the text as
``(a) ...`` lines so that a paragraph and its list stay one citable unit (a point alone, "the
personal data have been unlawfully processed;", means nothing without its lead-in). An
article without numbered paragraphs (Art. 10, 16, ...) is one document.

Recitals are included, as ``article="Recital 12"``: they are not binding, but they are the
Regulation's own plain-language explanation and often answer "why"/"what counts as" questions
better than the articles. The ``Recital`` prefix keeps them apart from articles of the same
number in any filter on ``article``.

Dates: the Regulation is dated 27 April 2016 (``edition_date``) but applies only from
25 May 2018 (Art. 99(2)), so ``valid_from`` is 2018-05-25 and an "as of 2017" question does not
get GDPR text presented as law then in force. There is one edition (no corrigenda), so
``valid_to`` is None.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import Document
from twinloop.knowledge.sources.reading import field, read_json

SOURCE = "Regulation (EU) 2016/679 (GDPR)"
ELI = "http://data.europa.eu/eli/reg/2016/679/oj"
"""European Legislation Identifier of the Regulation; fragments follow EUR-Lex's anchors
(``#art_17``, ``#rct_12``) with ``-1`` added for the paragraph, so every uri is unique."""
APPLIES_FROM = date(2018, 5, 25)
"""Art. 99(2): "It shall apply from 25 May 2018"."""


def load_gdpr(path: str | Path, recitals: bool = True) -> list[Document]:
    """Documents for every GDPR article paragraph (and recital) in ``gdpr.json``.

    Args:
        path: GDPRtEXT ``gdpr.json``.
        recitals: Also return the 173 recitals.

    Returns:
        Documents with ``code="GDPR"``, ``jurisdiction="EU"``, ``article="17"``, ``part="1"``
        (None for an article without numbered paragraphs), ``title`` = the article's title.

    Raises:
        InvalidInputError: The file is not GDPRtEXT JSON (the message names the bad spot).
    """
    path = Path(path)
    data = read_json(path)
    where = str(path)
    common = {
        "source": SOURCE,
        "jurisdiction": "EU",
        "code": "GDPR",
        "edition_date": _dated(field(data, "dated", where)),
        "valid_from": APPLIES_FROM,
    }
    docs: list[Document] = []
    for article in _articles(field(data, "chapters", where, list), where):
        docs.extend(_article_documents(article, common, where))
    if recitals:
        for n, recital in enumerate(field(data, "recitals", where, list)):
            at = f"{where} recitals[{n}]"
            number = field(recital, "number", at)
            fields = {**common, "article": f"Recital {number}", "title": f"Recital {number}", "uri": f"{ELI}#rct_{number}"}
            docs.append(Document.parse({**fields, "text": field(recital, "text", at)}, at))
    return docs


def _dated(raw: str) -> date:
    # GDPRtEXT writes "27/04/2016"
    try:
        return datetime.strptime(raw, "%d/%m/%Y").date()
    except ValueError as e:
        raise InvalidInputError(f"gdpr.json: dated = {raw!r}: expected DD/MM/YYYY") from e


def _articles(contents: list[Any], where: str) -> list[dict[str, Any]]:
    """Articles in order, looking through chapters and sections."""
    out = []
    for n, item in enumerate(contents):
        at = f"{where} {n}"
        kind = field(item, "type", at)
        if kind == "article":
            out.append(item)
        elif kind in ("chapter", "section"):
            out.extend(_articles(field(item, "contents", at, list), f"{at}/{item.get('number')}"))
        else:
            raise InvalidInputError(f"{at}: type = {kind!r}: expected chapter, section or article")
    return out


def _article_documents(article: dict[str, Any], common: dict[str, Any], where: str) -> list[Document]:
    number = field(article, "number", f"{where} article")
    at = f"{where} Art. {number}"
    title = field(article, "title", at)
    paragraphs: list[tuple[str | None, list[str]]] = []
    lead_in: list[str] = []
    for item in field(article, "contents", at, list):
        lines = [field(item, "text", at), *_points(item.get("subpoints") or [], at)]
        if item.get("type") == "point" and item.get("number"):
            paragraphs.append((str(item["number"]), [*lead_in, *lines]))
            lead_in = []
        elif paragraphs:
            # An unnumbered text after a paragraph is its next subparagraph (Art. 6(1): "Point
            # (f) of the first subparagraph shall not apply ...").
            paragraphs[-1][1].extend(lines)
        else:
            # Before the first paragraph: a lead-in ("For the purposes of this Regulation:"),
            # or the whole body of an article without numbered paragraphs.
            lead_in.extend(lines)
    if not paragraphs:
        paragraphs = [(None, lead_in)]
    docs = []
    for part, lines in paragraphs:
        fragment = f"art_{number}-{part}" if part else f"art_{number}"
        fields = {**common, "article": number, "part": part, "title": title, "uri": f"{ELI}#{fragment}"}
        docs.append(Document.parse({**fields, "text": "\n".join(lines)}, f"{at}({part})" if part else at))
    return docs


def _points(subpoints: list[Any], where: str) -> list[str]:
    # Art. 53(1) lists four unlettered points; EUR-Lex prints them with a dash.
    return [
        f"({p['number']}) {field(p, 'text', where)}" if p.get("number") else f"— {field(p, 'text', where)}"
        for p in subpoints
    ]
