"""Grounded answers on the real models: correctness, citations, verbatim quotes, refusals, and
the cost of constrained decoding — per domain, in one run.

    python benchmarks/grounding.py --data-dir /tmp/gdata          # the test split (default)
    python benchmarks/grounding.py --data-dir /tmp/gdata --split all --limit 10

Questions: ``packs/eval/grounding_answerable.jsonl`` (with expected facts and the passages that
hold them) and ``grounding_unanswerable.jsonl`` (other jurisdictions, missing sources,
out-of-domain facts, near misses). Each is answered through the serving stack as a user's
request is (``Service.answer``, the question's domain forced so routing errors do not blur
the figures; ``--route`` lets the router decide).

Figures, per domain and overall:

- correct: answered, and a claim holds an expected fact (answerable questions);
- citation recall / precision (ALCE): claims with a citation whose passage contains the
  claim / citations whose passage contains the claim they are attached to;
- verbatim: citations whose ``exact_quote`` is a substring of the stored passage and whose
  ``sha256`` matches it; not retrieved: citations naming no retrieved passage;
- invented dates: dates in the answer found in no cited passage, its metadata or the as-of
  date; edition mismatch: a citation's edition date differs from the stored document's;
- wrong answered: ``answered`` without an expected fact, or ``answered`` while unanswerable;
- refusal precision / recall over the unanswerable questions, answered rate over the
  answerable ones; correct-and-cited where the right passage was in the top 5;
- tokens/s of constrained against free decoding on the same prompts, alternating.

Writes ``docs/bench/grounding.json`` and ``docs/bench/grounding.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "src" / "twinloop" / "packs" / "eval"
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def load(split: str) -> list[dict]:
    rows = []
    for name, answerable in (("grounding_answerable.jsonl", True), ("grounding_unanswerable.jsonl", False)):
        for line in (EVAL / name).read_text("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if split == "all" or row.get("split") == split:
                    rows.append(row | {"answerable": answerable})
    return rows


def contains(text: str, phrases: list[str]) -> bool:
    t = " ".join(text.casefold().split())
    return any(" ".join(p.casefold().split()) in t for p in phrases)


def judge(row: dict, rec: dict, db) -> dict:
    """The figures of one answer (see the module docstring)."""
    stored: dict[int, tuple[str, dict]] = {}
    for c in rec["citations"]:
        r = db.conn.execute("SELECT c.text, d.meta FROM kn_chunks c JOIN kn_documents d ON d.id = c.doc_id "
                            "WHERE c.id = ?", (c["chunk_id"],)).fetchone()
        stored[c["n"]] = (r["text"], json.loads(r["meta"])) if r else ("", {})
    retrieved_uris = {x["n"]: x.get("uri") for x in rec["retrieved"]}
    verbatim = sum(1 for c in rec["citations"] if c["exact_quote"] and c["exact_quote"] in stored[c["n"]][0]
                   and hashlib.sha256(stored[c["n"]][0].encode()).hexdigest() == c["sha256"])
    not_retrieved = sum(1 for c in rec["citations"] if retrieved_uris.get(c["n"]) != c.get("uri"))
    edition_mismatch = sum(1 for c in rec["citations"] if c.get("edition_date") != stored[c["n"]][1].get("edition_date"))
    allowed_dates = {rec.get("as_of")} | {d for text, meta in stored.values()
                                          for d in _DATE.findall(text) + [str(v) for v in meta.values()]}
    invented = [d for d in _DATE.findall(rec["text"]) if d not in allowed_dates and not any(d in v for v in allowed_dates if v)]
    pairs = [(claim, n) for claim in rec["claims"] for n in claim["citations"]]
    supported = [(claim, n) for claim, n in pairs if n in stored and claim["text"] in stored[n][0]]
    claims_with_support = sum(1 for claim in rec["claims"] if any(cl is claim for cl, _ in supported))
    claim_text = " ".join(c["text"] for c in rec["claims"])
    answered = rec["status"] == "answered"
    out = {"status": rec["status"], "mode": rec["mode"], "answered": answered, "claims": len(rec["claims"]),
           "citations": len(rec["citations"]), "verbatim": verbatim, "not_retrieved": not_retrieved,
           "edition_mismatch": edition_mismatch, "invented_dates": len(invented), "pairs": len(pairs),
           "supported_pairs": len(supported), "claims_with_support": claims_with_support,
           "latency_ms": rec["timings_ms"].get("total")}
    if row["answerable"]:
        correct = answered and contains(claim_text, row["expected"])
        cites_right = any(c.get("uri") in row["citations"] for c in rec["citations"])
        in_top5 = any(x.get("uri") in row["citations"] for x in rec["retrieved"][:5])
        out |= {"correct": correct, "cited_right": cites_right, "right_in_top5": in_top5,
                "wrong_answered": answered and not contains(claim_text, row["expected"])}
    else:
        out |= {"refused": rec["status"] in ("cannot_verify", "out_of_scope"), "expect": row["expect"],
                "status_as_expected": rec["status"] == row["expect"], "wrong_answered": answered}
    return out


def summarise(rows: list[dict]) -> dict:
    pos = [r for r in rows if r["answerable"]]
    neg = [r for r in rows if not r["answerable"]]
    j = [r["judged"] for r in rows]
    refused = [r for r in rows if r["judged"]["status"] != "answered"]
    top5 = [r for r in pos if r["judged"]["right_in_top5"]]

    def share(n, d):
        return round(n / d, 4) if d else None

    return {
        "questions": len(rows), "answerable": len(pos), "unanswerable": len(neg),
        "correct": share(sum(r["judged"]["correct"] for r in pos), len(pos)),
        "answered_rate": share(sum(r["judged"]["answered"] for r in pos), len(pos)),
        "correct_and_cited_when_right_passage_in_top5": share(
            sum(r["judged"]["correct"] and r["judged"]["cited_right"] for r in top5), len(top5)),
        "right_passage_in_top5": share(len(top5), len(pos)),
        "citation_recall": share(sum(x["claims_with_support"] for x in j), sum(x["claims"] for x in j)),
        "citation_precision": share(sum(x["supported_pairs"] for x in j), sum(x["pairs"] for x in j)),
        "quotes_verbatim": share(sum(x["verbatim"] for x in j), sum(x["citations"] for x in j)),
        "citations_not_retrieved": sum(x["not_retrieved"] for x in j),
        "invented_dates": sum(x["invented_dates"] for x in j),
        "edition_mismatches": sum(x["edition_mismatch"] for x in j),
        "wrong_answered": sum(x["wrong_answered"] for x in j),
        "refusal_recall": share(sum(r["judged"]["refused"] for r in neg), len(neg)),
        "refusal_precision": share(sum(not r["answerable"] for r in refused), len(refused)),
        "refusal_status_as_expected": share(sum(r["judged"]["status_as_expected"] for r in neg), len(neg)),
        "extractive_fallbacks": sum(x["mode"] == "extractive" for x in j),
    }


def throughput(svc, rows: list[dict], n: int, max_tokens: int, repeats: int) -> dict:
    """Decode tokens/s of the same prompts, free and constrained, alternating, one at a time.

    Each run's prefill (measured per prompt with a one-token run) is taken off its time, so
    answers of different lengths compare on decoding speed, which is what the mask costs.
    """
    from twinloop.serving.pipeline import AnswerRequest

    pipe, engine = svc.pipeline, svc.engine
    preps = []
    for row in [r for r in rows if r["answerable"]]:
        prep = pipe.prepare(AnswerRequest(query=row["query"], domain=row["domain"], max_tokens=max_tokens),
                            svc.active)
        if prep.gen is not None and prep.decision is not None:
            preps.append(prep)
        if len(preps) >= n:
            break
    stats = {"free": [0, 0.0], "constrained": [0, 0.0]}
    for i, prep in enumerate(preps):
        gen = pipe.constrain(prep, engine.foundation)
        if gen is None:
            continue
        free = replace(gen, constraint=None)
        prefill = min(engine.submit(replace(free, max_new_tokens=1, request_id=f"{gen.request_id}-p{k}")
                                    ).result().generate_seconds for k in range(2))
        for r in range(repeats):
            for kind in (("free", "constrained") if (i + r) % 2 == 0 else ("constrained", "free")):
                g = gen if kind == "constrained" else free
                if kind == "constrained":
                    g = pipe.constrain(prep, engine.foundation)  # a fresh constraint state per run
                res = engine.submit(replace(g, request_id=f"{gen.request_id}-{kind}-{r}")).result()
                if res.completion_tokens > 1:
                    stats[kind][0] += res.completion_tokens - 1
                    stats[kind][1] += max(1e-6, res.generate_seconds - prefill)
    tps = {k: round(v[0] / v[1], 2) if v[1] else None for k, v in stats.items()}
    return {"prompts": len(preps), "repeats": repeats, "max_tokens": max_tokens, "decode_tokens_per_s": tps,
            "tokens": {k: v[0] for k, v in stats.items()},
            "constrained_over_free": round(tps["constrained"] / tps["free"], 4) if tps["free"] else None}


def markdown(doc: dict) -> str:
    cols = ["correct", "answered_rate", "correct_and_cited_when_right_passage_in_top5", "citation_recall",
            "citation_precision", "quotes_verbatim", "citations_not_retrieved", "invented_dates", "wrong_answered",
            "refusal_recall", "refusal_precision"]
    head = ["domain", "questions"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in list(doc["per_domain"].items()) + [("all", doc["overall"])]:
        cells = [name, str(s["questions"])] + ["-" if s[c] is None else (f"{s[c]:.1%}" if isinstance(s[c], float)
                                                                             else str(s[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    t = doc["throughput"]
    lines.append("")
    lines.append(f"Constrained decoding: {t['decode_tokens_per_s']['constrained']} tok/s vs free "
                 f"{t['decode_tokens_per_s']['free']} tok/s decoding the same {t['prompts']} prompts, prefill "
                 f"excluded (ratio {t['constrained_over_free']}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="data directory (seeded here if empty)")
    ap.add_argument("--split", choices=["test", "calibration", "all"], default="test")
    ap.add_argument("--limit", type=int, default=None, help="questions per file, for a quick run")
    ap.add_argument("--route", action="store_true", help="let the router pick the domain")
    ap.add_argument("--max-tokens", type=int, default=None, help="answer length (default: the server's)")
    ap.add_argument("--tps-prompts", type=int, default=6)
    ap.add_argument("--tps-repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "grounding.json")
    args = ap.parse_args(argv)

    from twinloop.kernel.config import load_settings
    from twinloop.knowledge.seed import seed_packs
    from twinloop.runtime import Runtime
    from twinloop.serving.evidence import default_answerability
    from twinloop.serving.pipeline import AnswerRequest
    from twinloop.serving.service import Service

    rt = Runtime(load_settings(None, data_dir=args.data_dir))
    if rt.knowledge.current_revision() == 0:
        seed_packs(rt.knowledge, rt.domains)
    rows = load(args.split)
    if args.limit:
        kept, seen = [], defaultdict(int)
        for r in rows:
            key = (r["answerable"], r["domain"])
            if seen[key] < args.limit:
                kept.append(r)
                seen[key] += 1
        rows = kept
    svc = Service(rt)
    svc.start()
    started = time.perf_counter()
    try:
        for i, row in enumerate(rows, start=1):
            req = AnswerRequest(query=row["query"], domain=None if args.route else row["domain"],
                                as_of=row.get("as_of"), max_tokens=args.max_tokens)
            rec = svc.answer(req).to_dict()
            row["judged"] = judge(row, rec, rt.db)
            row["answer"] = {k: rec[k] for k in ("status", "mode", "summary", "claims", "searched")}
            print(f"{i}/{len(rows)} {row['domain']} {'A' if row['answerable'] else 'U'} {rec['status']:<13} "
                  f"{row['judged'].get('correct', row['judged'].get('refused'))} {row['query'][:70]}",
                  file=sys.stderr, flush=True)
        tps = throughput(svc, rows, args.tps_prompts, args.max_tokens or rt.settings.serving.answer_max_new_tokens,
                         args.tps_repeats)
    finally:
        svc.stop()
    per_domain = {d: summarise([r for r in rows if r["domain"] == d]) for d in sorted({r["domain"] for r in rows})}
    doc = {"benchmark": "grounding", "split": args.split, "routed": args.route, "seconds": round(
        time.perf_counter() - started, 1), "model": rt.foundation.name, "overall": summarise(rows),
        "per_domain": per_domain, "throughput": tps,
        "answerability": default_answerability().to_dict(),
        "questions": [{k: r[k] for k in ("id", "domain", "query", "answerable", "judged", "answer")} for r in rows]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n", "utf-8")
    md = markdown(doc)
    args.out.with_suffix(".md").write_text(
        f"# Grounded answers ({args.split} split{', routed' if args.route else ''})\n\n"
        f"`python benchmarks/grounding.py --data-dir DIR --split {args.split}` on {doc['model']}.\n\n" + md, "utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
