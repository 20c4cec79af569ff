"""The one data directory that holds all of TwinLoop's state (DESIGN.md "State")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    """Paths inside the data directory; folders are created when first asked for."""

    root: Path

    def _dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def model_cache(self) -> Path:
        """De-quantised copies of GGUF base models, one folder per GGUF SHA-256."""
        return self._dir("cache", "foundation")

    @property
    def distill_cache(self) -> Path:
        """The base model's answers to the self-distillation prompts, one file per (base, prompts)."""
        return self._dir("cache", "distill")

    @property
    def artifacts(self) -> Path:
        """Content-addressed artifacts (adapters, index files)."""
        return self._dir("artifacts")

    @property
    def indexes(self) -> Path:
        """FAISS files of the domain indexes (derived data, rebuilt when missing or corrupt)."""
        return self._dir("indexes")

    @property
    def shadow_tmp(self) -> Path:
        """Where Shadow runs build adapters before they enter the artifact store (one folder per job)."""
        return self._dir("tmp", "shadow")

    @property
    def logs(self) -> Path:
        """Log files of the Shadow worker processes, one per job."""
        return self._dir("logs")

    @property
    def database(self) -> Path:
        """The SQLite metadata database."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / "twinloop.db"
