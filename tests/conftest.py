"""Shared fixtures: tiny models for fast tests, the real defaults loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from twinloop.kernel.config import Settings, load_settings  # noqa: E402
from twinloop.runtime import Runtime  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests never read the developer's own TWINLOOP_* settings."""
    for key in list(os.environ):
        if key.startswith("TWINLOOP_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session", autouse=True)
def _audit_key_home(tmp_path_factory):
    """The audit key (and its checkpoints) live under a temporary XDG_CONFIG_HOME, never the
    developer's ~/.config; subprocesses inherit it, so every process of a test shares the key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
        yield


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


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 (loads in about a second; retrieval tests need real vectors)."""
    from twinloop.foundation.embedder import load_embedder
    from twinloop.kernel.config import EmbedderConfig

    return load_embedder(EmbedderConfig())


@pytest.fixture
def knowledge(tmp_path, embedder):
    """An empty knowledge store with the default domains, and its retriever."""
    from twinloop.kernel.config import RetrievalConfig
    from twinloop.kernel.db import Database
    from twinloop.knowledge.retrieval import Retriever
    from twinloop.knowledge.store import KnowledgeStore

    cfg = RetrievalConfig(chunk_words=40, chunk_overlap=8)
    store = KnowledgeStore(Database(tmp_path / "kb.db"), tmp_path / "indexes", embedder, cfg,
                           domains=["law", "med", "fin", "general"])
    return store, Retriever(store, k=cfg.k, tau=cfg.tau)
