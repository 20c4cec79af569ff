"""TAT-QA (hybrid table + text questions over annual-report excerpts).

A document is one context: its paragraphs, then its table rendered as plain rows
(``Total sales | $1,496.5 | $1,202.9 | $1,107.7``) — a form both BM25 and a sentence embedder
can read, unlike JSON. Paragraphs come first because they introduce the table ("The table
below presents ...").

TAT-QA has no company names, years or page numbers, so the only citation is the context's uid
in the data set file; the uri names that file at the commit the data was copied from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import Document
from twinloop.knowledge.sources.qa import QAItem
from twinloop.knowledge.sources.reading import field, read_json

CODE = "TAT-QA"
SOURCE = "TAT-QA (annual report excerpts)"
URI_BASE = (
    "https://github.com/NExTplusplus/TAT-QA/blob/870accc41953dcde885aabeb963d94aabdc0fbc3/dataset_raw/"
)
_WS = re.compile(r"\s+")


def context_uri(path: Path, uid: str) -> str:
    """``<data set file>#<context uid>``, unique per context."""
    return f"{URI_BASE}{path.name}#{uid}"


def render_table(rows: list[Any], where: str) -> str:
    """Rows as ``cell | cell | cell`` lines; empty rows dropped, trailing empty cells trimmed."""
    lines = []
    for n, row in enumerate(rows):
        if not isinstance(row, list):
            raise InvalidInputError(f"{where}: table row {n} is {type(row).__name__}, expected a list")
        cells = [_WS.sub(" ", str(c)).strip() for c in row]
        while cells and not cells[-1]:
            cells.pop()
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def _contexts(path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise InvalidInputError(f"{path}: expected a list of contexts, got {type(data).__name__}")
    out = []
    for n, context in enumerate(data):
        where = f"{path} context {n}"
        uid = field(field(context, "table", where, dict), "uid", where)
        out.append((f"{path} context {uid}", uid, context))
    return out


def load_tatqa(path: str | Path) -> list[Document]:
    """One document per context in a TAT-QA JSON file (``article`` = the context uid).

    Raises:
        InvalidInputError: A context lacks its table, uid or paragraphs.
    """
    path = Path(path)
    docs = []
    for where, uid, context in _contexts(path):
        paragraphs = sorted(field(context, "paragraphs", where, list), key=lambda p: p.get("order", 0))
        texts = [field(p, "text", where) for p in paragraphs]
        table = render_table(field(context["table"], "table", where, list), where)
        fields = {
            "text": "\n".join([*texts, table]).strip(),
            "source": SOURCE,
            "code": CODE,
            "article": uid,
            "uri": context_uri(path, uid),
        }
        docs.append(Document.parse(fields, where))
    return docs


def load_tatqa_questions(path: str | Path) -> list[QAItem]:
    """Every question with its answer (as text), answer type, scale and context uri.

    List answers are joined with ``"; "``; numbers are written as in the data (``-12.6``),
    with the scale (``"million"``) in ``meta``.

    Raises:
        InvalidInputError: A question lacks ``question``, ``answer`` or ``uid``.
    """
    path = Path(path)
    split = "dev" if "dev" in path.name else "test" if "test" in path.name else None
    items = []
    for where, uid, context in _contexts(path):
        for q in field(context, "questions", where, list):
            at = f"{where} question {q.get('uid')}"
            answer = field(q, "answer", at, (str, int, float, list))
            text = "; ".join(str(a) for a in answer) if isinstance(answer, list) else str(answer)
            items.append(
                QAItem(
                    question=field(q, "question", at),
                    answer=text,
                    dataset=CODE,
                    key=field(q, "uid", at),
                    uri=context_uri(path, uid),
                    split=split,
                    answer_type=str(q.get("answer_type") or ""),
                    meta={
                        "scale": str(q.get("scale") or ""),
                        "derivation": str(q.get("derivation") or ""),
                        "answer_from": str(q.get("answer_from") or ""),
                    },
                )
            )
    return items
