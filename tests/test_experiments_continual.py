"""The continual-learning experiment (paper §6): plumbing on the tiny model, sanity on the real one.

The real-model test runs ``twinloop eval --quick`` as a user would and checks ranges and
orderings that must hold whatever the exact numbers: sanity, not exact figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from twinloop.kernel.errors import InvalidInputError
from twinloop.showcase.experiments.continual import EvalConfig, quick_config, run
from twinloop.showcase.experiments.load import LoadGenerator
from twinloop.showcase.experiments.methods import ServiceUnavailable
from twinloop.showcase.experiments.report import PLOTS, REPORT_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINLOOP_")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "twinloop", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _check_matrix(r: list[list[float | None]], n: int) -> None:
    assert len(r) == n and all(len(row) == n for row in r)
    for i, row in enumerate(r):
        for j, v in enumerate(row):
            if j <= i:
                assert v is not None and 0.0 <= v <= 1.0, (i, j, v)
            else:
                assert v is None, (i, j, v)


# -- pieces ----------------------------------------------------------------------------------


class _Record:
    def __init__(self, finish_reason: str) -> None:
        self.finish_reason = finish_reason


def test_load_generator_counts_served_and_failed():
    calls = []

    def call(question: str, domain: str):
        calls.append(question)
        if question == "refused":
            raise ServiceUnavailable("being trained")
        return _Record("timeout" if question == "slow" else "stop")

    with LoadGenerator(call, [("ok", "law"), ("refused", "law"), ("slow", "law")], interval_s=0.01) as load:
        time.sleep(0.2)
    s = load.stats
    assert s.sent == len(calls) >= 3
    assert calls[:3] == ["ok", "refused", "slow"]  # round-robin, first one at once
    assert s.served == calls.count("ok") and s.failed == s.sent - s.served
    assert any("ServiceUnavailable" in e for e in s.errors) and any("timeout" in e for e in s.errors)
    assert len(s.latencies_ms) == s.served


def test_load_generator_probes_an_empty_window_once():
    # An update that takes no time (Static) is still probed by one request.
    with LoadGenerator(lambda q, d: _Record("stop"), [("q", "law")], interval_s=10) as load:
        pass
    assert load.stats.sent == 1 and load.stats.served == 1


def test_load_generator_request_in_flight_finishes_before_exit():
    started = threading.Event()

    def slow(q: str, d: str):
        started.set()
        time.sleep(0.2)
        return _Record("stop")

    with LoadGenerator(slow, [("q", "law")], interval_s=10) as load:
        started.wait(2)
    assert load.stats.served == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ("Static", "Oracle")}, "unknown method 'Oracle'"),
    ({"methods": ()}, "methods is empty"),
    ({"steps": 0}, "steps = 0"),
    ({"cycles": 4}, "need 12 facts"),
    ({"domains": ("law", "art")}, "unknown domain 'art'"),
    ({"probes_per_fact": 4}, "probes_per_fact = 4"),
    ({"lr": -1.0}, "lr = -1.0"),
])
def test_config_names_the_bad_value(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        EvalConfig(**kwargs)


def test_quick_config_is_the_ci_shape(tmp_path):
    cfg = quick_config()
    assert cfg.methods == ("Static", "NaiveAdapters", "TwinLoop")
    assert cfg.cycles == 1 and cfg.domains == ("law", "med") and cfg.facts_per_step == 2
    assert not cfg.report
    # Lighter consolidation for CI, passed to the adapter methods' settings.
    from twinloop.kernel.config import load_settings
    from twinloop.showcase.experiments.methods import method_settings

    settings = method_settings(load_settings(), tmp_path / "unused", cfg.params())
    assert settings.consolidation.model_paraphrases == 0 and settings.consolidation.distill_prompts == 8


def test_cli_bad_method_is_one_line_exit_2(tmp_path):
    res = _run_cli("--data-dir", str(tmp_path / "d"), "eval", "--methods", "Static,Oracle",
                   "--out", str(tmp_path / "out"), timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown method 'Oracle'" in lines[0]
    assert "Traceback" not in res.stderr


# -- end to end on the tiny model ------------------------------------------------------------


@pytest.mark.timeout(600)
def test_plumbing_end_to_end_on_the_tiny_model(tmp_path, tiny_settings):
    """Every stage runs on real pieces (Service, intake, Shadow worker, swap, in-place full
    fine-tune, report); the tiny random model's accuracy means nothing and is not checked."""
    cfg = EvalConfig(domains=("law",), cycles=2, facts_per_step=1, probes_per_fact=1,
                     methods=("Static", "IndexOnly", "TwinLoop", "FullFineTune"), steps=2, batch_size=2, max_tokens=4,
                     load_interval_s=0.3, real_cases_per_domain=1, foundation={"source": "tiny"}, report=True)
    lines: list[str] = []
    out = tmp_path / "eval"
    doc = run(cfg, out, settings=tiny_settings, progress=lines.append)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config"]["methods"] == ["Static", "IndexOnly", "TwinLoop", "FullFineTune"]
    assert set(on_disk["methods"]) == {"Static", "IndexOnly", "TwinLoop", "FullFineTune"}
    assert on_disk["partial"] is False
    assert "commit" in on_disk["git"] and "dirty" in on_disk["git"]
    assert [t["name"] for t in on_disk["tasks"]] == ["c1-law", "c2-law"]
    for name, m in doc["methods"].items():
        _check_matrix(m["R"], 2)
        assert len(m["steps"]) == 2 and len(m["curve"]) == 2
        assert 0.0 <= m["availability"] <= 1.0 and m["requests_during_updates"] >= 2
        assert m["real_qa"]["before"]["cases"] == 1 and m["real_qa"]["after"]["cases"] == 1
    tl = doc["methods"]["TwinLoop"]
    assert tl["availability"] == 1.0
    assert tl["rollbacks"] == []
    for step in tl["steps"]:
        u = step["update"]
        assert step["active_release"] == u["release_id"]  # R measured the release just swapped in
        assert u["release_id"].startswith("rel_") and u["train_s"] > 0 and u["train_cpu_s"] > 0
        assert u["ingest_s"] > 0 and u["samples"] == 2 and u["cited_tries"] >= 1
    ff = doc["methods"]["FullFineTune"]
    assert all(s["update"]["train_cpu_s"] > 0 and s["update"]["release_id"] is None for s in ff["steps"])
    refused = [e for s in ff["steps"] for e in s["load"]["errors"]]
    assert all("ServiceUnavailable" in e for e in refused)
    assert doc["methods"]["Static"]["train_cpu_s_total"] == 0
    io = doc["methods"]["IndexOnly"]
    assert io["train_cpu_s_total"] == 0 and all(s["update"]["ingest_s"] > 0 for s in io["steps"])
    assert any("[TwinLoop] c2-law" in line for line in lines)

    report = (out / REPORT_FILE).read_text()
    for heading in ("6.2.1 Adaptation speed", "6.2.2 Catastrophic forgetting", "6.2.3 Learning curves",
                    "6.2.4 Availability", "6.2.5 Ablation study", "Real QA cases"):
        assert heading in report
    assert "19.1 %" in report and "6.9 %" in report  # the paper's figures, row by row
    for png in PLOTS:
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, png
        assert f"]({png})" in report


