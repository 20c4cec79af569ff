"""Markdown and plain-text files as citable documents (``twinloop ingest FOLDER``).

The structure most legal and policy texts share is used when it is there:

- an ATX heading (``### Art 21``, ``#### § 4 Videoüberwachung``, ``## Scope``) starts a
  section; ``Art N``/``Article N``/``§ N`` headings give ``article``, the rest of the heading
  the ``title``; headings with no text under them (``## Teil 1``) only group;
- a block that opens with ``(1)``, ``(2)``, ``(3a)`` ... starts a paragraph, which becomes its
  own document with ``part`` set, so "Art. 21(3)" is one citable unit;
- a file with no headings is one document; only a huge one is cut at blank lines.

Hard-wrapped lines are joined (the bundestag/gesetze files wrap at 70 columns), so two
editions of a text compare equal when only their wrapping differs.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.document import MAX_DOCUMENT_CHARS, Document
from twinloop.knowledge.sources.reading import read_text

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
"""Files ``load_markdown_folder`` reads; anything else in the folder is skipped (and logged)."""

HUGE_FILE_CHARS = 50_000
"""An unstructured file longer than this is cut at blank lines into numbered parts: a citation
to a 50-page file without headings would not help a reader find the passage."""

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_ARTICLE = re.compile(r"^(?:Art\.?|Artikel|Article)\s*(\d+[a-z]*)\b\.?\s*(.*)$", re.IGNORECASE)
_SECTION_SIGN = re.compile(r"^§§?\s*(\d+[a-z]*)\b\.?\s*(.*)$")
_PARAGRAPH = re.compile(r"^\((\d{1,3}[a-z]?)\)\s+(\S.*)$", re.DOTALL)
_LIST_ITEM = re.compile(r"^([-*+]|\d{1,3}[.)]|[a-z]{1,2}\))\s")
_WS = re.compile(r"[ \t\u00a0]+")
_WORD = re.compile(r"\w")
_SPLIT_WORD = re.compile(r"[^\W\d_]-$")
_CONJUNCTIONS = {"und", "oder", "bis", "sowie", "bzw.", "and", "or", "to"}


@dataclass
class Section:
    """Text under one heading (or before the first heading, where ``heading`` is None)."""

    heading: str | None
    level: int
    parent: str | None
    blocks: list[str] = field(default_factory=list)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Separate a leading YAML front matter block (``---`` ... ``---``) from the body.

    A leading ``---`` that is not followed by a YAML mapping is treated as body text (it may
    be a horizontal rule), so a plain file never fails here.
    """
    if not text.startswith("---"):
        return {}, text
    lines = text.splitlines()
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            try:
                meta = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError:
                return {}, text
            if isinstance(meta, dict):
                return meta, "\n".join(lines[end + 1 :])
            return {}, text
    return {}, text


def parse_sections(body: str) -> list[Section]:
    """Split Markdown into sections at ATX headings, ignoring ``#`` lines inside code fences."""
    sections = [Section(heading=None, level=0, parent=None)]
    stack: list[tuple[int, str]] = []  # open headings, outermost first, to name each parent
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        sections[-1].blocks.extend(_blocks(lines))
        lines.clear()

    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m and m.group(2):
            flush()
            level, heading = len(m.group(1)), _WS.sub(" ", m.group(2)).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            sections.append(Section(heading=heading, level=level, parent=stack[-1][1] if stack else None))
            stack.append((level, heading))
        else:
            lines.append(line)
    flush()
    return [s for s in sections if s.heading is not None or s.blocks]


def _blocks(lines: list[str]) -> list[str]:
    """Blank-line separated blocks; wrapped lines joined, code fences kept verbatim."""
    blocks: list[str] = []
    current: list[str] = []
    fence: list[str] | None = None
    for line in [*lines, ""]:
        if fence is not None:
            fence.append(line)
            if _FENCE.match(line):
                blocks.append("\n".join(fence))
                fence = None
            continue
        if _FENCE.match(line):
            if current:
                blocks.append(_join_wrapped(current))
                current = []
            fence = [line]
        elif line.strip():
            current.append(line)
        elif current:
            blocks.append(_join_wrapped(current))
            current = []
    if fence:  # an unclosed fence keeps its text rather than dropping it
        blocks.append("\n".join(fence))
    return [b for b in blocks if b.strip()]


