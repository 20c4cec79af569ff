"""Request log and feedback: stored, joined, validated; user ids never in clear."""

from __future__ import annotations

import pytest

from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.serving.requestlog import RequestLog, UnknownRequestError


@pytest.fixture
def rlog(tmp_path):
    return RequestLog(Database(tmp_path / "t.db"))


def test_feedback_joined_to_request(rlog):
    rlog.record(request_id="req_1", kind="answer", query="Q?", release_id="base", domains=["law"],
                user_id="alice@example.com", answer="A [1]", verified=True, status="verified")
    fb = rlog.add_feedback("req_1", -1, "The answer is B.", actor="op")
    rows = rlog.feedback_joined()
    assert len(rows) == 1 and rows[0]["id"] == fb.id
    assert rows[0]["query"] == "Q?" and rows[0]["correction"] == "The answer is B." and rows[0]["domains"] == ["law"]
    stored = rlog.get("req_1")
    assert stored["user_hash"] and "alice" not in stored["user_hash"]


@pytest.mark.parametrize(("score", "match"), [(2, "score = 2"), ("good", "score = 'good'"), (True, "score")])
def test_bad_score(rlog, score, match):
    rlog.record(request_id="req_1", kind="answer", query="Q", release_id="base", domains=[])
    with pytest.raises(InvalidInputError, match=match):
        rlog.add_feedback("req_1", score)


def test_unknown_request(rlog):
    with pytest.raises(UnknownRequestError, match="req_nope"):
        rlog.add_feedback("req_nope", 1.0)
    assert rlog.feedback_joined() == []
