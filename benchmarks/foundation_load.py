"""Benchmark: cold (GGUF de-quantisation) vs warm (verified cache) start of `twinloop ask`.

Runs the real CLI as separate processes on a fresh data directory:
  1. cold   — no cache: de-quantise the GGUF, write the verified cache;
  2. warm   — the same command again: load from the cache after its SHA-256 check;
  3. corrupt — one byte of the cached weights flipped: detected, rebuilt from the GGUF.
Prints the figures side by side and writes them as JSON.

Usage: python benchmarks/foundation_load.py [--out bench-results/foundation_load.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "What is the capital of France?"


def ask(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINLOOP_")}
    env["TWINLOOP_DATA_DIR"] = str(data_dir)
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "twinloop", "ask", QUESTION, "--json"],
        capture_output=True, text=True, env=env, check=False,
    )
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"twinloop ask failed: {res.stderr.strip()}")
    doc = json.loads(res.stdout)
    doc["process_seconds"] = round(wall, 3)
    return doc


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/foundation_load.json"))
    ap.add_argument("--repeats", type=int, default=3, help="warm runs to take the median of")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="twinloop-bench-") as tmp:
        data_dir = Path(tmp)
        cold = ask(data_dir)
        warm_runs = [ask(data_dir) for _ in range(args.repeats)]
        weights = next((data_dir / "cache" / "foundation").glob("*/model.safetensors"))
        flip_byte(weights)
        corrupt = ask(data_dir)

    warm_load = statistics.median(r["load_seconds"] for r in warm_runs)
    warm_model = statistics.median(r["model_load_seconds"] for r in warm_runs)
    warm_proc = statistics.median(r["process_seconds"] for r in warm_runs)
    result = {
        "benchmark": "foundation_load",
        "model": cold["model"],
        "question": QUESTION,
        "cold": {"load_seconds": cold["load_seconds"], "model_load_seconds": cold["model_load_seconds"], "process_seconds": cold["process_seconds"],
                 "from_cache": cold["loaded_from_cache"], "answer": cold["answer"]},
        "warm": {"load_seconds_median": warm_load, "model_load_seconds_median": warm_model, "process_seconds_median": warm_proc,
                 "from_cache": all(r["loaded_from_cache"] for r in warm_runs),
                 "runs": [r["load_seconds"] for r in warm_runs], "answer": warm_runs[0]["answer"]},
        "corrupt_cache": {"load_seconds": corrupt["load_seconds"], "model_load_seconds": corrupt["model_load_seconds"], "from_cache": corrupt["loaded_from_cache"],
                          "answer": corrupt["answer"]},
        "weights_speedup": round(cold["model_load_seconds"] / warm_model, 2),
        "load_speedup": round(cold["load_seconds"] / warm_load, 2),
        "process_speedup": round(cold["process_seconds"] / warm_proc, 2),
    }
    # "weights" = finding, verifying and loading the model; "load" adds importing torch and
    # transformers; "whole ask" is the process from start to exit, answer included.
    print(f"{'run':<16}{'weights s':>11}{'load s':>9}{'whole ask s':>13}{'from cache':>12}")
    for name, r, w, l, p in (
        ("cold (GGUF)", cold, cold["model_load_seconds"], cold["load_seconds"], cold["process_seconds"]),
        ("warm (median)", warm_runs[0], warm_model, warm_load, warm_proc),
        ("corrupt cache", corrupt, corrupt["model_load_seconds"], corrupt["load_seconds"], corrupt["process_seconds"]),
    ):
        print(f"{name:<16}{w:>11.2f}{l:>9.2f}{p:>13.2f}{str(r['loaded_from_cache']):>12}")
    print(f"speed-up warm vs cold: weights {result['weights_speedup']}x, load {result['load_speedup']}x, "
          f"whole command {result['process_speedup']}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
