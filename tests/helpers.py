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
