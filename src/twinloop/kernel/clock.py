"""One clock for every stored time stamp: UTC, ISO 8601, millisecond precision.

Stored strings sort in time order and compare across tables (requests, feedback, releases,
events), which needs one format everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def now_iso() -> str:
    """The current time as stored: ``2026-11-29T04:03:00.123+00:00``."""
    return utc_now().isoformat(timespec="milliseconds")