# -- the quick mode on the real model --------------------------------------------------------


@pytest.mark.real
@pytest.mark.timeout(900)
def test_quick_mode_on_the_real_model_is_sane(tmp_path, real_data_dir):
    out = tmp_path / "quick"
    started = time.perf_counter()
    res = _run_cli("--data-dir", str(real_data_dir), "eval", "--quick", "--out", str(out), "--json", timeout=880)
    assert res.returncode == 0, res.stderr[-2000:]
    seconds = time.perf_counter() - started
    summary = json.loads(res.stdout)
    doc = json.loads((out / "results.json").read_text())
    assert set(summary["methods"]) == set(doc["methods"]) == {"Static", "NaiveAdapters", "TwinLoop"}
    m = doc["methods"]
    static, naive, tl = m["Static"], m["NaiveAdapters"], m["TwinLoop"]
    for x in m.values():
        _check_matrix(x["R"], 2)
        assert x["latency_eval_ms"]["p50"] > 0

    # The base cannot know made-up facts; what the others get right they learned here.
    assert static["acc"] <= 0.25 and static["learning_accuracy"] <= 0.25
    # Index refresh + adapters answer at least as well as adapters alone, and better than nothing.
    assert tl["acc"] >= naive["acc"]
    assert tl["acc"] > static["acc"]
    assert tl["forgetting"] <= naive["forgetting"] + 0.1
    # Active keeps serving while Shadow trains and during the swap; nothing was rolled back, so
    # every row of R measured the release its step swapped in.
    for x in (naive, tl):
        assert x["availability"] >= 0.99 and x["requests_during_updates"] >= 2
        assert x["rollbacks"] == []
        for step in x["steps"]:
            assert step["active_release"] == step["update"]["release_id"]
            assert step["update"]["train_s"] > 0 and step["update"]["train_cpu_s"] > 0
            assert step["update"]["wall_s"] >= step["update"]["train_s"]
    # Facts reach users through the index: an answer cited a new document in some step.
    cited = tl["ingest_to_cited_s"]
    assert all(s["update"]["ingest_s"] > 0 for s in tl["steps"])
    assert cited["median"] is not None and 0 < cited["median"] < 120
    assert doc["seconds"] <= seconds
