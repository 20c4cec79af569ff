"""Turning data files into citable ``Document``s: one module per input format.

``FORMATS`` is the registry (format name → loader and how to recognise its files);
``detect_and_load`` picks the format of a path, which is what ``twinloop ingest PATH`` needs.
Detection goes from the most specific format to the most generic, so ``gdpr.json`` is read as
the GDPR and not refused as unknown JSON, and any other ``.jsonl`` is read as Document lines.

Labelled QA items (for evaluation, not for the index) come from the ``load_*_questions``
functions and ``load_rule_qa``; see ``twinloop.knowledge.sources.qa.QAItem``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import Document
from twinloop.knowledge.sources.editions import load_law_editions
from twinloop.knowledge.sources.gdpr import load_gdpr
from twinloop.knowledge.sources.legalbench import load_rule_qa
from twinloop.knowledge.sources.markdown import (
    TEXT_SUFFIXES,
    load_markdown_file,
    load_markdown_folder,
)
from twinloop.knowledge.sources.medquad import load_medquad, load_medquad_questions
from twinloop.knowledge.sources.pubmedqa import load_pubmedqa, load_pubmedqa_questions
from twinloop.knowledge.sources.qa import QAItem
from twinloop.knowledge.sources.reading import parse_jsonl, read_text
from twinloop.knowledge.sources.tatqa import load_tatqa, load_tatqa_questions

__all__ = [
    "FORMATS",
    "Format",
    "QAItem",
    "detect_and_load",
    "documents_from_jsonl",
    "detect_format",
    "load_documents_jsonl",
    "load_gdpr",
    "load_law_editions",
    "load_markdown_file",
    "load_markdown_folder",
    "load_markdown_path",
    "load_medquad",
    "load_medquad_questions",
    "load_pubmedqa",
    "load_pubmedqa_questions",
    "load_rule_qa",
    "load_tatqa",
    "load_tatqa_questions",
]


def documents_from_jsonl(text: str, where: str = "input") -> list[Document]:
    """Documents from JSONL text, one per non-blank line; a bad line rejects the whole text.

    Raises:
        InvalidInputError: Naming ``where``, the line and the bad field.
    """
    return [Document.parse(obj, f"{where} line {n}") for n, obj in parse_jsonl(text, where)]


def load_documents_jsonl(path: str | Path) -> list[Document]:
    """Documents from a JSONL file (``.jsonl`` or gzip ``.jsonl.gz``), one Document per line.

    Raises:
        InvalidInputError: Naming the file, the line and the bad field.
    """
    path = Path(path)
    return documents_from_jsonl(read_text(path), where=str(path))


def load_markdown_path(path: str | Path) -> list[Document]:
    """A Markdown/text file or a folder of them."""
    path = Path(path)
    return load_markdown_folder(path) if path.is_dir() else load_markdown_file(path)


@dataclass(frozen=True)
class Format:
    """One input format: how to recognise its paths and how to load them."""

    name: str
    description: str
    matches: Callable[[Path], bool]
    load: Callable[[Path], list[Document]]


def _name(path: Path) -> str:
    return path.name.lower()


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "law-editions",
            "folder with versions.jsonl and dated Markdown editions of laws (bundestag/gesetze)",
            lambda p: p.is_dir() and (p / "versions.jsonl").is_file(),
            load_law_editions,
        ),
        Format("gdpr", "GDPRtEXT gdpr.json", lambda p: _name(p) == "gdpr.json", load_gdpr),
        Format("pubmedqa", "PubMedQA ori_pqal.json", lambda p: _name(p) == "ori_pqal.json", load_pubmedqa),
        Format(
            "tatqa",
            "TAT-QA tatqa_dataset_*.json",
            lambda p: _name(p).startswith("tatqa") and _name(p).endswith(".json"),
            load_tatqa,
        ),
        Format(
            "medquad",
            "MedQuAD medquad_*.jsonl",
            lambda p: _name(p).startswith("medquad") and _name(p).endswith(".jsonl"),
            load_medquad,
        ),
        Format(
            "jsonl",
            "JSON lines of Documents (.jsonl, .jsonl.gz)",
            lambda p: p.is_file() and _name(p).endswith((".jsonl", ".jsonl.gz")),
            load_documents_jsonl,
        ),
        Format(
            "markdown",
            f"a folder of Markdown/text files, or one {'/'.join(TEXT_SUFFIXES)} file",
            lambda p: p.is_dir() or (p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
            load_markdown_path,
        ),
    )
}


def detect_format(path: str | Path) -> str:
    """Name of the first format in ``FORMATS`` that recognises ``path``.

    Raises:
        InvalidInputError: ``path`` does not exist, or no format recognises it (the message
            lists the formats there are).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder")
    for fmt in FORMATS.values():
        if fmt.matches(path):
            return fmt.name
    known = "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())
    raise InvalidInputError(f"{path}: unknown document format (known formats: {known})")


def detect_and_load(path: str | Path, format: str | None = None) -> list[Document]:
    """Load documents from ``path`` in the given or detected format.

    Args:
        path: A data file or folder.
        format: A name in ``FORMATS`` to skip detection.

    Raises:
        InvalidInputError: Unknown path or format, or a malformed file (naming path and spot).
    """
    path = Path(path)
    name = format or detect_format(path)
    if name not in FORMATS:
        raise InvalidInputError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder")
    return FORMATS[name].load(path)
