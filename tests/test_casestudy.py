"""The narrated demo's plumbing end to end on the tiny model (every step, real server, real
worker process); the real-model run is ``make demo``."""

from __future__ import annotations

from twinloop.kernel.config import load_settings
from twinloop.showcase.casestudy import run_case_study

TINY = {
    "foundation": {"source": "tiny", "threads": 1},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "training": {"steps": 3, "batch_size": 2, "warmup_steps": 1},
    # The tiny model's answers are noise: its QA pass rate is 0, so the gate is opened here
    # to exercise every later step (the gates' own tests are in test_release_*).
    # Its latency gate compares two timed runs on a shared 2-core machine (measured: 531 ms
    # against a 526 ms limit with other work on the cores); the gate's own tests are in
    # test_release_qa, so here it only has to let a working candidate through.
    "qa": {"pass_rate": 0.0, "citation_rate": 0.0, "regression_tolerance": 1.0, "latency_factor": 10.0},
    "serving": {"answer_max_new_tokens": 4},
    "retrieval": {"k": 2},  # the tiny byte-level tokenizer makes five sources too long a prompt
    # On the tiny model a LoRA adapter is a large share of the compute, so the candidate is
    # measurably slower; the latency check's own tests are in test_release_canary.
    "canary": {"latency_margin": 10.0},
}


def test_every_step_runs_and_is_reported(tmp_path):
    steps = []
    report = run_case_study(load_settings(None, data_dir=tmp_path / "data"), on_step=steps.append, extra=TINY)
    titles = [s.title for s in report.steps]
    assert len(titles) == 10 and steps == report.steps
    assert [s.at for s in report.steps] == sorted(s.at for s in report.steps)
    s = report.summary
    assert s["feedback"] == {"accepted": 4, "quarantined": 1}  # PII redacted and kept; poison quarantined
    assert s["qa"]["passed"] and s["canary"]["status"] == "promoted"
    assert s["swap_ms"] > 0 and s["automatic_rollback"] is True
    assert s["audit_log_intact"] and s["audit_events"] >= 15
    assert s["ingest_to_answer_s"] > 0
    # A second run starts from a clean demo folder.
    again = run_case_study(load_settings(None, data_dir=tmp_path / "data"), extra=TINY)
    assert again.summary["feedback"] == {"accepted": 4, "quarantined": 1}
