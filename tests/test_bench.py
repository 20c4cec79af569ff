"""``twinloop bench``: the table of programs, headline figures, failures recorded, the summary.

No real benchmark runs here: headline extraction reads the recorded results in docs/bench/
(real program output) plus a release document shaped like ``benchmarks/release.py`` writes,
and the runner is driven with tiny fake programs in a temporary benchmarks folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from twinloop.kernel.errors import ConfigError, InvalidInputError
from twinloop.showcase import bench
from twinloop.showcase.bench import BenchSpec, BenchSummary, run_benchmarks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "bench"


def _doc(name: str) -> dict:
    return json.loads((DOCS / name).read_text(encoding="utf-8"))


def _latency(p50: float, p99: float) -> dict:
    return {"n": 100, "p50_ms": p50, "p99_ms": p99, "max_ms": p99 + 1, "mean_ms": p50}


# Shaped like benchmarks/release.py's output (no recorded run in docs/bench yet).
RELEASE_DOC = {
    "benchmark": "release", "model": "SmolLM2-135M-Instruct.Q4_1", "ops": 100,
    "latency": {op: {"total_ms": _latency(p50, p99), "commit_ms": _latency(1.0, 2.0), "switch_ms": _latency(0.01, 0.02)}
                for op, p50, p99 in (("swap", 4.2, 9.8), ("rollback", 3.9, 8.7))},
    "under_load": {"seconds": 10.0, "clients": 4, "requests": 57, "failed": 0, "failed_examples": [],
                   "moves": 10, "moves_ok": 10, "answers_by_release": {"rel_a": 14, "rel_b": 13},
                   "request_latency": _latency(600.0, 1500.0)},
}


# -- the table of programs ---------------------------------------------------------------------


def test_specs_cover_every_program():
    assert {"retrieval", "serving", "training", "release", "foundation_load"} <= set(bench.SPECS)
    for spec in bench.SPECS.values():
        assert (ROOT / "benchmarks" / spec.script).is_file(), spec.script


@pytest.mark.parametrize("name", sorted(bench.SPECS))
def test_spec_flags_exist_in_the_program(name):
    """Every flag the table passes is one the program's argparse declares (catches drift)."""
    spec = bench.SPECS[name]
    source = (ROOT / "benchmarks" / spec.script).read_text(encoding="utf-8")
    assert '"--out"' in source
    for arg in (*spec.full_args, *(spec.quick_args or ())):
        if arg.startswith("--"):
            assert f'"{arg}"' in source, f"{spec.script} has no {arg}"


def test_quick_skip_says_why():
    for spec in bench.SPECS.values():
        assert spec.quick_args is not None or spec.quick_skip, spec.name


def test_unknown_name_is_named():
    with pytest.raises(InvalidInputError, match="'nope'"):
        bench.select(["retrieval", "nope"])


def test_missing_benchmarks_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        run_benchmarks(benchmarks_dir=tmp_path / "absent", out_dir=tmp_path / "out")


# -- headline figures from real-shaped output -------------------------------------------------

HEADLINE_CASES = {
    "foundation_load": (bench.foundation_headlines, lambda: _doc("foundation_load.json"),
                        {"cold load (s)": 20.046, "warm load, median (s)": 4.431, "load speed-up (x)": 4.52,
                         "corrupt cache rebuilt": True}),
    "retrieval": (bench.retrieval_headlines, lambda: _doc("retrieval_10k.json"),
                  {"recall@5 hybrid": 0.9333, "recall@5 hybrid-rrf": 0.9231, "recall@5 bm25": 0.941,
                   "recall@5 dense": 0.8769, "p95 ms hybrid": 32.93, "router accuracy": 0.932,
                   "chunks": 11405}),
    "serving": (bench.serving_headlines, lambda: _doc("serving_overhead.json"),
                {"batching gain answer c=4 (x)": 1.07, "batching gain generate c=4 (x)": 2.31,
                 "adapter overhead answer c=4 (%)": 2.9, "adapter overhead generate c=4 (%)": 6.1,
                 "failed requests": 0}),
    "serving-older-shape": (bench.serving_headlines, lambda: _doc("serving_full.json"),
                            {"batching gain generate c=8 (x)": 2.55, "adapter overhead answer c=8 (%)": 51.4}),
    "training": (bench.training_headlines, lambda: _doc("training.json"),
                 {"probes correct before": "0/3", "probes correct, candidate": "3/3",
                  "probes correct, Active after": "0/3", "training (s)": 46.846, "training steps": 40}),
    "release": (bench.release_headlines, lambda: RELEASE_DOC,
                {"swap p50 (ms)": 4.2, "swap p99 (ms)": 9.8, "rollback p50 (ms)": 3.9, "rollback p99 (ms)": 8.7,
                 "failed requests under load": 0, "requests under load": 57,
                 "swaps/rollbacks under load ok": "10/10"}),
}


