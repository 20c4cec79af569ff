"""Structured logs: one JSON object per line on stderr.

The access log carries request id, route template, status, latency, release, domain and the
caller's key hash prefix, and never request or answer text, user ids or keys: those stay in
the request log in the database (``serving/requestlog.py``), where user ids are hashed.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "twinloop.api.access"

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            # Server-side only: the client gets a request id, never this.
            out["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_json_logging(level: int = logging.INFO, stream=None) -> logging.Handler:
    """Send every log record (ours, uvicorn's, libraries') to ``stream`` as JSON lines.

    Replaces the root logger's handlers, so the CLI's rich console handler does not mix
    human text into a server's machine-read log.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # uvicorn's own access log prints raw paths and query strings; ours logs route templates.
    logging.getLogger("uvicorn.access").disabled = True
    return handler
