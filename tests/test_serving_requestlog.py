"""Request log: stored and redacted; user ids never in clear."""

from __future__ import annotations

import pytest

from twinloop.kernel.db import Database
from twinloop.serving.requestlog import RequestLog


@pytest.fixture
def rlog(tmp_path):
    return RequestLog(Database(tmp_path / "t.db"))


def test_request_recorded_with_hashed_user_and_redacted_text(rlog):
    rlog.record(request_id="req_1", kind="answer", query="Mail jane.doe@example.com: Q?", release_id="base",
                domains=["law"], user_id="alice@example.com", answer="A [1]", verified=True, status="verified")
    stored = rlog.get("req_1")
    assert stored["user_hash"] and "alice" not in stored["user_hash"]
    assert "jane.doe@example.com" not in stored["query"] and stored["domains"] == '["law"]'


def test_unknown_request_is_none(rlog):
    assert rlog.get("req_nope") is None