@pytest.mark.parametrize("case", HEADLINE_CASES, ids=list(HEADLINE_CASES))
def test_headlines(case):
    extract, load, expected = HEADLINE_CASES[case]
    got = extract(load())
    assert {k: got.get(k) for k in expected} == expected


def test_each_spec_uses_its_extractor():
    assert bench.SPECS["release"].headlines is bench.release_headlines
    assert bench.SPECS["retrieval"].headlines is bench.retrieval_headlines


# -- running: fake programs in a temporary benchmarks folder ----------------------------------

GOOD = """
    import argparse, json, pathlib
    ap = argparse.ArgumentParser(); ap.add_argument("--size", type=int, default=10); ap.add_argument("--out")
    a = ap.parse_args()
    pathlib.Path(a.out).write_text(json.dumps({"benchmark": "good", "size": a.size}))
    print("figures printed")
"""
BAD = """
    import sys
    print("loading the model", file=sys.stderr)
    print("RuntimeError: out of memory", file=sys.stderr)
    sys.exit(1)
"""
SLOW = """
    import time
    time.sleep(60)
"""


def _size_headline(doc):
    return {"size": doc["size"]}


@pytest.fixture
def fake_benchmarks(tmp_path) -> Path:
    folder = tmp_path / "checkout" / "benchmarks"
    folder.mkdir(parents=True)
    for name, body in (("good.py", GOOD), ("bad.py", BAD), ("slow.py", SLOW)):
        (folder / name).write_text(textwrap.dedent(body), encoding="utf-8")
    return folder


def _specs(**extra: BenchSpec) -> dict[str, BenchSpec]:
    specs = {
        "bad": BenchSpec("bad", "bad.py", "always fails", _size_headline),
        "good": BenchSpec("good", "good.py", "writes its JSON", _size_headline, full_args=("--size", "100"),
                          quick_args=("--size", "3")),
    }
    specs.update(extra)
    return specs


def test_a_failing_program_is_recorded_and_the_others_still_run(fake_benchmarks, tmp_path):
    out = tmp_path / "results"
    lines: list[str] = []
    summary = run_benchmarks(benchmarks_dir=fake_benchmarks, out_dir=out, specs=_specs(), progress=lines.append)

    bad, good = summary.benchmarks  # table order, the failure first
    assert (bad.status, bad.exit_code, bad.error) == ("failed", 1, "exit code 1")
    assert bad.stderr_tail[-1] == "RuntimeError: out of memory"
    assert good.status == "ok" and good.headlines == {"size": 100}
    assert good.result == {"benchmark": "good", "size": 100}
    assert "benchmarks/good.py --size 100 --out" in good.command
    assert (out / "good.stdout.log").read_text().strip() == "figures printed"
    assert any("bad: failed" in line for line in lines)

    doc = json.loads((out / "summary.json").read_text())
    assert [b["status"] for b in doc["benchmarks"]] == ["failed", "ok"]
    assert doc["mode"] == "full" and doc["machine"]["cpu_count"] >= 1 and doc["machine"]["python"]
    assert "torch" in doc["machine"] and "git_commit" in doc


