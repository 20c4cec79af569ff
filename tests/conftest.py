"""Shared fixtures: tiny models for fast tests, the real defaults loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from twinloop.config import Settings, load_settings  # noqa: E402
from twinloop.runtime import Runtime  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests never read the developer's own TWINLOOP_* settings."""
    for key in list(os.environ):
        if key.startswith("TWINLOOP_"):
            monkeypatch.delenv(key)


@pytest.fixture
def tiny_settings(tmp_path) -> Settings:
    """Settings on a tiny random model in a fresh data directory."""
    return load_settings(None, data_dir=tmp_path / "data", foundation={"source": "tiny"})


@pytest.fixture
def tiny_runtime(tiny_settings) -> Runtime:
    return Runtime(tiny_settings)


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory):
    """One data directory for the session's real-model tests (its model cache is shared)."""
    return tmp_path_factory.mktemp("real-data")


@pytest.fixture(scope="session")
def real_runtime(real_data_dir) -> Runtime:
    """The real default base model and embedder, loaded once (first load fills the cache)."""
    return Runtime(Settings(data_dir=real_data_dir))
