"""The audit log: append-only, hash-chained, tamper-evident, exportable (docs/DESIGN.md "State")."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.release.events import GENESIS, EventStore, event_hash


@pytest.fixture
def store(tmp_path) -> EventStore:
    return EventStore(Database(tmp_path / "t.db"))


def fill(store: EventStore, n: int = 5) -> None:
    for i in range(n):
        store.append("swap", actor="cli:ops", reason=f"move {i}", subject=f"rel_{i}", data={"i": i, "ok": True})


def raw(store: EventStore) -> sqlite3.Connection:
    """A plain connection with the append-only triggers dropped: what an editor of the file can do."""
    conn = sqlite3.connect(store.db.path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")
    return conn


def test_append_and_verify(store):
    fill(store)
    report = store.verify()
    assert report.ok and report.events == 5 and report.head_seq == 5 and report.first_bad_seq is None
    assert [e.seq for e in store.list()] == [5, 4, 3, 2, 1]
    assert store.list(action="swap", subject="rel_2")[0].data == {"i": 2, "ok": True}


def test_empty_log_verifies(store):
    report = store.verify()
    assert report.ok and report.events == 0 and report.head_seq is None


def test_events_chain_to_their_predecessor(store):
    fill(store, 3)
    events = list(store.iter_all())
    assert events[0].prev_hash == GENESIS
    for before, after in zip(events, events[1:]):
        assert after.prev_hash == before.hash
    for e in events:
        assert e.hash == event_hash(e.seq, e.at, e.action, e.actor, e.subject, e.reason,
                                    json.dumps(e.data, sort_keys=True, separators=(",", ":")), e.prev_hash)


def test_unknown_action_refused(store):
    with pytest.raises(InvalidInputError, match="unknown event action 'swapp'"):
        store.append("swapp", actor="cli:ops")
    assert store.count() == 0


@pytest.mark.parametrize("sql, message", [
    ("UPDATE events SET reason='edited' WHERE seq=2", "cannot be changed"),
    ("DELETE FROM events WHERE seq=2", "cannot be deleted"),
    ("DELETE FROM events", "cannot be deleted"),
])
def test_triggers_make_the_table_append_only(store, sql, message):
    fill(store, 3)
    with pytest.raises(sqlite3.DatabaseError, match=f"append-only: events {message}"):
        store.db.conn.execute(sql)
    assert store.count() == 3 and store.verify().ok


def _edit_reason(conn):
    conn.execute("UPDATE events SET reason='nothing to see' WHERE seq=3")


def _delete_middle(conn):
    conn.execute("DELETE FROM events WHERE seq=3")


def _delete_last(conn):
    conn.execute("DELETE FROM events WHERE seq=5")


def _edit_data(conn):
    conn.execute("""UPDATE events SET data='{"i":2,"ok":false}' WHERE seq=3""")


def _edit_and_rehash(conn):
    # A careful forger recomputes the edited event's own hash: its successor still names the old one.
    row = conn.execute("SELECT * FROM events WHERE seq=3").fetchone()
    seq, at, action, actor, subject, _reason, data, prev, _hash = row
    new = event_hash(seq, at, action, actor, subject, "forged", data, prev)
    conn.execute("UPDATE events SET reason='forged', hash=? WHERE seq=3", (new,))


@pytest.mark.parametrize("tamper, first_bad, words", [
    (_edit_reason, 3, "was edited"),
    (_delete_middle, 3, "missing"),
    (_delete_last, 5, "removed from the end"),
    (_edit_data, 3, "was edited"),
    (_edit_and_rehash, 4, "chain broken"),
], ids=["edit-reason", "delete-middle", "delete-last", "edit-data", "edit-and-rehash"])
def test_tampering_is_detected(store, tamper, first_bad, words):
    fill(store, 5)
    conn = raw(store)
    tamper(conn)
    conn.close()
    report = store.verify()
    assert not report.ok
    assert report.first_bad_seq == first_bad
    assert any(words in p for p in report.problems), report.problems


def test_event_of_a_rolled_back_transaction_disappears(store):
    db = store.db
    db.conn.execute("CREATE TABLE things(x INTEGER)")
    fill(store, 2)
    with pytest.raises(RuntimeError, match="crash"):
        with db.transaction() as conn:
            conn.execute("INSERT INTO things VALUES (1)")
            store.append("swap", actor="cli:ops", subject="rel_x", conn=conn)
            raise RuntimeError("crash")
    assert db.conn.execute("SELECT COUNT(*) FROM things").fetchone()[0] == 0
    assert store.count() == 2 and store.verify().ok
    assert store.append("rollback", actor="cli:ops").seq == 3  # the head was rolled back too


def test_concurrent_appends_from_threads(store):
    def worker(name):
        for i in range(40):
            store.append("swap", actor=f"system:{name}", data={"i": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = store.verify()
    assert report.ok and report.events == 80
    seqs = [e.seq for e in store.iter_all()]
    assert seqs == list(range(1, 81))


def test_concurrent_appends_from_processes(tmp_path):
    path = tmp_path / "shared.db"
    store = EventStore(Database(path))  # schema and triggers exist before the writers start
    script = textwrap.dedent(f"""
        import sys
        from twinloop.kernel.db import Database
        from twinloop.release.events import EventStore
        store = EventStore(Database({str(path)!r}))
        for i in range(40):
            store.append("swap", actor="system:" + sys.argv[1], data={{"i": i}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("p1", "p2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    report = store.verify()
    assert report.ok and report.events == 80 and report.head_seq == 80
    events = list(store.iter_all())
    assert [e.seq for e in events] == list(range(1, 81))
    assert {e.actor for e in events} == {"system:p1", "system:p2"}


def test_export_jsonl_lines_rehash(store):
    store.append("config.loaded", actor="system", reason="démarrage ✓",
                 data={"b": [1, 2.5, None], "a": {"z": "ü", "y": 1e-7}, "big": 2 ** 60})
    fill(store, 3)
    out = io.StringIO()
    assert store.export_jsonl(out) == 4
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    prev = GENESIS
    for line in lines:
        e = json.loads(line)
        assert set(e) == {"seq", "at", "action", "actor", "subject", "reason", "data", "prev_hash", "hash"}
        # The stored form of data: the canonical JSON events.py writes.
        data = json.dumps(e["data"], sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        assert event_hash(e["seq"], e["at"], e["action"], e["actor"], e["subject"], e["reason"], data,
                          e["prev_hash"]) == e["hash"]
        assert e["prev_hash"] == prev
        prev = e["hash"]
    tail = io.StringIO()
    assert store.export_jsonl(tail, since_seq=3) == 1
    assert json.loads(tail.getvalue())["seq"] == 4
