"""The one percentile every latency rule uses: the QA gate, the canary and the rollback trigger.

Nearest rank (the smallest value with at least q % of the values at or below it), not
interpolation: the reported p95 is then a latency some request actually had, and the gate, the
canary and the trigger agree on the same samples (docs/DESIGN.md "Releasing").
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 < q ≤ 100) by nearest rank; None for no values.

    Raises:
        ValueError: ``q`` outside (0, 100].
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile q = {q!r}: must be in (0, 100]")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def p95(values: Sequence[float]) -> float | None:
    """:func:`percentile` at 95."""
    return percentile(values, 95)
