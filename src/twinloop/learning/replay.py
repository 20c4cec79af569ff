"""Prioritised replay buffers, one per domain (paper §4.4; Schaul et al. 2016, "proportional").

Each domain keeps at most ``ReplayConfig.capacity`` items in SQLite, so the buffers survive a
restart and are shared between the serving process (which adds accepted feedback) and the
Shadow trainer (which samples and updates priorities). An item is either a stored sample (its
id) or a literal ``{prompt, target}`` pair; its identity is content-addressed, so adding the
same item twice keeps one copy.

Priorities follow Schaul et al.: an item's priority is ``p = |loss| + ε`` once it has been
trained on, and new items enter at the current maximum priority (1.0 for an empty buffer) so
each is replayed at least with the best odds before its loss is known. Sampling draws with
replacement with ``P(i) = p_i^α / Σ_j p_j^α`` and returns importance-sampling weights
``w_i = (N·P(i))^(−β) / max_j w_j`` that undo the bias of non-uniform sampling as β → 1.

Why no sum-tree: a sum-tree makes one draw O(log N) instead of O(N), which matters for RL
buffers of 10⁵–10⁶ transitions sampled every environment step. Here N ≤ 500 per domain and
the trainer samples once per batch; reading 500 priorities and one vectorised ``rng.choice``
costs well under a millisecond, and a plain array keeps the persistent state trivially
consistent with the table (no tree to rebuild after a crash).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import ReplayConfig
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS replay_items(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    domain TEXT NOT NULL,
    item_id TEXT NOT NULL,
    sample_id INTEGER,
    payload TEXT,
    priority REAL NOT NULL CHECK (priority > 0),
    added_at TEXT NOT NULL,
    UNIQUE(domain, item_id),
    CHECK ((sample_id IS NULL) != (payload IS NULL))
);
CREATE INDEX IF NOT EXISTS replay_evict ON replay_items(domain, priority, seq)
"""
# ``seq`` (AUTOINCREMENT, never reused) orders items by insertion even when two share an
# ``added_at`` millisecond; it makes eviction's "oldest first" and sampling order exact.

NEW_ITEM_PRIORITY = 1.0
"""Priority of the first item in an empty buffer (Schaul et al. 2016, Algorithm 1: p₁ = 1)."""

ItemLike = int | Mapping[str, str]
"""What :meth:`ReplayBuffer.add` accepts: a sample id, or ``{"prompt": ..., "target": ...}``."""


@dataclass(frozen=True)
class ReplayItem:
    """One stored item: a sample id or a prompt/target pair, with its current priority."""

    item_id: str
    domain: str
    priority: float
    added_at: str
    sample_id: int | None = None
    prompt: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class ReplayBatch:
    """Items drawn with replacement, with their sampling probabilities and IS weights.

    Attributes:
        items: The drawn items, in draw order (an item may appear more than once).
        probabilities: ``P(i)`` of each draw, shape ``(n,)``.
        weights: Importance-sampling weights of each draw, shape ``(n,)``, in ``(0, 1]``;
            multiply each example's loss by its weight.
    """

    items: tuple[ReplayItem, ...]
    probabilities: np.ndarray
    weights: np.ndarray

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class BetaSchedule:
    """β annealed linearly from ``start`` to 1 over ``steps`` steps, then held at 1.

    Schaul et al. (2016, §3.4) anneal β to 1 by the end of learning, when unbiased updates
    matter most; β₀ = 0.4 is their value for proportional prioritisation.
    """

    steps: int
    start: float = 0.4

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidInputError(f"BetaSchedule steps = {self.steps!r}: must be an integer ≥ 1")
        if not 0.0 <= self.start <= 1.0:
            raise InvalidInputError(f"BetaSchedule start = {self.start!r}: must be in [0, 1]")

    def __call__(self, step: int) -> float:
        """β at ``step`` (0-based); 1.0 from ``steps`` on."""
        if step < 0:
            raise InvalidInputError(f"step = {step!r}: must be ≥ 0")
        return min(1.0, self.start + (1.0 - self.start) * step / self.steps)


def _check_domain(domain: str) -> str:
    # Domains are free strings here: the buffer does not know the configured domain list, and
    # schema filtering upstream (paper §4.6) is where unknown domains are rejected.
    if not isinstance(domain, str) or not domain.strip():
        raise InvalidInputError(f"replay domain = {domain!r}: must be a non-empty string")
    return domain


