"""Verification of the audit log: hash chain, MAC chain, outside checkpoint (docs/DESIGN.md "State").

Each layer catches what the one before cannot (see :mod:`twinloop.release.events`): the SHA-256
chain finds careless edits and gaps without any secret; the MAC chain finds every edit,
replacement and addition made without the key, even when the hashes were recomputed; the
checkpoint finds events cut from the end and a log emptied or swapped for another. Every
finding is one sentence naming the event (or file) it is about.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from twinloop.release.audit_checkpoint import Checkpoint

if TYPE_CHECKING:
    from twinloop.release.events import EventStore, VerifyReport


def verify_log(store: EventStore) -> VerifyReport:
    """Check ``store``'s log with its key and checkpoint file; see :meth:`EventStore.verify`."""
    from twinloop.release.events import VerifyReport

    try:
        return _verify(store)
    except sqlite3.OperationalError as e:  # a dropped table: the log cannot even be read
        return VerifyReport(ok=False, events=0, head_seq=None, first_bad_seq=1,
                            problems=[f"the audit log's tables are unreadable ({e}): they were dropped or damaged"],
                            key_fingerprint=store.key.fingerprint)


def _verify(store: EventStore) -> VerifyReport:
    from twinloop.release.events import GENESIS, VerifyReport, _row_canon, event_hash

    key, conn = store.key, store.db.conn
    problems: list[str] = []
    bad: list[int] = []
    warnings: list[str] = []
    meta = conn.execute("SELECT * FROM audit_meta WHERE id=1").fetchone()
    log_fp = meta["key_fingerprint"] if meta is not None else None
    unknown_key = meta is not None and log_fp != key.fingerprint
    if unknown_key:
        problems.append(f"unknown key: the log was written under key {log_fp}, but the key at {key.path} is "
                        f"{key.fingerprint}; no MAC can be checked (set TWINLOOP_AUDIT_KEY_FILE to the log's key)")
    check_macs = meta is not None and not unknown_key
    prev_mac = key.genesis_mac(meta["log_id"]) if check_macs else ""
    cp, cp_problem = store.checkpoints.read()
    mac_at_cp: str | None = None
    count_at_cp = 0

    prev_hash, expected_seq, count = GENESIS, 1, 0
    for row in conn.execute("SELECT * FROM events ORDER BY seq"):
        count += 1
        seq, action = row["seq"], row["action"]
        if seq != expected_seq:
            problems.append(f"events {expected_seq}..{seq - 1} are missing (removed)")
            bad.append(expected_seq)
        if row["prev_hash"] != prev_hash:
            problems.append(f"event {seq} does not follow the event before it (chain broken)")
            bad.append(seq)
        recomputed = event_hash(seq, row["at"], action, row["actor"], row["subject"], row["reason"],
                                row["data"], row["prev_hash"])
        if recomputed != row["hash"]:
            problems.append(f"event {seq} ({action}) was edited: its content does not match its hash")
            bad.append(seq)
        stored = row["mac"]
        if check_macs:
            expected = key.event_mac(prev_mac, _row_canon(row))
            if stored is None and seq <= meta["sealed_seq"]:
                stored = expected  # written before MACs: covered by the seal at sealed_seq
                if seq == meta["sealed_seq"]:
                    if expected != meta["sealed_mac"]:
                        problems.append(f"events 1..{seq}, written before the audit key, were changed after "
                                        "they were sealed")
                        bad.append(1)
                    stored = meta["sealed_mac"]
            elif stored is None:
                problems.append(f"event {seq} ({action}) has no MAC: it was added without the audit key")
                bad.append(seq)
                stored = expected
            elif stored != expected:
                problems.append(f"event {seq} ({action}) fails its MAC: it was edited, replaced or added "
                                "without the audit key")
                bad.append(seq)
            prev_mac = stored
        if cp is not None and seq <= cp.seq:
            count_at_cp += 1
            if seq == cp.seq:
                mac_at_cp = stored
        prev_hash, expected_seq = row["hash"], seq + 1
    last = expected_seq - 1

    head = conn.execute("SELECT seq, hash FROM event_head WHERE id=1").fetchone()
    head_seq = head[0] if head else None
    if head is None and count:
        problems.append("the head record is missing")
        bad.append(1)
    elif head is not None and (head[0] != last or head[1] != prev_hash):
        problems.append(f"the log ends at event {last} but its head says {head[0]}: "
                        "events were removed from the end, or the head was edited")
        bad.append(min(head[0], last) + 1)
    if meta is None and count:
        problems.append("the audit log's metadata (log id, key fingerprint) is missing: it was removed")
        bad.append(1)

    missing_tail: list[int] | None = None
    where = store.checkpoints.path
    if cp_problem is not None:
        problems.append(cp_problem)
    elif cp is None:
        if count:
            warnings.append(f"no checkpoint at {where}: the end of the log cannot be confirmed against an "
                            "outside record (one is written once the log verifies)")
    elif meta is not None and cp.log_id != meta["log_id"]:
        problems.append(f"the checkpoint {where} of {cp.at} is for log {cp.log_id} with {cp.count} events, but the "
                        f"database holds log {meta['log_id']} with {count}: the log was emptied or replaced (if the "
                        "data directory was recreated on purpose, remove that checkpoint)")
        bad.append(1)
    elif cp.seq > last:
        missing_tail = [last + 1, cp.seq]
        ends = f"ends at event {last}" if last else "is empty"
        problems.append(f"events {last + 1}..{cp.seq} are missing from the end: the checkpoint of {cp.at} signed "
                        f"event {cp.seq} ({cp.count} events), but the log {ends}")
        bad.append(last + 1)
    elif check_macs:
        if mac_at_cp != cp.mac:
            problems.append(f"event {cp.seq} is not the event the checkpoint of {cp.at} signed: the log was "
                            f"rewritten up to it")
            bad.append(cp.seq)
        elif count_at_cp != cp.count:
            problems.append(f"the checkpoint of {cp.at} counted {cp.count} events up to event {cp.seq}, the log "
                            f"holds {count_at_cp}")
            bad.append(cp.seq)
    return VerifyReport(ok=not problems, events=count, head_seq=head_seq, problems=problems,
                        first_bad_seq=min(bad) if bad else None, warnings=warnings,
                        key_fingerprint=key.fingerprint, log_key_fingerprint=log_fp, unknown_key=unknown_key,
                        missing_tail=missing_tail, checkpoint=_describe(cp, where))


def _describe(cp: Checkpoint | None, where) -> dict | None:
    if cp is None:
        return None
    return {"path": str(where), "seq": cp.seq, "count": cp.count, "at": cp.at}