def _join_wrapped(lines: list[str]) -> str:
    out: list[str] = []
    for raw in lines:
        line = _WS.sub(" ", raw).strip()
        if out and not _LIST_ITEM.match(line):
            out[-1] += line if _continues_word(out[-1], line) else " " + line
        else:
            out.append(line)
    return "\n".join(out)


def _continues_word(previous: str, line: str) -> bool:
    """True for "optisch-" + "elektronischen": one word wrapped after its own hyphen.

    "Bundes-" + "und Landesrecht" is an elided compound and keeps its space.
    """
    first = line.split(" ", 1)[0]
    return bool(_SPLIT_WORD.search(previous)) and first[:1].islower() and first not in _CONJUNCTIONS


def heading_citation(heading: str, parent: str | None) -> tuple[str | None, str, str]:
    """``(article, title, fragment)`` for a heading.

    ``"Art 21"`` → ``("21", "Art 21 (<parent>)", "art-21")``;
    ``"§ 4 Videoüberwachung"`` → ``("§ 4", "Videoüberwachung", "par-4")``;
    any other heading → ``(None, heading, <slug>)``.
    """
    if m := _ARTICLE.match(heading):
        number, rest, frag = m.group(1), m.group(2), f"art-{m.group(1)}"
        article = number
    elif m := _SECTION_SIGN.match(heading):
        number, rest, frag = m.group(1), m.group(2), f"par-{m.group(1)}"
        article = f"§ {number}"
    else:
        return None, heading, slug(heading)
    if rest:
        title = rest
    else:
        # GG headings carry no name ("### Art 21"); the enclosing part ("II. - Der Bund und
        # die Länder") is the only human-readable context there is.
        title = f"{heading} ({parent})" if parent else heading
    return article, title, frag.lower()


