"""Settings: paper defaults, YAML + environment precedence, one-line errors."""

from __future__ import annotations

import pytest

from twinloop.kernel.config import load_settings
from twinloop.kernel.errors import ConfigError

# (dotted field, paper Appendix A value) — adding a default to check is one line.
APPENDIX_A = [
    ("lora.r", 16),
    ("lora.alpha", 32),
    ("lora.dropout", 0.05),
    ("lora.target_modules", ("q_proj", "v_proj")),
    ("ewc.beta", 0.9),
    ("replay.capacity", 500),
    ("replay.alpha", 0.6),
    ("retrieval.k", 5),
    ("retrieval.tau", 0.3),
    ("qa.pass_rate", 0.66),
    ("qa.toxicity", 0.05),
    ("qa.latency_p95_ms", 500.0),
    ("qa.error_rate", 0.10),
    ("canary.ratio", 0.05),
    ("canary.min_queries", 100),
    ("canary.abort_error_factor", 2.0),
    ("breaker.failure_threshold", 0.5),
    ("breaker.min_requests", 10),
    ("breaker.recovery_timeout_s", 60.0),
    ("breaker.half_open_successes", 3),
    ("retention.max_snapshots", 10),
    ("retention.max_age_days", 30),
    ("embedder.dimension", 384),
]


def _get(settings, dotted):
    obj = settings
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("field", "expected"), APPENDIX_A, ids=[f for f, _ in APPENDIX_A])
def test_defaults_follow_appendix_a(field, expected):
    assert _get(load_settings(), field) == expected


def test_ewc_departs_from_appendix_a_on_a_normalised_fisher():
    # App. A's λ = 0.05 was on a raw Fisher, where the penalty was negligible; normalised, λ is
    # the loss charged for undoing the adapter (learning/ewc.py).
    s = load_settings()
    assert s.ewc.normalised is True and s.ewc.lam == 1.0


def test_router_tau_inside_paper_range():
    assert 0.35 <= load_settings().router.tau <= 0.50


def test_yaml_then_env_then_override(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora:\n  r: 8\n  alpha: 16\nretrieval:\n  k: 7\ndata_dir: /tmp/from-yaml\n")
    s = load_settings(cfg)
    assert (s.lora.r, s.lora.alpha, s.retrieval.k) == (8, 16, 7)
    assert str(s.data_dir) == "/tmp/from-yaml"

    monkeypatch.setenv("TWINLOOP_LORA__R", "4")
    monkeypatch.setenv("TWINLOOP_DATA_DIR", "/tmp/from-env")
    s = load_settings(cfg)
    assert s.lora.r == 4, "environment beats the YAML file"
    assert s.lora.alpha == 16, "fields the environment leaves alone keep the YAML value"
    assert str(s.data_dir) == "/tmp/from-env"

    s = load_settings(cfg, data_dir="/tmp/from-flag")
    assert str(s.data_dir) == "/tmp/from-flag", "an explicit flag beats the environment"


def test_config_path_from_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("canary:\n  ratio: 0.2\n")
    monkeypatch.setenv("TWINLOOP_CONFIG", str(cfg))
    assert load_settings().canary.ratio == 0.2


BAD_FILES = [
    ("wrong-type", "lora:\n  r: sixteen\n", ["lora.r", "'sixteen'"]),
    ("out-of-range", "canary:\n  ratio: 1.5\n", ["canary.ratio", "1.5"]),
    ("unknown-key", "lora:\n  rank: 16\n", ["lora.rank"]),
    ("unknown-section", "lorra:\n  r: 16\n", ["lorra"]),
    ("bad-choice", "foundation:\n  source: onnx\n", ["foundation.source", "'onnx'"]),
    ("overlap>=size", "retrieval:\n  chunk_words: 50\n  chunk_overlap: 50\n", ["chunk_overlap", "50"]),
    ("not-yaml", "lora: [1, 2\n", ["not valid YAML"]),
    ("not-a-mapping", "- 1\n- 2\n", ["mapping"]),
]


@pytest.mark.parametrize(("name", "text", "needles"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_invalid_file_gives_one_line_naming_the_field(tmp_path, name, text, needles):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_bad_env_value_is_reported(monkeypatch):
    monkeypatch.setenv("TWINLOOP_QA__PASS_RATE", "lots")
    with pytest.raises(ConfigError, match=r"qa\.pass_rate = 'lots'"):
        load_settings()


def test_settings_are_immutable():
    s = load_settings()
    with pytest.raises(Exception):
        s.lora.r = 3  # type: ignore[misc]
