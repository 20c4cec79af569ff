"""The adapters track of the editing evaluation: corrections consolidated into adapters, probed
with correction memory off (docs/DESIGN.md "Facts measured here").

At each checkpoint the corrections accepted since the last one are trained, per domain, into
that domain's adapter the way Shadow trains them (``learning/trainer.py`` with the previous
checkpoint's adapter as the EWC anchor, the scratch data directory's replay buffers, the
paraphrases and the self-distillation replay of ``learning/consolidation.py``). Then every
fact corrected so far is asked of the base model carrying its domain's adapter — free greedy
generation, no retrieval, no memory: what the adapter itself knows. Locality compares the
unrelated question's answer with the base model's; retention asks the packs' real QA cases
with and without the adapters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

EPOCHS = 3
"""Passes over a checkpoint's new examples (corrections and their paraphrases)."""
LEARNING_RATE = 2e-3
"""The CPU budget of learning/trainer.py: lr ≈ 1e-3–2e-3 learns a handful of facts in tens of steps."""
BATCH = 4
MIN_STEPS = 10


@dataclass
class AdapterTrack:
    """Adapters per domain, trained checkpoint by checkpoint."""

    settings: Any
    runtime: Any
    workdir: Path
    seed: int = 0

    def __post_init__(self) -> None:
        from twinloop.foundation.model import load_foundation
        from twinloop.learning.replay import ReplayBuffer

        self.foundation = load_foundation(self.settings.foundation, self.runtime.data_dir)
        self.replay = ReplayBuffer(self.runtime.db, self.settings.replay)
        self.adapters: dict[str, Path] = {}
        self.trained: list[dict[str, Any]] = []
        self._round = 0

    def consolidate(self, rows: list[dict[str, Any]], log: Callable[[str], None]) -> None:
        """Train the corrections of ``rows`` into their domains' adapters."""
        from twinloop.learning.consolidation import distill_pairs, with_paraphrases
        from twinloop.learning.sample import Sample
        from twinloop.learning.trainer import train_adapter

        self._round += 1
        cfg = self.settings.consolidation
        distill = distill_pairs(self.foundation, cfg, self.runtime.data_dir.distill_cache)
        by_domain: dict[str, list[Any]] = {}
        for r in rows:
            by_domain.setdefault(r["domain"], []).append(
                Sample(r["domain"], r["question"], r["answer"], source="correction"))
        for domain, samples in sorted(by_domain.items()):
            examples = with_paraphrases(samples, cfg, self.foundation, seed=self.seed)
            steps = max(MIN_STEPS, math.ceil(EPOCHS * len(examples) / BATCH))
            out = self.workdir / f"{domain}-{self._round}"
            result = train_adapter(self.foundation, examples, lora=self.settings.lora, ewc_cfg=self.settings.ewc,
                                   training=self.settings.training, out_dir=out, previous=self.adapters.get(domain),
                                   replay=self.replay, domain=domain, replay_ratio=self.settings.replay.mix_ratio,
                                   steps=steps, lr=LEARNING_RATE, batch_size=BATCH, seed=self.seed, distill=distill,
                                   distill_per_step=cfg.distill_per_step, kl_weight=cfg.kl_weight)
            self.adapters[domain] = out
            late = result.penalty_shares[len(result.penalty_shares) // 2:]
            self.trained.append({"round": self._round, "domain": domain, "corrections": len(samples),
                                 "examples": len(examples), "steps": steps, "seconds": round(result.seconds, 1),
                                 "final_loss": round(result.final_loss, 4),
                                 "penalty_share_late": round(sum(late) / len(late), 4) if late else 0.0,
                                 "kl_last": round(result.kl[-1], 4) if result.kl else None})
            log(f"  consolidated {len(samples)} correction(s) of {domain} ({len(examples)} examples, {steps} steps, "
                f"{result.seconds:.0f} s, penalty share {self.trained[-1]['penalty_share_late']})")

    def answers(self, questions: list[tuple[str, str]], max_tokens: int, adapted: bool = True) -> list[str]:
        """Greedy answers of the base model, with each question's domain adapter when ``adapted``."""
        import peft

        from twinloop.learning.trainer import detach_adapter

        out: dict[int, str] = {}
        groups: dict[str | None, list[int]] = {}
        for i, (_, domain) in enumerate(questions):
            groups.setdefault(domain if adapted and domain in self.adapters else None, []).append(i)
        for domain, idx in groups.items():
            prompts = [questions[i][0] for i in idx]
            if domain is None:
                texts = [g.text for g in self.foundation.chat_batch(prompts, max_new_tokens=max_tokens)]
            else:
                model = peft.PeftModel.from_pretrained(self.foundation.model, str(self.adapters[domain]))
                try:
                    self.foundation.model = model
                    texts = [g.text for g in self.foundation.chat_batch(prompts, max_new_tokens=max_tokens)]
                finally:
                    detach_adapter(self.foundation, model)
            out.update(zip(idx, texts, strict=True))
        return [out[i] for i in range(len(questions))]


def qa_cases() -> list[dict[str, Any]]:
    """The packs' real QA cases (every domain), for retention."""
    rows = []
    for domain in ("law", "med", "fin", "general"):
        text = resources.files("twinloop.packs").joinpath(domain, "qa_cases.jsonl").read_text("utf-8")
        rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def content(answer: str, case: dict[str, Any]) -> bool:
    text = answer.casefold()
    return any(e.casefold() in text for e in case.get("expected", []))


__all__ = ["AdapterTrack", "content", "qa_cases"]
