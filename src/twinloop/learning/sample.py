"""The training sample: one prompt/target pair on its way from intake to a replay buffer.

Every filter stage (paper §4.6) takes a :class:`Sample` and returns a new one,
so a redacted copy never aliases the original and a stage cannot change what another saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from twinloop.kernel.text import normalise_text

SOURCES = ("feedback", "correction", "document", "augmentation")
"""Where samples come from: a rated answer, a user's correction, an ingested document, or a
paraphrase generated from a correction. Schema accepts only these unless told
otherwise."""

_FIELD_SEP = "\x00"
# Not whitespace (normalise_text would collapse \x1f and friends), so ("a b", "c") and
# ("a", "b c") hash differently.


@dataclass(frozen=True)
class Sample:
    """One training pair for one domain's adapter.

    Attributes:
        domain: The domain whose adapter learns from it (a name in the DomainRegistry).
        prompt: The question, as the user asked it.
        target: What the model should answer.
        source: One of :data:`SOURCES`.
        request_id: The logged request it came from, if any.
        score: The user's rating in [-1, 1], if any.
        meta: Free JSON-serialisable extras (feedback id, release id, redaction counts).
    """

    domain: str
    prompt: str
    target: str
    source: str = "feedback"
    request_id: str | None = None
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def text_for_hash(self) -> str:
        """The canonical text duplicates are detected on: normalised prompt and target.

        Uses the same normalisation as document dedup (NFKC, case-folded, whitespace
        collapsed), so a re-formatted copy of a correction counts as the same sample.
        """
        return normalise_text(self.prompt) + _FIELD_SEP + normalise_text(self.target)

    def sha256(self) -> str:
        """SHA-256 hex digest of :meth:`text_for_hash` (paper §4.6, "Deduplication")."""
        return hashlib.sha256(self.text_for_hash().encode("utf-8")).hexdigest()
