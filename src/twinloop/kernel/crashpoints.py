"""Named crash points for crash-consistency tests: a SIGKILL at any step of the release flow
must leave a consistent registry (docs/DESIGN.md "State").

A test starts a real ``twinloop`` process with ``TWINLOOP_CRASH_AT=<name>``; when that
process reaches the point of that name it kills itself with SIGKILL — no cleanup, no
``finally``, no flush, exactly what a power cut or the OOM killer does at that instant. The
same technique as the crash tests of databases (SQLite's and FoundationDB's fault injection).
Unset, a crash point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TWINLOOP_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if ``TWINLOOP_CRASH_AT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