def _identify(item: ItemLike) -> tuple[str, int | None, str | None]:
    """Content-addressed id, sample id and JSON payload of an item."""
    if isinstance(item, bool):
        raise InvalidInputError(f"replay item = {item!r}: expected a sample id or a {{prompt, target}} mapping")
    if isinstance(item, (int, np.integer)):
        if item < 0:
            raise InvalidInputError(f"replay sample id = {item!r}: must be ≥ 0")
        return f"s:{int(item)}", int(item), None
    if isinstance(item, Mapping):
        if set(item) != {"prompt", "target"}:
            raise InvalidInputError(f"replay item keys = {sorted(item)!r}: expected exactly ['prompt', 'target']")
        for key in ("prompt", "target"):
            value = item[key]
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"replay item {key} = {value!r}: must be a non-empty string")
        payload = json.dumps({"prompt": item["prompt"], "target": item["target"]}, sort_keys=True,
                             ensure_ascii=False)
        return "p:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32], None, payload
    raise InvalidInputError(f"replay item = {item!r}: expected a sample id or a {{prompt, target}} mapping")


def _row_item(row: Any) -> ReplayItem:
    prompt = target = None
    if row["payload"] is not None:
        data = json.loads(row["payload"])
        prompt, target = data["prompt"], data["target"]
    return ReplayItem(item_id=row["item_id"], domain=row["domain"], priority=float(row["priority"]),
                      added_at=row["added_at"], sample_id=row["sample_id"], prompt=prompt, target=target)


