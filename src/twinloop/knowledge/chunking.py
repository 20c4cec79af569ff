"""Split one document into overlapping word windows.

Only one document is ever split at a time, so a chunk never spans two articles: the parsers
make one document per citable unit (article paragraph, abstract, report section). Chunks are
slices of the original text, whitespace and punctuation kept, so a quote taken from a chunk
appears verbatim in the document.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\S+")


def chunk_text(text: str, words: int, overlap: int) -> list[str]:
    """Windows of ``words`` words, each sharing ``overlap`` words with the previous one.

    A text of at most ``words`` words is one chunk. The last window is aligned to the end of
    the text rather than left short, so no chunk is a tiny tail.

    Raises:
        ValueError: ``overlap`` is not smaller than ``words``.
    """
    if not 0 <= overlap < words:
        raise ValueError(f"overlap ({overlap}) must be >= 0 and smaller than words ({words})")
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return []
    if len(spans) <= words:
        return [text[spans[0][0] : spans[-1][1]]]
    step = words - overlap
    starts = list(range(0, len(spans) - words + 1, step))
    if starts[-1] + words < len(spans):
        starts.append(len(spans) - words)
    return [text[spans[s][0] : spans[s + words - 1][1]] for s in starts]
