"""Benchmark: retrieval quality and speed, and router accuracy, on the real seed corpora.

1. Builds a fresh knowledge store from the default packs' seed corpora (real public data) and
   reports build time per 1,000 chunks.
2. For the labelled queries of ``twinloop/packs/eval/retrieval_queries.jsonl`` (from the real
   QA sets), measures recall@5 and p50/p95 query latency (query embedding included) of
   hybrid vs BM25-only vs dense-only, side by side in one run.
3. Measures the router's accuracy on ``router_queries.jsonl`` (at least 100 labelled
   queries over the four domains), per domain and over a sweep of τ and scoring variants,
   and its multi-domain recall on ``router_queries_multi.jsonl``.
Writes everything as JSON.

Usage: python benchmarks/retrieval.py [--out bench-results/retrieval.json] [--chunk-words 160]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

from twinloop.kernel.config import load_settings
from twinloop.knowledge.seed import seed_packs
from twinloop.routing import Router, RouterSpec
from twinloop.runtime import Runtime

# (label, search mode, fusion): the default hybrid, hybrid with RRF, and each part alone.
MODES = ("hybrid", "hybrid-rrf", "bm25", "dense")
_SEARCH = {"hybrid": ("hybrid", "relative"), "hybrid-rrf": ("hybrid", "rrf"), "bm25": ("bm25", None),
           "dense": ("dense", None)}


def read_jsonl(name: str) -> list[dict]:
    text = resources.files("twinloop.packs").joinpath("eval", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def bench_retrieval(rt: Runtime, queries: list[dict], k: int) -> dict:
    view = rt.retriever.view()
    out = {}
    for mode in MODES:
        hits_at_k, latencies = [], []
        per_domain: dict[str, list[int]] = defaultdict(list)
        per_dataset: dict[str, list[int]] = defaultdict(list)
        for q in queries:
            start = time.perf_counter()
            search_mode, fusion = _SEARCH[mode]
            res = view.search(q["query"], q["domain"], k=k, mode=search_mode, fusion=fusion, as_of=q.get("as_of"))
            latencies.append((time.perf_counter() - start) * 1000)
            got = {h.citation.get("uri") for h in res.hits}
            hit = int(bool(got & set(q["relevant"])))
            hits_at_k.append(hit)
            per_domain[q["domain"]].append(hit)
            per_dataset[q.get("dataset", "?")].append(hit)
        out[mode] = {
            f"recall@{k}": round(statistics.mean(hits_at_k), 4),
            "recall_by_domain": {d: round(statistics.mean(v), 4) for d, v in sorted(per_domain.items())},
            "recall_by_dataset": {d: round(statistics.mean(v), 4) for d, v in sorted(per_dataset.items())},
            "latency_ms_p50": pct(latencies, 50),
            "latency_ms_p95": pct(latencies, 95),
            "queries": len(queries),
        }
    return out


def router_accuracy(router: Router, queries: list[dict], vecs: np.ndarray) -> dict:
    correct = Counter()
    total = Counter()
    confusion: dict[str, Counter] = defaultdict(Counter)
    for q, v in zip(queries, vecs):
        d = router.route(q["query"], query_vector=v)
        total[q["domain"]] += 1
        correct[q["domain"]] += int(d.primary == q["domain"])
        confusion[q["domain"]][d.primary] += 1
    return {
        "accuracy": round(sum(correct.values()) / max(1, sum(total.values())), 4),
        "by_domain": {d: round(correct[d] / total[d], 4) for d in sorted(total)},
        "confusion": {d: dict(c) for d, c in sorted(confusion.items())},
        "queries": sum(total.values()),
    }


def bench_router(rt: Runtime) -> dict:
    import twinloop.routing.router as router_mod

    queries = read_jsonl("router_queries.jsonl")
    multi = read_jsonl("router_queries_multi.jsonl")
    vecs = rt.embedder.encode([q["query"] for q in queries])
    specs = rt.domains.all()
    cfg = rt.settings.router
    default = router_accuracy(rt.router, queries, vecs)
    sweep = {}
    # Side by side: τ on the confidence (default) vs τ on the raw cosine (the paper's literal
    # reading, emulated by a huge temperature that flattens confidences, so only the
    # min_similarity floor — set to τ — decides), for prototype counts 1, 3, 5.
    for top in (1, 3, 5):
        router_mod.TOP_PROTOTYPES = top
        for tau in (0.35, 0.40, 0.45, 0.50):
            conf = cfg.model_copy(update={"tau": tau})
            raw = cfg.model_copy(update={"tau": 0.0, "secondary_tau": 0.0, "temperature": 1e6,
                                         "min_similarity": tau})
            sweep[f"confidence_top{top}_tau{tau:.2f}"] = router_accuracy(
                Router(RouterSpec.from_domains(specs, conf), rt.embedder), queries, vecs)["accuracy"]
            sweep[f"raw_cosine_top{top}_tau{tau:.2f}"] = router_accuracy(
                Router(RouterSpec.from_domains(specs, raw), rt.embedder), queries, vecs)["accuracy"]
    router_mod.TOP_PROTOTYPES = 3
    mvecs = rt.embedder.encode([q["query"] for q in multi])
    both = [set(q["domains"]) <= set(rt.router.route(q["query"], query_vector=v).domains) for q, v in zip(multi, mvecs)]
    any_ = [bool(set(q["domains"]) & set(rt.router.route(q["query"], query_vector=v).domains))
            for q, v in zip(multi, mvecs)]
    return {
        "tau": cfg.tau,
        "secondary_tau": cfg.secondary_tau,
        "temperature": cfg.temperature,
        "min_similarity": cfg.min_similarity,
        "default": default,
        "sweep_accuracy": sweep,
        "multi_domain": {"queries": len(multi), "all_labels_activated": round(statistics.mean(both), 4),
                         "some_label_activated": round(statistics.mean(any_), 4)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/retrieval.json"))
    ap.add_argument("--chunk-words", type=int, default=None, help="override retrieval.chunk_words")
    ap.add_argument("--chunk-overlap", type=int, default=None, help="override retrieval.chunk_overlap")
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="twinloop-bench-") as tmp:
        retrieval = {}
        if args.chunk_words:
            retrieval["chunk_words"] = args.chunk_words
        if args.chunk_overlap is not None:
            retrieval["chunk_overlap"] = args.chunk_overlap
        rt = Runtime(load_settings(None, data_dir=tmp, retrieval=retrieval or None))
        start = time.perf_counter()
        report = seed_packs(rt.knowledge, rt.domains)
        build_s = time.perf_counter() - start
        stats = rt.knowledge.stats()
        chunks = sum(s.get("chunks", 0) for s in stats.values())
        docs = sum(s.get("documents", 0) for s in stats.values())
        print(f"built index: {docs:,} documents, {chunks:,} chunks in {build_s:.1f}s "
              f"({build_s / chunks * 1000:.2f}s per 1,000 chunks)")

        queries = read_jsonl("retrieval_queries.jsonl")
        rt.retriever.view().search("warm-up", None)  # load FAISS files and caches once
        retrieval_res = bench_retrieval(rt, queries, args.k)
        router_res = bench_router(rt)

    print(f"\nretrieval on {len(queries)} labelled queries, {chunks:,} chunks")
    print(f"{'mode':<12}{'recall@' + str(args.k):>10}{'p50 ms':>9}{'p95 ms':>9}   by domain")
    for mode in MODES:
        r = retrieval_res[mode]
        by = " ".join(f"{d}={v:.2f}" for d, v in r["recall_by_domain"].items())
        print(f"{mode:<12}{r[f'recall@{args.k}']:>10.3f}{r['latency_ms_p50']:>9.1f}{r['latency_ms_p95']:>9.1f}   {by}")
    print("recall by source data set (PubMedQA/MedQuAD/GDPR titles are indexed, so those are near string match):")
    for ds in retrieval_res["hybrid"]["recall_by_dataset"]:
        print(f"  {ds:<24}" + "".join(f"{m}={retrieval_res[m]['recall_by_dataset'][ds]:.3f}  " for m in MODES))
    d = router_res["default"]
    print(f"\nrouter (τ={router_res['tau']}): accuracy {d['accuracy']:.3f} on {d['queries']} queries; "
          + " ".join(f"{k}={v:.2f}" for k, v in d["by_domain"].items()))
    print("sweep (accuracy):")
    for key, v in router_res["sweep_accuracy"].items():
        print(f"  {key:<28}{v:.3f}")
    m = router_res["multi_domain"]
    print(f"multi-domain: all labels activated {m['all_labels_activated']:.2f}, "
          f"some label {m['some_label_activated']:.2f} ({m['queries']} queries)")

    result = {
        "benchmark": "retrieval",
        "documents": docs,
        "chunks": chunks,
        "chunk_words": rt.settings.retrieval.chunk_words,
        "chunk_overlap": rt.settings.retrieval.chunk_overlap,
        "build_seconds": round(build_s, 2),
        "build_seconds_per_1000_chunks": round(build_s / chunks * 1000, 3),
        "per_domain": {r.domain: {"documents": r.added, "chunks": r.chunks, "seconds": round(r.seconds, 2)}
                       for r in report.reports},
        "k": args.k,
        "retrieval": retrieval_res,
        "router": router_res,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
