"""Benchmark: the serving loop on the real model — batching, concurrency, adapter overhead.

For concurrency 1, 4 and 8, with batching on (``max_batch_size`` 8) and off (1), it sends
``--requests`` questions from that many client threads in two workloads, and reports
answers/s, generated tokens/s and p50/p95 latency side by side:
``answer`` — the full answer pipeline (route → retrieve → prompt with five sources, ~1k
tokens → generate → verify), where prefill of the long prompt dominates; and ``generate`` —
plain chat generation of the same questions (short prompts), where decoding dominates. Then, at the highest concurrency with batching on, it repeats the run
with every domain served through a LoRA adapter (r=16 on q/v, paper App. A) and reports the
adapter-vs-base overhead in percent (the paper reports 5.6 %). Greedy decoding with a fixed
``max_tokens`` keeps the work per request comparable. Writes JSON.

Usage: python benchmarks/serving.py [--requests 16] [--max-tokens 48] [--out bench-results/serving.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _releases import candidate_with_adapters

from twinloop.kernel.config import load_settings
from twinloop.knowledge.seed import seed_packs
from twinloop.runtime import Runtime
from twinloop.serving.pipeline import AnswerRequest
from twinloop.serving.service import Service

QUESTIONS = [
    "What does the GDPR say about the right to erasure?",
    "When must a personal data breach be notified to the supervisory authority?",
    "What are the symptoms of Lyme disease?",
    "How is high blood pressure treated?",
    "What was the change in revenue between 2018 and 2019?",
    "What is the capital of Italy?",
    "Which conditions make processing of personal data lawful?",
    "What causes type 2 diabetes?",
]


def answer_call(service: Service, question: str, max_tokens: int) -> int:
    return service.answer(AnswerRequest(query=question, max_tokens=max_tokens)).completion_tokens


def generate_call(service: Service, question: str, max_tokens: int) -> int:
    pending = service.submit_generate([{"role": "user", "content": question}], max_tokens=max_tokens)
    return pending.result().completion_tokens


def adapter_generate_call(service: Service, question: str, max_tokens: int) -> int:
    pending = service.submit_generate([{"role": "user", "content": question}], max_tokens=max_tokens, domain="law")
    return pending.result().completion_tokens


WORKLOADS = {"answer": answer_call, "generate": generate_call}


def run(service: Service, concurrency: int, n_requests: int, max_tokens: int, call=answer_call) -> dict:
    latencies: list[float] = []
    tokens: list[int] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def client() -> None:
        nonlocal errors
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                n_tokens = call(service, QUESTIONS[i % len(QUESTIONS)], max_tokens)
            except Exception:  # noqa: BLE001 — a benchmark counts failures instead of stopping
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(n_tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stats = service.engine.stats()
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "errors": errors,
        "wall_seconds": round(wall, 2),
        "answers_per_second": round(len(latencies) / wall, 3),
        "tokens_per_second": round(sum(tokens) / wall, 2),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
        "mean_completion_tokens": round(statistics.mean(tokens), 1) if tokens else None,
        "engine": stats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--overhead-concurrency", type=int, default=4,
                    help="concurrency of the adapter-vs-base comparison (4: stable on 2 cores)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/serving.json"))
    args = ap.parse_args()

    results: dict = {"benchmark": "serving", "requests_per_run": args.requests, "max_tokens": args.max_tokens,
                     "runs": []}
    with tempfile.TemporaryDirectory(prefix="twinloop-bench-") as tmp:
        base = load_settings(None, data_dir=tmp)
        rt = Runtime(base)
        # A small real index so answers are retrieved and verified as in production.
        seed_packs(rt.knowledge, rt.domains, ["law", "fin", "general"])
        rt.foundation  # load once; every Service below shares it
        for batching in (True, False):
            batch = base.serving.max_batch_size if batching else 1
            rt.settings = load_settings(None, data_dir=tmp, serving={"max_batch_size": batch})
            service = Service(rt)
            service.start()
            try:
                run(service, 1, 2, args.max_tokens)  # warm-up
                for workload, call in WORKLOADS.items():
                    for c in args.concurrency:
                        r = run(service, c, args.requests, args.max_tokens, call)
                        r["batching"] = batching
                        r["workload"] = workload
                        results["runs"].append(r)
                        print(f"{workload:<8} batching={'on ' if batching else 'off'} concurrency={c}: "
                              f"{r['answers_per_second']:.2f} answers/s, {r['tokens_per_second']:.1f} tok/s, "
                              f"p50 {r['latency_p50_s']}s, p95 {r['latency_p95_s']}s, errors {r['errors']}")
            finally:
                service.stop()

        # Adapter overhead: same load with every domain on a LoRA adapter — a real release,
        # swapped in and rolled back like any other.
        rt.settings = base
        plain = rt.releases.ensure_base(rt.router.spec.to_json(), rt.knowledge.current_revision(),
                                        rt.foundation.name).id
        adapted = candidate_with_adapters(rt, Path(tmp))
        service = Service(rt)
        service.start()
        c = args.overhead_concurrency
        overhead: dict = {}
        try:
            for workload, call in WORKLOADS.items():
                if service.active.id != plain:
                    service.control.rollback(actor="bench", reason="benchmark", to=plain)
                    rt.releases.set_status(adapted, "superseded")  # may be swapped in again
                run(service, 1, 2, args.max_tokens, call)
                base_run = run(service, c, args.requests, args.max_tokens, call)
                service.control.swap(adapted, actor="bench", reason="benchmark", force=True)
                if workload == "generate":
                    # Plain generation has no domain; route it through the adapter explicitly.
                    call = adapter_generate_call
                run(service, 1, 2, args.max_tokens, call)
                adapter_run = run(service, c, args.requests, args.max_tokens, call)
                pct = (base_run["tokens_per_second"] / adapter_run["tokens_per_second"] - 1) * 100
                overhead[workload] = {"concurrency": c, "base": base_run, "adapter": adapter_run,
                                      "overhead_percent_tokens_per_second": round(pct, 1)}
        finally:
            service.stop()
    results["adapter_overhead"] = overhead
    results["batching_gain"] = {}
    print("\nworkload  concurrency  tok/s batched  tok/s one-by-one  gain")
    for workload in WORKLOADS:
        on = {r["concurrency"]: r for r in results["runs"] if r["batching"] and r["workload"] == workload}
        off = {r["concurrency"]: r for r in results["runs"] if not r["batching"] and r["workload"] == workload}
        gains = {c: round(on[c]["tokens_per_second"] / off[c]["tokens_per_second"], 2) for c in on if c in off}
        results["batching_gain"][workload] = gains
        for c in sorted(gains):
            print(f"{workload:<8}  {c:>11}  {on[c]['tokens_per_second']:>13.1f}  {off[c]['tokens_per_second']:>16.1f}"
                  f"  {gains[c]:.2f}x")
    for workload, o in overhead.items():
        print(f"adapter vs base, {workload}, concurrency {o['concurrency']}: {o['base']['tokens_per_second']:.1f} vs "
              f"{o['adapter']['tokens_per_second']:.1f} tok/s → overhead {o['overhead_percent_tokens_per_second']:.1f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
