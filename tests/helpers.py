"""Small builders shared by several test modules."""

from __future__ import annotations

import torch

from twinloop.foundation import load_foundation
from twinloop.kernel.config import FoundationConfig
from twinloop.kernel.datadir import DataDir


def wide_tiny_foundation(path, hidden: int = 64):
    """The tiny random Llama with larger weights (std 0.2): its default init (std 0.02)
    answers every prompt with one repeated token, which would hide whether a prompt or an
    adapter changed anything."""
    f = load_foundation(FoundationConfig(source="tiny", tiny_hidden=hidden), DataDir(path))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        for p in f.model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return f


def tiny_server_settings(data_dir, *, limit: int, api: dict):
    """Settings for a module-scoped API server on the tiny model, read with no ``TWINLOOP_*``
    variable of the caller's environment (conftest's per-test cleaning has not run yet at
    module scope)."""
    import os

    import pytest

    from twinloop.kernel.config import load_settings

    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("TWINLOOP_")]:
            mp.delenv(key)
        return load_settings(None, data_dir=data_dir, foundation={"source": "tiny"},
                             serving={"max_new_tokens_limit": limit, "answer_max_new_tokens": 8, "max_wait_ms": 2},
                             api=api)
