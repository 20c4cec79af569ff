"""Benchmark: swap and rollback latency, and failed requests while swapping under load (paper
§5.3; docs/DESIGN.md "Releasing") — on the real model, its real adapters and a real server.

1. Latency: ``--ops`` swaps and as many rollbacks between the base release and a candidate
   carrying a LoRA adapter (r=16 on q/v) per domain, both resident (as after a canary).
   Each operation is timed whole (gate check, registry transaction with its audit event and
   fsync, in-memory pointer move) and in parts: ``commit_ms`` (the SQLite transaction) and
   ``switch_ms`` (the pointer move under the lock). p50/p99 of each.
2. Under load: ``--clients`` threads send ``/v1/generate`` and ``/v1/answer`` requests to a
   real uvicorn server on loopback for ``--seconds`` while an admin client swaps or rolls
   back every second; reports requests, failures (any non-200), and how many each release
   served.

The paper promises swap and rollback under 100 ms (§5.3, §7). Between operations the
candidate's ``rolled_back`` mark is cleared (outside the timed region) so the same two
resident releases can alternate. Writes JSON.

Usage: python benchmarks/release.py [--ops 100] [--seconds 30] [--clients 4] [--out bench-results/release.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _releases import candidate_with_adapters

from twinloop.api import create_app
from twinloop.api.server import ServerThread
from twinloop.kernel.config import load_settings
from twinloop.knowledge.seed import seed_packs
from twinloop.runtime import Runtime
from twinloop.serving.service import Service

KEY = "bench-admin-key-0001"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": pct(values, 0.50), "p99_ms": pct(values, 0.99),
            "max_ms": round(max(values), 3), "mean_ms": round(statistics.fmean(values), 3)}


def latency(service: Service, a: str, b: str, ops: int) -> dict:
    control, reg = service.control, service.runtime.releases
    control.loader.load(b)  # resident, as after its canary
    swaps, rollbacks = [], []
    for _ in range(ops):
        t = time.perf_counter()
        s = control.swap(b, actor="bench", reason="benchmark", force=True)
        swaps.append({"total_ms": (time.perf_counter() - t) * 1000, **s})
        t = time.perf_counter()
        r = control.rollback(actor="bench", reason="benchmark", to=a)
        rollbacks.append({"total_ms": (time.perf_counter() - t) * 1000, **r})
        reg.set_status(b, "superseded")  # untimed: let the same candidate be swapped in again
    out = {}
    for name, rows in (("swap", swaps), ("rollback", rollbacks)):
        out[name] = {part: summary([row[part] for row in rows]) for part in ("total_ms", "commit_ms", "switch_ms")}
    return out


def under_load(service: Service, a: str, b: str, seconds: float, clients: int, max_tokens: int) -> dict:
    app = create_app(service, service.settings)
    results: list[tuple[str, int, str | None, float]] = []
    lock = threading.Lock()
    stop = threading.Event()
    moves: list[dict] = []
    with ServerThread(app) as server:
        def client(i: int) -> None:
            # Mostly short generations (many requests cross each swap), every fourth a full
            # answer (route, retrieve, adapter, verify: the path a swap changes most).
            kinds = ("generate", "generate", "generate", "answer")
            with httpx.Client(base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as c:
                n = 0
                while not stop.is_set():
                    kind = kinds[(i + n) % len(kinds)]
                    n += 1
                    t = time.perf_counter()
                    if kind == "generate":
                        r = c.post("/v1/generate", json={"prompt": "Name one planet.", "max_tokens": max_tokens})
                    else:
                        r = c.post("/v1/answer", json={"query": "What is a bond coupon?", "max_tokens": max_tokens,
                                                       "user_id": f"u{i}"})
                    rel = r.json().get("release_id") if r.status_code == 200 and kind == "answer" else None
                    with lock:
                        results.append((kind, r.status_code, rel, (time.perf_counter() - t) * 1000))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        admin = httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"})
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < seconds:
            time.sleep(1.0)
            if i % 2 == 0:
                r = admin.post("/v1/admin/swap", json={"release": b, "force": True, "reason": "benchmark"})
            else:
                r = admin.post("/v1/admin/rollback", json={"to": a, "reason": "benchmark"})
                service.runtime.releases.set_status(b, "superseded")
            moves.append({"status": r.status_code, **({k: r.json().get(k) for k in ("action", "commit_ms", "switch_ms")}
                                                       if r.status_code == 200 else {"error": r.text})})
            i += 1
        stop.set()
        for t in threads:
            t.join()
        admin.close()
    failed = [r for r in results if r[1] != 200]
    served = {}
    for _, code, rel, _ in results:
        if code == 200 and rel:
            served[rel] = served.get(rel, 0) + 1
    return {"seconds": seconds, "clients": clients, "requests": len(results), "failed": len(failed),
            "failed_examples": [{"kind": k, "status": c} for k, c, _, _ in failed[:5]],
            "moves": len(moves), "moves_ok": sum(1 for m in moves if m["status"] == 200),
            "answers_by_release": served,
            "request_latency": summary([ms for *_, ms in results]) if results else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=100, help="swaps and rollbacks each (at least 100 for a p99)")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of the under-load run")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("bench-results/release.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="twinloop-bench-") as tmp:
        settings = load_settings(None, data_dir=Path(tmp) / "data", api={"api_keys": {KEY: "admin"},
                                                                          "rate_limit_per_minute": 1_000_000})
        rt = Runtime(settings)
        seed_packs(rt.knowledge, rt.domains, ["fin", "general"])
        a = rt.releases.ensure_base(rt.router.spec.to_json(), rt.knowledge.current_revision(), rt.foundation.name).id
        b = candidate_with_adapters(rt, Path(tmp))  # before any Service wraps the base model
        service = Service(rt)  # not started yet: swaps and rollbacks need no generation
        lat = latency(service, a, b, args.ops)
        load = under_load(service, a, b, args.seconds, args.clients, args.max_tokens)  # the app starts it

    result = {"benchmark": "release", "model": rt.foundation.name, "ops": args.ops, "latency": lat,
              "under_load": load}
    print(f"{'operation':<9} {'part':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for op in ("swap", "rollback"):
        for part in ("total_ms", "commit_ms", "switch_ms"):
            s = lat[op][part]
            print(f"{op:<9} {part[:-3]:<10} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.3f}")
    print(f"under load: {load['requests']} requests from {load['clients']} clients in {load['seconds']:.0f} s, "
          f"{load['moves_ok']}/{load['moves']} swaps/rollbacks, {load['failed']} failed; served by release: "
          f"{load['answers_by_release']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