class ReplayBuffer:
    """Persistent prioritised replay buffers, one per domain, in the metadata database.

    Eviction: when a domain holds more than ``capacity`` items, the lowest-priority items go
    first and, among equal priorities, the oldest. Schaul et al. use a FIFO window; we keep
    the items the model still gets wrong (high loss) instead, since a 500-item buffer is the
    only memory of old corrections, and an easy item costs little to forget. New items enter
    at the maximum priority, so a fresh item is never evicted before one already trained on.
    """

    def __init__(self, db: Database, config: ReplayConfig | None = None) -> None:
        self.db = db
        self.config = config or ReplayConfig()
        db.ensure_schema("replay", SCHEMA)

    def add(self, domain: str, items: Iterable[ItemLike]) -> list[str]:
        """Add items at the domain's current maximum priority, then evict beyond capacity.

        An item already in the buffer keeps its priority and place. The whole call is one
        transaction.

        Args:
            domain: Buffer to add to (a non-empty string).
            items: Sample ids or ``{"prompt", "target"}`` mappings.

        Returns:
            The item ids, in input order (an id evicted by this same call is still listed).

        Raises:
            InvalidInputError: A bad domain or item; nothing is written.
        """
        domain = _check_domain(domain)
        parsed = [_identify(item) for item in items]  # validate all before writing any
        now = now_iso()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT MAX(priority) FROM replay_items WHERE domain=?", (domain,)).fetchone()
            p_max = float(row[0]) if row[0] is not None else NEW_ITEM_PRIORITY
            conn.executemany(
                "INSERT OR IGNORE INTO replay_items(domain, item_id, sample_id, payload, priority, added_at)"
                " VALUES (?,?,?,?,?,?)",
                [(domain, item_id, sample_id, payload, p_max, now) for item_id, sample_id, payload in parsed],
            )
            self._evict(conn, domain)
        return [item_id for item_id, _, _ in parsed]

    def _evict(self, conn: Any, domain: str) -> None:
        count = conn.execute("SELECT COUNT(*) FROM replay_items WHERE domain=?", (domain,)).fetchone()[0]
        excess = count - self.config.capacity
        if excess > 0:
            conn.execute(
                "DELETE FROM replay_items WHERE seq IN (SELECT seq FROM replay_items WHERE domain=?"
                " ORDER BY priority ASC, seq ASC LIMIT ?)",
                (domain, excess),
            )

    def size(self, domain: str) -> int:
        """Number of items in a domain's buffer (0 for a domain never added to)."""
        domain = _check_domain(domain)
        return int(self.db.conn.execute("SELECT COUNT(*) FROM replay_items WHERE domain=?", (domain,)).fetchone()[0])

    def domains(self) -> list[str]:
        """Domains with at least one item, sorted."""
        return [r[0] for r in self.db.conn.execute("SELECT DISTINCT domain FROM replay_items ORDER BY domain")]

    def items(self, domain: str) -> list[ReplayItem]:
        """A domain's items in insertion order."""
        domain = _check_domain(domain)
        rows = self.db.conn.execute("SELECT * FROM replay_items WHERE domain=? ORDER BY seq", (domain,)).fetchall()
        return [_row_item(r) for r in rows]

    def probabilities(self, priorities: np.ndarray) -> np.ndarray:
        """``P(i) = p_i^α / Σ_j p_j^α`` for priorities of shape ``(N,)``."""
        scaled = np.power(priorities.astype(np.float64), self.config.alpha)
        return scaled / scaled.sum()

    def sample(self, domain: str, n: int, beta: float, rng: np.random.Generator) -> ReplayBatch:
        """Draw ``n`` items with replacement, ``P(i) ∝ p_i^α``, with importance-sampling weights.

        Weights are ``w_i = (N·P(i))^(−β)`` divided by the largest weight over the whole
        buffer (the item of least probability), not just over this batch, as in the OpenAI
        baselines implementation: the scale of the loss then does not depend on which items
        happened to be drawn. All weights are in ``(0, 1]``.

        Deterministic for a given buffer state and ``rng`` state: items are read in
        insertion order before drawing.

        Args:
            domain: Buffer to draw from.
            n: Number of draws (0 gives an empty batch).
            beta: IS exponent in ``[0, 1]`` (see :class:`BetaSchedule`).
            rng: Source of randomness, e.g. ``np.random.default_rng(seed)``.

        Raises:
            InvalidInputError: Bad domain, ``n < 0``, β outside [0, 1], or ``n > 0`` from an
                empty buffer.
        """
        domain = _check_domain(domain)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"replay sample n = {n!r}: must be an integer ≥ 0")
        if not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            raise InvalidInputError(f"replay beta = {beta!r}: must be in [0, 1]")
        rows = self.db.conn.execute("SELECT * FROM replay_items WHERE domain=? ORDER BY seq", (domain,)).fetchall()
        if n == 0:
            return ReplayBatch((), np.zeros(0), np.zeros(0))
        if not rows:
            raise InvalidInputError(f"replay buffer for domain {domain!r} is empty; cannot draw {n} items")
        priorities = np.array([r["priority"] for r in rows], dtype=np.float64)  # (N,)
        probs = self.probabilities(priorities)  # (N,)
        idx = rng.choice(len(rows), size=int(n), replace=True, p=probs)  # (n,)
        # log-space keeps (N·P)^(−β) finite for tiny P; max weight is at the smallest P.
        log_w = -beta * np.log(len(rows) * probs)  # (N,)
        weights = np.exp(log_w[idx] - log_w.max())  # (n,)
        return ReplayBatch(tuple(_row_item(rows[i]) for i in idx), probs[idx], weights)

    def update_priorities(self, domain: str, item_ids: Sequence[str], losses: Sequence[float]) -> int:
        """Set ``p = |loss| + ε`` for items just trained on, in one transaction.

        Ids no longer in the buffer (evicted since they were drawn, a normal race with
        intake) are skipped. An id given twice (drawn twice) takes its last loss.

        Args:
            domain: Buffer the items were drawn from.
            item_ids: ``ReplayItem.item_id`` values, shape ``(k,)``.
            losses: One finite loss per id, shape ``(k,)`` (a list, array or 1-D tensor).

        Returns:
            The number of ids found and updated.

        Raises:
            InvalidInputError: Lengths differ, or a loss is not finite; nothing is written.
        """
        domain = _check_domain(domain)
        ids = list(item_ids)
        values = [float(v) for v in (losses.tolist() if hasattr(losses, "tolist") else losses)]
        if len(ids) != len(values):
            raise InvalidInputError(f"update_priorities got {len(ids)} ids but {len(values)} losses")
        for item_id, loss in zip(ids, values, strict=True):
            if not math.isfinite(loss):
                raise InvalidInputError(f"loss = {loss!r} for replay item {item_id!r}: must be finite")
        eps = self.config.epsilon
        found: set[str] = set()
        with self.db.transaction() as conn:
            for item_id, loss in zip(ids, values, strict=True):
                cur = conn.execute("UPDATE replay_items SET priority=? WHERE domain=? AND item_id=?",
                                   (abs(loss) + eps, domain, item_id))
                if cur.rowcount:
                    found.add(item_id)
        return len(found)
