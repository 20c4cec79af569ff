"""Fit the correction-scope threshold shipped as ``src/twinloop/packs/correction_scope.json``.

Correction memory (``serving/memory.py``) answers a question with a correction when the
question names the correction's subject and its embedding is close enough to the corrected
question's. The threshold is chosen on the calibration half of ``packs/eval/edits.jsonl``
(made-up facts, each with two paraphrases and an unrelated question; even lines calibrate,
odd lines are left to ``twinloop eval --edits``):

- in memory: every calibration fact but one per subject that has several;
- must match their own fact: each fact's question and paraphrases (reliability, generalisation);
- must match nothing: the unrelated questions, and the held-out facts' questions and
  paraphrases — the same subject asked about something no correction answers, the hardest
  case for locality.

The threshold is the lowest that keeps false matches at or under ``--false-rate``, so as many
paraphrases as possible are served. Only the embedder runs (no language model).

    python scripts/calibrate_correction_scope.py
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDITS = ROOT / "src" / "twinloop" / "packs" / "eval" / "edits.jsonl"
OUT = ROOT / "src" / "twinloop" / "packs" / "correction_scope.json"


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str | None = None
    subject: str | None = None  # corrections from users carry none: the names in the question decide


def load(split: str) -> list[dict]:
    rows = [json.loads(line) for line in EDITS.read_text("utf-8").splitlines() if line.strip()]
    return rows[0::2] if split == "calibration" else rows[1::2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--false-rate", type=float, default=0.02, help="largest share of must-not-match questions matched")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from twinloop.foundation.embedder import load_embedder
    from twinloop.kernel.config import EmbedderConfig
    from twinloop.serving.memory import nearest_in_scope

    rows = load("calibration")
    seen: dict[str, int] = {}
    held, kept = [], []
    for r in rows:
        seen[r["subject"]] = seen.get(r["subject"], 0) + 1
        (held if seen[r["subject"]] == 2 else kept).append(r)
    embedder = load_embedder(EmbedderConfig())
    facts = [Fact(r["question"], r["answer"]) for r in kept]
    vectors = np.asarray(embedder.encode([f.question for f in facts]), dtype=np.float32)
    must = [(q, i) for i, r in enumerate(kept) for q in [r["question"], *r["paraphrases"]]]
    must_not = [r["locality"] for r in rows] + [q for r in held for q in [r["question"], *r["paraphrases"]]]
    mv = np.asarray(embedder.encode([q for q, _ in must]), dtype=np.float32)
    nv = np.asarray(embedder.encode(must_not), dtype=np.float32)
    grid = [round(t, 3) for t in np.arange(0.40, 0.96, 0.01)]
    table = []
    # The nearest correction in scope does not depend on the threshold: found once, then cut.
    near_must = [nearest_in_scope(q, v, facts, vectors, -1.0) for (q, _), v in zip(must, mv, strict=True)]
    near_not = [nearest_in_scope(q, v, facts, vectors, -1.0) for q, v in zip(must_not, nv, strict=True)]
    for t in grid:
        hits = [h if h is not None and h[1] >= t else None for h in near_must]
        right = sum(h is not None and h[0] == i for h, (_, i) in zip(hits, must, strict=True))
        wrong = sum(h is not None and h[0] != i for h, (_, i) in zip(hits, must, strict=True))
        false = [h is not None and h[1] >= t for h in near_not]
        table.append({"threshold": t, "matched_own": right / len(must), "matched_other": wrong / len(must),
                      "false_matches": sum(false) / len(must_not),
                      "false_unrelated": sum(false[:len(rows)]) / len(rows),
                      "false_same_subject": sum(false[len(rows):]) / max(1, len(must_not) - len(rows))})
    ok = [row for row in table if row["false_matches"] <= args.false_rate]
    if not ok:
        print(f"no threshold keeps false matches under {args.false_rate}", file=sys.stderr)
        return 1
    best = ok[0]
    doc = {"threshold": best["threshold"],
           "fitted_on": {"file": "packs/eval/edits.jsonl", "split": "calibration (even lines)",
                         "facts_in_memory": len(kept), "must_match": len(must), "must_not_match": len(must_not),
                         "false_rate_allowed": args.false_rate, "at_threshold": best,
                         "embedder": embedder.name}}
    args.out.write_text(json.dumps(doc, indent=2) + "\n", "utf-8")
    for row in table[::5]:
        print(json.dumps(row))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
