"""Text normalisation shared by document dedup, sample dedup, toxicity and QA judging."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The form duplicates are detected on: NFKC, case-folded, whitespace collapsed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()
