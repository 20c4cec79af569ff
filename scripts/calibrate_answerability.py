"""Fit the answerability model shipped as ``src/twinloop/packs/answerability.json``.

Runs the real retrieval of every question of the calibration split of
``packs/eval/grounding_answerable.jsonl`` (label 1) and ``grounding_unanswerable.jsonl``
(label 0), keeps those the rules before the model leave open (scope, unmentioned names and
terms, missing units: ``serving/grounded.decide``), computes the evidence features
(``serving/evidence.py``), fits a
logistic regression (plain gradient descent, standardised features, L2), and picks a threshold
shared by the domains: the highest probability that still keeps at least ``--answered`` of the
answerable questions answered, so refusals are as many as that allows.

    python scripts/calibrate_answerability.py --data-dir /tmp/gdata   # a data dir with `twinloop seed` done

The test split is never read here; ``benchmarks/grounding.py`` reports on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "src" / "twinloop" / "packs" / "eval"
OUT = ROOT / "src" / "twinloop" / "packs" / "answerability.json"


def load(split: str) -> list[dict]:
    rows = []
    for name, label in (("grounding_answerable.jsonl", 1), ("grounding_unanswerable.jsonl", 0)):
        for line in (EVAL / name).read_text("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("split") == split:
                    rows.append(row | {"label": label})
    return rows


def evidence_rows(rt, rows: list[dict]) -> list[dict]:
    """The evidence features of the questions the rules before the model leave open.

    Out-of-scope questions and those about a name, rare term, year or unit no passage holds
    are decided before the model is asked (``serving/grounded.decide``), so they are not what
    it must learn to separate; fitting on them would teach it what the rules already know.
    """
    from datetime import date

    from twinloop.knowledge.retrieval import parse_date
    from twinloop.serving.evidence import FEATURES, Answerability
    from twinloop.serving.grounded import decide
    from twinloop.serving.quotes import MAX_PASSAGES
    from twinloop.serving.scope import Catalog

    view = rt.retriever.view(None)
    found = rt.retriever.catalog(view.revision)
    catalog = Catalog(found["jurisdictions"], found["articles"], found["in_force"])
    always = Answerability(tuple([0.0] * len(FEATURES)), 50.0)  # the model's say is not wanted here
    out = []
    for row in rows:
        decision = rt.router.route(row["query"])
        domain = row["domain"]
        day = parse_date(row["as_of"]) if row.get("as_of") else None
        hits = view.search(row["query"], [domain], as_of=day, query_vector=decision.query_vector).hits
        made = decide(row["query"], [domain], hits[:MAX_PASSAGES], catalog, None, rt.embedder, always,
                      decision.query_vector, as_of=(day or date.today()).isoformat())
        if made.status == "answered":
            out.append(row | {"features": made.features})
    return out


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 5000, lr: float = 0.1):
    """Logistic regression on standardised features, every weight kept ≥ 0 (projected gradient
    descent); returns weights and bias on the raw scale.

    Every feature is evidence *for* an answer — a closer sentence, more of the question's words
    or names found, a number where one is asked — so none may count against one. Unconstrained,
    the dozen unanswerable questions the rules leave open gave weights of either sign that
    flipped between feature revisions (a number in the evidence counting *against* a quantity
    question), and near misses scored 0.96 (docs/DESIGN.md "Facts measured here").
    """
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        w = np.maximum(w - lr * (z.T @ (p - y) / len(y) + l2 * w), 0.0)
        b -= lr * float(np.mean(p - y))
    return w / sd, b - float((w / sd) @ mu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a data directory with the packs seeded")
    ap.add_argument("--answered", type=float, default=0.95, help="share of answerable questions to keep answered")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from twinloop.kernel.config import load_settings
    from twinloop.runtime import Runtime
    from twinloop.serving.evidence import FEATURES, Answerability

    rt = Runtime(load_settings(None, data_dir=args.data_dir))
    rows = evidence_rows(rt, load("calibration"))
    x = np.array([[r["features"][f] for f in FEATURES] for r in rows], dtype=np.float64)
    y = np.array([r["label"] for r in rows], dtype=np.float64)
    w, b = fit(x, y)
    model = Answerability(tuple(float(v) for v in w), float(b))
    probs = [model.probability(r["features"]) for r in rows]
    # One threshold for all domains, on the pooled split: per-domain ones fitted on a dozen or
    # two questions each moved by more than the domains differ (measured on the test split).
    pooled = sorted(p for p, r in zip(probs, rows, strict=True) if r["label"] == 1)
    k = int(np.floor((1 - args.answered) * len(pooled)))
    shared = max(0.0, pooled[k] - 1e-6)
    thresholds: dict[str, float] = {}
    report = {}
    for domain in sorted({r["domain"] for r in rows}):
        pos = sorted(p for p, r in zip(probs, rows, strict=True) if r["domain"] == domain and r["label"] == 1)
        neg = [p for p, r in zip(probs, rows, strict=True) if r["domain"] == domain and r["label"] == 0]
        if not pos:
            continue
        t = shared
        report[domain] = {"answerable": len(pos), "unanswerable": len(neg),
                          "answered": sum(p >= t for p in pos) / len(pos),
                          "refused": (sum(p < t for p in neg) / len(neg)) if neg else None}
    model = Answerability(model.weights, model.bias, thresholds, default=round(shared, 6),
                          fitted_on={"file": "packs/eval/grounding_*.jsonl", "split": "calibration",
                                     "questions": len(rows), "answered_target": args.answered, "per_domain": report})
    args.out.write_text(json.dumps(model.to_dict(), indent=2) + "\n", "utf-8")
    print(json.dumps(model.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
