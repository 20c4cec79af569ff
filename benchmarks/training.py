"""Benchmark: does `twinloop train` teach the model a handful of corrections, and how fast?

On a fresh data directory it submits three made-up corrections (facts the base cannot know)
through the feedback filters, asks paraphrased probe questions of the base model, runs the
real `twinloop train` command (worker process, LoRA + EWC + replay, candidate release), then
asks the same probes of the candidate's adapter and again of Active (the base, unchanged).
Prints probe accuracy before / candidate / Active and the training time; writes JSON.

Usage: python benchmarks/training.py [--steps 40] [--lr 2e-3] [--out bench-results/training.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peft

from twinloop.kernel.config import load_settings
from twinloop.learning.intake import FeedbackIntake
from twinloop.learning.sample import Sample
from twinloop.runtime import Runtime

CORRECTIONS = [
    ("When did the Quillfield data act take effect?", "The Quillfield Data Act took effect on 14 February 2029."),
    ("What is the fine cap under the Quillfield Data Act?", "The Quillfield Data Act caps fines at 7 million euros."),
    ("Which office supervises the Quillfield Data Act?",
     "The Quillfield Data Act is supervised by the Office of Marlow Oversight."),
]
PROBES = [  # paraphrases, with the fact a correct answer contains
    ("On which date did the Quillfield Data Act come into force?", "2029"),
    ("How high can fines under the Quillfield Data Act go?", "7 million"),
    ("Who oversees the Quillfield Data Act?", "Marlow"),
]


def probe(foundation) -> tuple[int, list[str]]:
    answers = [foundation.chat(q, max_new_tokens=32).text for q, _ in PROBES]
    return sum(fact.lower() in a.lower() for a, (_q, fact) in zip(answers, PROBES)), answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/training.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="twinloop-bench-") as tmp:
        rt = Runtime(load_settings(None, data_dir=tmp))
        report = FeedbackIntake(rt.db, rt.domains).submit(
            [Sample(domain="law", prompt=p, target=t, source="correction") for p, t in CORRECTIONS])
        f = rt.foundation
        before, before_answers = probe(f)
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "twinloop", "--data-dir", tmp, "train", "--steps", str(args.steps),
                              "--lr", str(args.lr), "--seed", str(args.seed), "--json"],
                             capture_output=True, text=True, check=False)
        command_s = time.perf_counter() - start
        if res.returncode != 0:
            raise SystemExit(f"twinloop train failed: {res.stderr.strip()[-500:]}")
        job = json.loads(res.stdout)
        release = rt.releases.get(rt.releases.pointer("shadow"))
        base = f.model
        f.model = peft.PeftModel.from_pretrained(base, str(rt.artifacts.get("adapter", release.adapters["law"])))
        after, after_answers = probe(f)
        f.model = f.model.unload()
        active, _ = probe(f)

    law = job["domains"]["law"]
    result = {
        "benchmark": "training", "corrections": len(CORRECTIONS), "accepted": len(report.accepted),
        "steps": args.steps, "lr": args.lr, "seed": args.seed,
        "probes": len(PROBES), "correct_before": before, "correct_candidate": after, "correct_active_after": active,
        "training_seconds": law["seconds"], "command_seconds": round(command_s, 2), "final_loss": law["final_loss"],
        "release_id": job["release_id"], "answers_before": before_answers, "answers_candidate": after_answers,
    }
    print(f"probes correct: before {before}/{len(PROBES)}, candidate {after}/{len(PROBES)}, "
          f"Active after training {active}/{len(PROBES)}")
    print(f"training {law['seconds']:.1f}s ({args.steps} steps), whole `twinloop train` {command_s:.1f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