def test_quick_uses_quick_args_and_skips_programs_without_them(fake_benchmarks, tmp_path):
    specs = _specs(big=BenchSpec("big", "good.py", "too big for quick", _size_headline, quick_args=None,
                                 quick_skip="no subset option"))
    summary = run_benchmarks(["good", "big"], quick=True, benchmarks_dir=fake_benchmarks, out_dir=tmp_path / "q",
                             specs=specs)
    good, big = summary.benchmarks
    assert good.headlines == {"size": 3}
    # Named explicitly, a program without quick sizes runs at its full size.
    assert big.status == "ok" and big.headlines == {"size": 10}

    summary = run_benchmarks(quick=True, benchmarks_dir=fake_benchmarks, out_dir=tmp_path / "q3",
                             specs={"big": specs["big"], "good": specs["good"]})
    big, good = summary.benchmarks
    assert big.status == "skipped" and "no subset option" in big.error
    assert good.status == "ok"


def test_default_quick_output_is_apart_from_full(fake_benchmarks):
    summary = run_benchmarks(["good"], quick=True, benchmarks_dir=fake_benchmarks, specs=_specs())
    assert Path(summary.files["json"]) == fake_benchmarks.parent / "bench-results" / "quick" / "summary.json"


def test_timeout_and_bad_json_are_failures(fake_benchmarks, tmp_path):
    (fake_benchmarks / "nojson.py").write_text("import sys\nprint('forgot --out')\n")
    specs = {
        "slow": BenchSpec("slow", "slow.py", "hangs", _size_headline, timeout_s=0.5),
        "nojson": BenchSpec("nojson", "nojson.py", "writes nothing", _size_headline),
        "shape": BenchSpec("shape", "good.py", "JSON without the expected key", lambda doc: {"x": doc["missing"]}),
    }
    summary = run_benchmarks(benchmarks_dir=fake_benchmarks, out_dir=tmp_path / "r", specs=specs)
    slow, nojson, shape = summary.benchmarks
    assert slow.status == "failed" and slow.error == "timed out after 0.5 s" and slow.seconds < 10
    assert nojson.status == "failed" and "no readable JSON" in nojson.error
    assert shape.status == "failed" and "'missing'" in shape.error and shape.result["size"] == 10


def test_a_stale_result_is_not_read_as_this_runs(fake_benchmarks, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "bad.json").write_text(json.dumps({"size": 1}))
    summary = run_benchmarks(["bad"], benchmarks_dir=fake_benchmarks, out_dir=out, specs=_specs())
    assert summary.benchmarks[0].status == "failed" and not (out / "bad.json").exists()


# -- the Markdown summary ----------------------------------------------------------------------


def test_markdown_has_a_table_per_benchmark():
    records = [
        bench.BenchRecord(name, "ok", command=f"python benchmarks/{name}.py --out bench-results/{name}.json",
                          headlines=extract(load()))
        for name, (extract, load, _) in HEADLINE_CASES.items() if name != "serving-older-shape"
    ]
    records.append(bench.BenchRecord("broken", "failed", command="python benchmarks/broken.py", exit_code=1,
                                     error="exit code 1", stderr_tail=["Traceback", "ValueError: boom"]))
    summary = BenchSummary(mode="quick", created="2025-01-01T00:00:00+00:00", seconds=12.0, git_commit="a" * 40,
                           git_dirty=True, machine=bench.machine_info(), benchmarks=records)
    md = bench.render_markdown(summary)

    for name in ("foundation_load", "retrieval", "serving", "training", "release"):
        assert f"## {name}\n" in md
        assert f"`python benchmarks/{name}.py --out bench-results/{name}.json`" in md
    assert "| recall@5 hybrid | 0.9333 |" in md
    assert "| swap p99 (ms) | 9.8 |" in md
    assert "| probes correct, candidate | 3/3 |" in md
    assert "| corrupt cache rebuilt | yes |" in md
    assert "**failed**: exit code 1" in md and "ValueError: boom" in md
    assert "aaaaaaaaaaaa (uncommitted changes)" in md


@pytest.mark.parametrize(("value", "cell"), [(0.93333, "0.9333"), (46.846, "46.85"), (11405, "11,405"),
                                             (True, "yes"), (None, "–"), ("3/3", "3/3"), (123456.7, "123,457")])
def test_format_value(value, cell):
    assert bench.format_value(value) == cell


def test_cli_unknown_benchmark_is_one_line_exit_2():
    res = subprocess.run([sys.executable, "-m", "twinloop", "bench", "--only", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown benchmark 'nope'" in res.stderr and "Traceback" not in res.stderr
