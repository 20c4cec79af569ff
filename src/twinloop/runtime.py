"""The loaded pieces of one TwinLoop process: settings, data directory, base model, embedder.

Models load lazily, on first use, so commands that need neither (``validate-config``) stay
instant, and each process holds one copy of each (DESIGN.md "Foundation").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from twinloop.config import Settings
from twinloop.datadir import DataDir


@dataclass
class Runtime:
    """Settings plus the models they name, loaded on first access."""

    settings: Settings

    @cached_property
    def data_dir(self) -> DataDir:
        return DataDir(self.settings.data_dir)

    @cached_property
    def foundation(self):
        from twinloop.foundation import load_foundation

        return load_foundation(self.settings.foundation, self.data_dir)

    @cached_property
    def embedder(self):
        from twinloop.embedder import load_embedder

        return load_embedder(self.settings.embedder)

    def describe(self) -> dict[str, Any]:
        """Model, parameter count, dtype, threads and data directory (``twinloop info``)."""
        import torch

        f = self.foundation
        return {
            "model": f.name,
            "source": f.info.source,
            "location": f.info.location,
            "parameters": f.parameter_count,
            "dtype": f.dtype,
            "threads": torch.get_num_threads(),
            "data_dir": str(self.settings.data_dir.resolve()),
            "model_cache": f.info.cache_dir,
            "loaded_from_cache": f.info.from_cache,
            "load_seconds": round(f.info.seconds, 3),
            "torch": torch.__version__,
        }
