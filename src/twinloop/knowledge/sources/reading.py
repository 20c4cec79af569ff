"""Reading data files so that a malformed one fails with its path and the bad spot named.

Every loader in this package goes through these helpers, so a user who points ``ingest`` at
the wrong file sees ``InvalidInputError: data/x.json: not valid JSON (line 3)`` instead of a
``KeyError`` traceback from deep inside a loader.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinloop.kernel.errors import InvalidInputError


def read_text(path: Path) -> str:
    """The file's text as UTF-8; ``.gz`` files are decompressed.

    Raises:
        InvalidInputError: The file is missing, unreadable or not UTF-8.
    """
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except FileNotFoundError as e:
        raise InvalidInputError(f"{path}: no such file") from e
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InvalidInputError(f"{path}: cannot read ({e})") from e
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {e.start})") from e


def read_json(path: Path) -> Any:
    """Parse a whole JSON file.

    Raises:
        InvalidInputError: Naming the path and the line of the syntax error.
    """
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file of objects; blank lines are ignored.

    Raises:
        InvalidInputError: Naming the path and the line that is not a JSON object.
    """
    return [obj for _n, obj in parse_jsonl(read_text(path), str(path))]


def parse_jsonl(text: str, where: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of JSON-lines text.

    Raises:
        InvalidInputError: Naming ``where`` and the line that is not a JSON object.
    """
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"{where} line {n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{where} line {n}: expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


def field(obj: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``obj[key]``, checked to be of ``kind``.

    Raises:
        InvalidInputError: ``obj`` is not a mapping, lacks ``key``, or holds another type there.
    """
    if not isinstance(obj, Mapping):
        raise InvalidInputError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise InvalidInputError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise InvalidInputError(f"{where}: {key} = {shown}: expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
