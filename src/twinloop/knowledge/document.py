"""Documents with citation metadata (docs/DESIGN.md "Core concepts", Index revision).

A document is the unit a citation points at: one article, paragraph ("part") or clause of a
code, one abstract, one Q&A answer, one report section. Chunking splits a document but never
joins two, so a chunk always cites exactly one document.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.text import normalise_text  # noqa: F401  (re-exported: documents hash on it)

MAX_DOCUMENT_CHARS = 200_000
"""One document is one citable unit; anything longer is almost surely a whole file pasted
in by mistake and would make one citation cover a book."""

CITATION_FIELDS = (
    "source",
    "jurisdiction",
    "code",
    "article",
    "part",
    "clause",
    "edition_date",
    "valid_from",
    "valid_to",
    "uri",
)

def text_sha256(text: str) -> str:
    """SHA-256 of the normalised text (so a re-formatted copy hashes the same)."""
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


class Document(BaseModel):
    """A citable text with its metadata; every field but ``text`` is optional.

    Dates are ISO ``YYYY-MM-DD``. ``valid_from``/``valid_to`` bound when the text is in force
    (``valid_to`` exclusive); ``edition_date`` is the date of the edition the text is from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=MAX_DOCUMENT_CHARS)
    source: str | None = Field(default=None, max_length=500)
    """Publication or data set, e.g. "GDPR (Regulation (EU) 2016/679)"."""
    jurisdiction: str | None = Field(default=None, max_length=50)
    """e.g. "EU", "DE"; None for texts bound to no jurisdiction."""
    code: str | None = Field(default=None, max_length=100)
    """Short name of the code or collection, e.g. "GDPR", "GG", "PubMedQA"."""
    article: str | None = Field(default=None, max_length=50)
    """Article / section number as printed, e.g. "17", "21", "§ 4"."""
    part: str | None = Field(default=None, max_length=50)
    """Paragraph within the article, e.g. "1"."""
    clause: str | None = Field(default=None, max_length=50)
    """Point / sub-paragraph, e.g. "a"."""
    edition_date: date | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    uri: str | None = Field(default=None, max_length=2000)
    title: str | None = Field(default=None, max_length=500)
    """Heading shown with the citation (article title, question)."""

    @field_validator("text")
    @classmethod
    def _has_words(cls, v: str) -> str:
        if not normalise_text(v):
            raise ValueError("text is empty after normalisation")
        return v

    @field_validator("source", "jurisdiction", "code", "article", "part", "clause", "uri", "title", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @model_validator(mode="after")
    def _dates_in_order(self) -> Document:
        if self.valid_from and self.valid_to and self.valid_to <= self.valid_from:
            raise ValueError(f"valid_to {self.valid_to} must be after valid_from {self.valid_from}")
        return self

    @property
    def sha256(self) -> str:
        """SHA-256 of the normalised text."""
        return text_sha256(self.text)

    @property
    def in_force_from(self) -> date | None:
        """First day the text applies: ``valid_from``, else its edition date."""
        return self.valid_from or self.edition_date

    def citation(self) -> dict[str, Any]:
        """Citation metadata as JSON-ready values (dates as ISO strings)."""
        out = {f: getattr(self, f) for f in CITATION_FIELDS}
        out = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in out.items()}
        out["title"] = self.title
        out["sha256"] = self.sha256
        return out

    def label(self) -> str:
        """Short human citation, e.g. "GDPR Art. 17(1)(a) [2016-04-27]" or "PubMedQA 12345"."""
        return citation_label(self.citation())

    @classmethod
    def parse(cls, obj: Any, where: str = "document") -> Document:
        """Validate a mapping (e.g. a JSONL line), naming the bad field and value on error.

        Raises:
            InvalidInputError: e.g. ``line 3: edition_date = '2020-13-01': Input should be ...``.
        """
        if isinstance(obj, Document):
            return obj
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{where}: expected an object with 'text', got {type(obj).__name__}")
        try:
            return cls.model_validate(obj)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(document)"
            if first["type"] == "extra_forbidden":
                raise InvalidInputError(f"{where}: unknown field {field!r}") from e
            if first["type"] == "missing":
                raise InvalidInputError(f"{where}: missing field {field!r}") from e
            value = first.get("input")
            shown = repr(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:77] + "...")
            raise InvalidInputError(f"{where}: {field} = {shown}: {first['msg']}") from e


def article_ref(article: str, jurisdiction: str | None) -> str:
    """How an article number is printed: "Art. 17" in a legal code (one with a
    jurisdiction), as given for "§ 4" or "Recital 12", and bare elsewhere ("PubMedQA 12345")."""
    if jurisdiction and article[:1].isdigit():
        return f"Art. {article}"
    return article


def citation_label(citation: dict[str, Any]) -> str:
    """Short human citation from citation metadata (see :meth:`Document.label`)."""
    out = citation.get("code") or citation.get("source") or "document"
    if citation.get("article"):
        out += " " + article_ref(citation["article"], citation.get("jurisdiction"))
        out += "".join(f"({citation[k]})" for k in ("part", "clause") if citation.get(k))
    if citation.get("edition_date"):
        out += f" [{citation['edition_date']}]"
    return out
