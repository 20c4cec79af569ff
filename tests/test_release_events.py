"""The audit log: append-only, hash- and MAC-chained, checkpointed outside the database,
tamper-evident, exportable (docs/DESIGN.md "State")."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from twinloop.kernel.db import Database
from twinloop.kernel.errors import ConfigError, IntegrityError, InvalidInputError
from twinloop.release.audit_key import load_key
from twinloop.release.events import GENESIS, EventStore, event_hash


@pytest.fixture
def keyfile(tmp_path, monkeypatch):
    """The audit key in its own folder, outside the data directory."""
    path = tmp_path / "keyring" / "audit.key"
    monkeypatch.setenv("TWINLOOP_AUDIT_KEY_FILE", str(path))
    return path


@pytest.fixture
def store(tmp_path, keyfile) -> EventStore:
    return EventStore(Database(tmp_path / "data" / "t.db"))


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
    ("INSERT OR REPLACE INTO events SELECT * FROM events WHERE seq=2", "cannot be replaced"),
    (("REPLACE INTO events SELECT seq, at, action, actor, subject, 'x', data, prev_hash, hash, mac FROM events"
      " WHERE seq=3"), "cannot be replaced"),
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
    seq, at, action, actor, subject, _reason, data, prev, _hash, _mac = row
    new = event_hash(seq, at, action, actor, subject, "forged", data, prev)
    conn.execute("UPDATE events SET reason='forged', hash=? WHERE seq=3", (new,))


@pytest.mark.parametrize("tamper, first_bad, words", [
    (_edit_reason, 3, "was edited"),
    (_delete_middle, 3, "missing"),
    (_delete_last, 5, "removed from the end"),
    (_edit_data, 3, "was edited"),
    (_edit_and_rehash, 3, "chain broken"),  # and event 3 fails its MAC
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


def test_concurrent_appends_from_processes(tmp_path, keyfile):
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
    assert report.checkpoint["seq"] == 80 and not report.warnings, "the checkpoint never stepped back"
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
        assert set(e) == {"seq", "at", "action", "actor", "subject", "reason", "data", "prev_hash", "hash", "mac"}
        # The stored form of data: the canonical JSON events.py writes.
        data = json.dumps(e["data"], sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        assert event_hash(e["seq"], e["at"], e["action"], e["actor"], e["subject"], e["reason"], data,
                          e["prev_hash"]) == e["hash"]
        assert e["prev_hash"] == prev
        prev = e["hash"]
    tail = io.StringIO()
    assert store.export_jsonl(tail, since_seq=3) == 1
    assert json.loads(tail.getvalue())["seq"] == 4


# -- forgeries by someone with the database file but not the key (docs/DESIGN.md "State") ------

def _sha_hash(row: dict, reason: str | None = None, prev: str | None = None) -> str:
    return event_hash(row["seq"], row["at"], row["action"], row["actor"], row["subject"],
                      row["reason"] if reason is None else reason, row["data"],
                      row["prev_hash"] if prev is None else prev)


def _rows(conn) -> list[dict]:
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY seq")]


def _put(conn, row: dict) -> None:
    conn.execute("INSERT OR REPLACE INTO events(seq, at, action, actor, subject, reason, data, prev_hash, hash, mac)"
                 " VALUES (:seq, :at, :action, :actor, :subject, :reason, :data, :prev_hash, :hash, :mac)", row)


def _move_head(conn, row: dict | None) -> None:
    if row is None:
        conn.execute("DELETE FROM event_head")
    else:
        conn.execute("INSERT OR REPLACE INTO event_head(id, seq, hash) VALUES (1, ?, ?)", (row["seq"], row["hash"]))


def _rebuild_events(conn, keep_upto: int) -> None:
    """Cut the table without a DELETE: copy, drop, recreate with the same schema and triggers."""
    ddl = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name='events' AND sql IS NOT NULL"
                                      " ORDER BY type='trigger'")]
    conn.execute("CREATE TABLE keep AS SELECT * FROM events WHERE seq <= ?", (keep_upto,))
    conn.execute("DROP TABLE events")
    for stmt in ddl:
        conn.execute(stmt)
    conn.execute("INSERT INTO events SELECT * FROM keep")
    conn.execute("DROP TABLE keep")


def forge_replace_row(conn):
    # INSERT OR REPLACE skips UPDATE/DELETE triggers; the forger drops only the trigger that
    # refuses it (see test_triggers_make_the_table_append_only), and recomputes the row's hash.
    conn.execute("DROP TRIGGER events_no_replace")
    row = _rows(conn)[2]
    _put(conn, dict(row, reason="forged", hash=_sha_hash(row, reason="forged")))


def forge_rewrite_and_rehash(conn):
    # Rewrite event 3, recompute every later hash and the head: the SHA-256 chain is perfect.
    conn.execute("DROP TRIGGER events_no_replace")
    prev = None
    for row in _rows(conn)[2:]:
        new = dict(row, reason="forged" if row["seq"] == 3 else row["reason"], prev_hash=prev or row["prev_hash"])
        new["hash"] = _sha_hash(new)
        _put(conn, new)
        prev = new["hash"]
    _move_head(conn, new)


def forge_truncate(conn):
    rows = _rows(conn)
    _rebuild_events(conn, 3)
    _move_head(conn, rows[2])


def forge_append_approval(conn):
    last = _rows(conn)[-1]
    new = dict(last, seq=6, action="release.approved", actor="cli:boss", subject="rel_evil", reason="lgtm",
               data="{}", prev_hash=last["hash"], mac=last["mac"])
    new["hash"] = _sha_hash(new)
    _put(conn, new)
    _move_head(conn, new)


def forge_append_without_mac(conn):
    last = _rows(conn)[-1]
    new = dict(last, seq=6, action="release.approved", prev_hash=last["hash"], mac=None)
    new["hash"] = _sha_hash(new)
    _put(conn, new)
    _move_head(conn, new)


def forge_empty_keep_meta(conn):
    _rebuild_events(conn, 0)
    _move_head(conn, None)


def forge_drop_everything(conn):
    for table in ("events", "event_head", "audit_meta"):
        conn.execute(f"DROP TABLE {table}")


@pytest.mark.parametrize("forge, first_bad, words", [
    (forge_replace_row, 3, "event 3 (swap) fails its MAC"),
    (forge_rewrite_and_rehash, 3, "event 3 (swap) fails its MAC"),
    (forge_truncate, 4, "events 4..5 are missing from the end"),
    (forge_append_approval, 6, "event 6 (release.approved) fails its MAC"),
    (forge_append_without_mac, 6, "event 6 (release.approved) has no MAC"),
    (forge_empty_keep_meta, 1, "events 1..5 are missing from the end"),
    (forge_drop_everything, 1, "the log was emptied or replaced"),
], ids=["insert-or-replace", "rewrite-and-rehash", "truncate", "append-approval", "append-no-mac",
        "empty-log", "drop-everything"])
def test_forgeries_without_the_key_are_detected(tmp_path, keyfile, forge, first_bad, words):
    path = tmp_path / "data" / "t.db"
    fill(EventStore(Database(path)), 5)
    conn = sqlite3.connect(path, isolation_level=None)  # UPDATE/DELETE triggers stay in place
    forge(conn)
    conn.close()
    restarted = EventStore(Database(path))
    report = restarted.verify()
    assert not report.ok, report
    assert report.first_bad_seq == first_bad, report.problems
    assert any(words in p for p in report.problems), report.problems
    if forge is forge_truncate:
        assert report.missing_tail == [4, 5]


def test_forgeries_verify_with_the_sha_chain_alone(tmp_path, keyfile):
    """The forgeries above are the ones a plain hash chain accepts: only the MAC and checkpoint see them."""
    path = tmp_path / "data" / "t.db"
    fill(EventStore(Database(path)), 5)
    conn = sqlite3.connect(path, isolation_level=None)
    forge_rewrite_and_rehash(conn)
    report = EventStore(Database(path)).verify()
    assert not any("hash" in p or "chain broken" in p for p in report.problems), report.problems
    assert report.problems == [p for p in report.problems if "fails its MAC" in p]


def test_appends_after_a_truncation_do_not_hide_it(tmp_path, keyfile):
    path = tmp_path / "data" / "t.db"
    fill(EventStore(Database(path)), 5)
    conn = sqlite3.connect(path, isolation_level=None)
    forge_truncate(conn)
    conn.close()
    restarted = EventStore(Database(path))
    fill(restarted, 3)  # the service keeps running and MACs new events 4..6 with the real key
    report = restarted.verify()
    assert not report.ok and report.first_bad_seq == 5
    assert any("event 5 is not the event the checkpoint" in p for p in report.problems), report.problems


def test_untouched_log_verifies_against_its_checkpoint(store):
    fill(store, 5)
    report = store.verify()
    assert report.ok and not report.warnings and not report.unknown_key
    assert report.checkpoint["seq"] == 5 and report.checkpoint["count"] == 5
    assert report.key_fingerprint == report.log_key_fingerprint == store.key.fingerprint
    assert all(e.mac for e in store.iter_all())


def test_wrong_key_is_reported_and_refused(tmp_path, monkeypatch, store):
    fill(store, 3)
    other = tmp_path / "elsewhere" / "audit.key"
    monkeypatch.setenv("TWINLOOP_AUDIT_KEY_FILE", str(other))
    wrong = EventStore(Database(store.db.path))
    report = wrong.verify()
    assert not report.ok and report.unknown_key
    assert report.log_key_fingerprint == store.key.fingerprint != report.key_fingerprint
    assert any(p.startswith("unknown key") and str(other) in p for p in report.problems), report.problems
    with pytest.raises(IntegrityError, match=f"written under key {store.key.fingerprint}.*{wrong.key.fingerprint}"):
        wrong.append("swap", actor="cli:ops")
    assert store.count() == 3


def test_shared_checkpoint_dir_with_a_wrong_key(tmp_path, monkeypatch, store):
    monkeypatch.setenv("TWINLOOP_AUDIT_CHECKPOINT_DIR", str(tmp_path / "cps"))
    store = EventStore(Database(store.db.path))
    fill(store, 2)
    monkeypatch.setenv("TWINLOOP_AUDIT_KEY_FILE", str(tmp_path / "elsewhere" / "audit.key"))
    report = EventStore(Database(store.db.path)).verify()
    assert report.unknown_key and any("was signed with key" in p for p in report.problems), report.problems


def test_fresh_install_without_checkpoint_dir(tmp_path, monkeypatch, keyfile):
    cps = tmp_path / "no" / "such" / "dir"
    monkeypatch.setenv("TWINLOOP_AUDIT_CHECKPOINT_DIR", str(cps))
    store = EventStore(Database(tmp_path / "data" / "t.db"))
    report = store.verify()
    assert report.ok and report.events == 0 and not report.warnings and report.checkpoint is None
    assert not cps.exists()
    store.append("config.loaded", actor="system")
    assert store.checkpoints.path.parent == cps and store.checkpoints.path.exists()
    assert store.verify().checkpoint["seq"] == 1


def test_missing_checkpoint_on_a_filled_log_is_a_warning_then_written(store):
    fill(store, 2)
    store.checkpoints.path.unlink()
    report = store.verify()
    assert report.ok and len(report.warnings) == 1 and "no checkpoint" in report.warnings[0]
    assert store.checkpoints.path.exists()
    assert not store.verify().warnings


def test_edited_checkpoint_is_reported(store):
    fill(store, 3)
    doc = json.loads(store.checkpoints.path.read_text())
    store.checkpoints.path.write_text(json.dumps(dict(doc, seq=2, count=2)))
    report = store.verify()
    assert not report.ok and any("bad signature" in p for p in report.problems), report.problems


def test_event_in_a_callers_transaction_is_checkpointed_once_committed(store):
    fill(store, 2)
    with store.db.transaction() as conn:
        store.append("swap", actor="cli:ops", conn=conn)
    assert json.loads(store.checkpoints.path.read_text())["seq"] == 2, "not before the commit is known"
    assert store.verify().ok
    assert json.loads(store.checkpoints.path.read_text())["seq"] == 3


def test_key_lives_outside_the_data_dir_and_only_its_fingerprint_inside(store, keyfile):
    fill(store, 1)
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyfile.parent.stat().st_mode) == 0o700
    secret = keyfile.read_text().strip()
    for f in store.db.path.parent.iterdir():
        assert secret.encode() not in f.read_bytes()
    fp = store.db.conn.execute("SELECT key_fingerprint FROM audit_meta").fetchone()[0]
    assert fp == load_key(keyfile).fingerprint and len(fp) == 16
    assert store.checkpoints.path.parent == keyfile.parent / "checkpoints"


def test_default_key_is_per_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    key = load_key()
    assert key.path == tmp_path / "cfg" / "twinloop" / "audit.key"
    assert load_key().secret == key.secret, "created once, then reused"


@pytest.mark.parametrize("content, mode, words", [
    ("ab" * 32, 0o620, "must not be writable by group or others"),
    ("abcd", 0o600, "at least 32 hex-encoded bytes"),
    ("not hex at all" * 8, 0o600, "at least 32 hex-encoded bytes"),
])
def test_bad_key_files_refused(tmp_path, content, mode, words):
    path = tmp_path / "audit.key"
    path.write_text(content)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=f"audit key file {path}.*{words}"):
        load_key(path)


def test_log_from_before_macs_is_sealed(tmp_path, keyfile):
    """A log written by the hash-only version gets MACed as it stands (trust on first use)."""
    path = tmp_path / "data" / "old.db"
    path.parent.mkdir()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE events(seq INTEGER PRIMARY KEY, at TEXT NOT NULL, action TEXT NOT NULL, "
                 "actor TEXT NOT NULL, subject TEXT, reason TEXT NOT NULL, data TEXT NOT NULL, "
                 "prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
    conn.execute("CREATE TABLE event_head(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
                 "hash TEXT NOT NULL)")
    prev = GENESIS
    for seq in (1, 2, 3):
        row = {"seq": seq, "at": f"2024-01-0{seq}T00:00:00Z", "action": "swap", "actor": "cli:ops",
               "subject": None, "reason": "old", "data": "{}", "prev_hash": prev}
        row["hash"] = _sha_hash(row)
        conn.execute("INSERT INTO events VALUES (:seq,:at,:action,:actor,:subject,:reason,:data,:prev_hash,:hash)",
                     row)
        prev = row["hash"]
    conn.execute("INSERT INTO event_head VALUES (1, 3, ?)", (prev,))
    conn.close()
    store = EventStore(Database(path))
    fill(store, 2)
    report = store.verify()
    assert report.ok and report.events == 5, report.problems
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_replace")
    rows = _rows(conn)
    prev = None
    for row in rows[1:]:  # rewrite legacy event 2 and rehash everything after it
        new = dict(row, reason="forged" if row["seq"] == 2 else row["reason"], prev_hash=prev or row["prev_hash"])
        new["hash"] = _sha_hash(new)
        _put(conn, new)
        prev = new["hash"]
    _move_head(conn, new)
    conn.close()
    report = EventStore(Database(path)).verify()
    assert not report.ok and any("changed after they were sealed" in p for p in report.problems), report.problems


def test_a_retired_checkpoint_lets_a_new_log_start_at_the_same_path(tmp_path):
    """The operator's tooling (the demo's fresh folder) retires the old log's checkpoint;
    the new log at that path then verifies instead of reading as the old one emptied."""
    from twinloop.kernel.db import Database
    from twinloop.release.audit_checkpoint import retire
    from twinloop.release.events import EventStore

    path = tmp_path / "twinloop.db"
    first = EventStore(Database(path))
    first.append("config.loaded", actor="test", reason="first run")
    first.db.close()
    path.unlink()
    assert retire(path) is True and retire(path) is False
    second = EventStore(Database(path))
    second.append("config.loaded", actor="test", reason="second run")
    assert second.verify().ok