def slug(text: str) -> str:
    """ASCII fragment for a heading: ``"Präambel"`` → ``"praambel"``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "section"


def split_paragraphs(blocks: list[str]) -> list[tuple[str | None, str]]:
    """Group blocks into numbered paragraphs: ``[(part, text), ...]``.

    A block opening with ``(N)`` starts paragraph N (the marker itself is dropped: ``part``
    carries it). Blocks before the first marker are an introduction and go with the first
    paragraph; a repeated number is a quotation, not a new paragraph, and stays with the
    current one. Without any marker the result is one unnumbered unit ``[(None, text)]``.
    """
    parts: list[tuple[str | None, list[str]]] = []
    intro: list[str] = []
    seen: set[str] = set()
    for block in blocks:
        m = _PARAGRAPH.match(block)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            parts.append((m.group(1), [*intro, m.group(2)]))
            intro = []
        elif parts:
            parts[-1][1].append(block)
        else:
            intro.append(block)
    if not parts:
        return [(None, "\n".join(intro))] if intro else []
    return [(part, "\n".join(texts)) for part, texts in parts]


def pack_blocks(blocks: list[str], limit: int) -> list[str]:
    """Join blocks greedily into texts of at most ``limit`` characters (a longer block is cut)."""
    out: list[str] = []
    current = ""
    for block in blocks:
        while len(block) > limit:
            cut = block.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            if current:
                out.append(current)
                current = ""
            out.append(block[:cut])
            block = block[cut:].lstrip()
        if current and len(current) + 1 + len(block) > limit:
            out.append(current)
            current = ""
        current = f"{current}\n{block}" if current else block
    if current:
        out.append(current)
    return out


def documents_from_markdown(
    text: str,
    *,
    uri: str,
    meta: Mapping[str, Any] | None = None,
    min_level: int = 0,
    where: str = "markdown",
) -> list[Document]:
    """Documents from one Markdown text.

    Args:
        text: The file's text (front matter allowed).
        uri: Base uri of the file; each document gets ``uri#<fragment>`` (e.g. ``#art-21-3``),
            unique within the file.
        meta: Citation fields shared by all documents (source, code, jurisdiction, dates);
            ``code``/``jurisdiction``/``source`` default to the front matter's ``code``
            (or ``jurabk``), ``jurisdiction`` and ``title``.
        min_level: Sections whose heading has fewer ``#`` than this are skipped; ``2`` drops
            the ``# Title`` section, whose body in a statute file is only a header table.
        where: Name used in error messages (usually the path).

    Raises:
        InvalidInputError: A numbered paragraph is longer than a document may be (an
            unnumbered section that long is cut at blank lines into parts instead).
    """
    front, body = split_front_matter(text)
    common = {
        "code": front.get("code") or front.get("jurabk"),
        "jurisdiction": front.get("jurisdiction"),
        "source": front.get("title") or front.get("Title"),
    }
    common = {k: str(v) for k, v in common.items() if v}
    common.update({k: v for k, v in (meta or {}).items() if v is not None})
    sections = [s for s in parse_sections(body) if s.heading is None or s.level >= min_level]

    if all(s.heading is None for s in sections):
        return _unstructured(sections, uri=uri, common=common, where=where)

    docs: list[Document] = []
    used: set[str] = set()
    for section in sections:
        if not section.blocks:
            continue  # a grouping heading, or an article marked "(weggefallen)" with no text
        if section.heading is None:
            article, title, frag = None, common.get("source"), "intro"
        else:
            article, title, frag = heading_citation(section.heading, section.parent)
        units = split_paragraphs(section.blocks)
        if len(units) == 1 and units[0][0] is None and len(units[0][1]) > MAX_DOCUMENT_CHARS:
            # A very long section without numbered paragraphs: numbered parts, as for a file.
            units = [(str(n), t) for n, t in enumerate(pack_blocks(section.blocks, HUGE_FILE_CHARS), start=1)]
        for part, body_text in units:
            if not _WORD.search(body_text):
                continue  # a placeholder such as "-" under "§§ 36 und 37 (weggefallen)"
            if len(body_text) > MAX_DOCUMENT_CHARS:
                label = section.heading or "text before the first heading"
                raise InvalidInputError(f"{where}: {label!r} paragraph ({part}) has {len(body_text)} characters")
            fragment = _unique(f"{frag}-{part}" if part else frag, used)
            fields = {**common, "text": body_text, "article": article, "part": part, "title": title}
            docs.append(Document.parse({**fields, "uri": f"{uri}#{fragment}"}, f"{where}#{fragment}"))
    return docs


def _unstructured(sections: list[Section], *, uri: str, common: dict[str, Any], where: str) -> list[Document]:
    blocks = [b for s in sections for b in s.blocks]
    pieces = pack_blocks(blocks, HUGE_FILE_CHARS)
    if len(pieces) == 1:
        return [Document.parse({**common, "text": pieces[0], "uri": uri}, where)]
    return [
        Document.parse({**common, "text": piece, "part": str(n), "uri": f"{uri}#part-{n}"}, f"{where} part {n}")
        for n, piece in enumerate(pieces, start=1)
    ]


def _unique(fragment: str, used: set[str]) -> str:
    candidate, n = fragment, 1
    while candidate in used:
        n += 1
        candidate = f"{fragment}~{n}"
    used.add(candidate)
    return candidate


def load_markdown_file(path: str | Path, code: str | None = None, jurisdiction: str | None = None) -> list[Document]:
    """Documents from one Markdown or text file; uris are the file's ``file://`` uri.

    Args:
        path: A ``.md``, ``.markdown`` or ``.txt`` file.
        code: ``code`` for every document (else the front matter's ``code``/``jurabk``).
        jurisdiction: ``jurisdiction`` for every document (else the front matter's).

    Raises:
        InvalidInputError: The file is unreadable or holds an over-long paragraph.
    """
    path = Path(path)
    meta = {"code": code, "jurisdiction": jurisdiction}
    docs = documents_from_markdown(read_text(path), uri=path.resolve().as_uri(), meta=meta, where=str(path))
    if not docs:
        log.info("%s: no text, no documents", path)
    return docs


def load_markdown_folder(
    folder: str | Path, code: str | None = None, jurisdiction: str | None = None
) -> list[Document]:
    """Documents from every Markdown/text file under ``folder`` (recursively, in path order).

    Hidden files and folders are skipped, as are files of other types (logged at INFO).

    Args:
        folder: The folder to read.
        code: ``code`` for every document (else each file's front matter).
        jurisdiction: ``jurisdiction`` for every document (else each file's front matter).

    Raises:
        InvalidInputError: ``folder`` is not a folder, holds no text file, or a file is unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: not a folder")
    docs: list[Document] = []
    found = False
    for path in _text_files(folder):
        found = True
        docs.extend(load_markdown_file(path, code=code, jurisdiction=jurisdiction))
    if not found:
        raise InvalidInputError(f"{folder}: no {'/'.join(TEXT_SUFFIXES)} files in it")
    return docs


def _text_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(p.startswith(".") for p in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in TEXT_SUFFIXES:
            yield path
        else:
            log.info("%s: skipped, not one of %s", path, ", ".join(TEXT_SUFFIXES))
