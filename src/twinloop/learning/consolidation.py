"""Consolidating corrections into an adapter without damage (docs/DESIGN.md "Learning").

Correction memory (``serving/memory.py``) serves a fact at once; consolidation trains it into
the domain's adapter later, so it is known without the lookup. Trained on the corrections
alone, a LoRA adapter learns the exact wording and drifts everywhere else: on the packs' real
QA cases answer content fell from 66.7 % to 16.7 % after such updates (docs/DESIGN.md "Facts
measured here"). Three things go in with the corrections:

- **Paraphrases** of each corrected question (``learning/paraphrase.py``: templates and the
  base model's own rewordings, filtered), so the fact is tied to what is asked, not to one
  wording — the editing literature's *generalisation*.
- **Self-distillation replay**: the base model's own greedy answers to general prompts
  (``packs/distill_prompts.txt``), replayed with a KL term to the base model's distribution on
  them (``trainer.distillation_kl``) — *locality* as a training signal rather than a hope.
- **EWC** with a normalised Fisher (``learning/ewc.py``), so λ means the same at any scale.

This module assembles the first two for a training run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from twinloop.kernel.atomic import atomic_write_json

from twinloop.kernel.config import ConsolidationConfig
from twinloop.learning.sample import Sample

log = logging.getLogger(__name__)

DISTILL_ANSWER_TOKENS = 48
"""Tokens of each base answer replayed: enough for the opening of an answer, where an adapter
that drifted shows first, and short enough that a step's extra cost stays small."""

_CACHE: dict[tuple[str, tuple[str, ...], int], list[tuple[str, str]]] = {}
_CACHE_LOCK = threading.Lock()


def distill_prompts() -> list[str]:
    """The shipped general prompts, in file order (comments and blank lines skipped)."""
    text = resources.files("twinloop.packs").joinpath("distill_prompts.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def base_answers(foundation: Any, prompts: Sequence[str], max_new_tokens: int = DISTILL_ANSWER_TOKENS,
                 cache_dir: Path | None = None) -> list[tuple[str, str]]:
    """``(prompt, answer)`` for each prompt, answered greedily by the bare base model.

    Cached per (base, prompts, length), in memory and — with ``cache_dir`` — on disk: every
    training job runs in a fresh worker process, and the base's answers do not change between
    runs (a minute of generation on two cores for 64 prompts). Prompts the model answers with
    nothing are left out (an empty target cannot be trained on).
    """
    if not prompts:
        return []
    key = (str(getattr(foundation, "name", id(foundation))), tuple(prompts), int(max_new_tokens))
    with _CACHE_LOCK:
        if key in _CACHE:
            return list(_CACHE[key])
    path = None
    written_key = [key[0], list(key[1]), key[2]]  # the key as JSON stores it
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(written_key, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
        path = Path(cache_dir) / f"{digest}.json"
        try:
            stored = json.loads(path.read_text("utf-8"))
            if stored.get("key") == written_key:
                pairs = [(str(p), str(a)) for p, a in stored["pairs"]]
                with _CACHE_LOCK:
                    _CACHE[key] = list(pairs)
                return pairs
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: generate again and rewrite it
    out: list[tuple[str, str]] = []
    for start in range(0, len(prompts), 8):  # small batches: padding waste grows with the batch
        chunk = list(prompts[start:start + 8])
        for prompt, gen in zip(chunk, foundation.chat_batch(chunk, max_new_tokens=max_new_tokens), strict=True):
            if gen.text.strip():
                out.append((prompt, gen.text.strip()))
    with _CACHE_LOCK:
        _CACHE[key] = list(out)
    if path is not None:
        atomic_write_json(path, {"key": written_key, "pairs": [list(p) for p in out]})
    return out


def with_paraphrases(samples: Sequence[Sample], config: ConsolidationConfig, foundation: Any = None,
                     embedder: Any = None, seed: int = 0) -> list[Sample]:
    """``samples`` followed by paraphrases of those that are corrections (source
    ``correction``): rated answers and documents are trained on as they came."""
    from twinloop.learning.paraphrase import augment

    corrections = [s for s in samples if s.source == "correction"]
    if not corrections or (config.template_paraphrases == 0 and config.model_paraphrases == 0):
        return list(samples)
    extra = augment(corrections, templates=config.template_paraphrases,
                    model=config.model_paraphrases if foundation is not None else 0,
                    foundation=foundation, embedder=embedder, seed=seed)
    return [*samples, *extra]


def distill_pairs(foundation: Any, config: ConsolidationConfig,
                  cache_dir: Path | None = None) -> list[tuple[str, str]]:
    """The self-distillation set of a run: the base's answers to the first
    ``config.distill_prompts`` shipped prompts (none when switched off)."""
    if config.distill_prompts == 0 or config.distill_per_step == 0 or config.kl_weight == 0:
        return []
    return base_answers(foundation, distill_prompts()[:config.distill_prompts], cache_dir=cache_dir)


__all__ = ["DISTILL_ANSWER_TOKENS", "base_answers", "distill_pairs", "distill_prompts", "with_paraphrases"]
