"""One Shadow training run for one domain's adapter (paper §4.2–4.4).

The run wraps a Foundation the caller owns (Shadow loads its own copy of the base) with a LoRA
adapter — fresh, or the domain's previous one loaded as trainable — and trains it on the new
samples mixed with items replayed from the domain's prioritised buffer. The loss is the
masked cross-entropy of the target tokens plus the EWC penalty that anchors the adapter to the
previous one, plus — when self-distillation prompts are given — the KL divergence from the base
model's own next-token distribution on its own answers to general prompts, which keeps what
the adapter does not mean to change as the base model had it (docs/DESIGN.md "Learning").
The result is a PEFT-format adapter folder with ``ewc.safetensors`` and
``train.json``, renamed into place only when complete, so a crash or a cancel leaves nothing.

CPU budgets: the paper's defaults (lr 5e-5, 500 steps of batch 32, App. A) are sized for a
GPU. On a 2-core CPU, SmolLM2-135M with LoRA r=16 learns a couple of facts in ~20–30 s with
``lr`` ≈ 1e-3–2e-3, ``steps`` ≈ 30–60 and ``batch_size`` of 2–4 examples; pass those as
overrides rather than changing the paper's settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import peft
import torch
import torch.nn.functional as F

from twinloop.foundation.model import Foundation
from twinloop.kernel.atomic import fsync_dir, fsync_tree
from twinloop.kernel.config import EwcConfig, LoraConfig, TrainingConfig
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
from twinloop.learning.ewc import EWC, trainable_parameters
from twinloop.learning.intake import list_samples
from twinloop.learning.replay import BetaSchedule, ReplayBuffer, ReplayItem
from twinloop.learning.sample import Sample

log = logging.getLogger(__name__)

TRAIN_FILE = "train.json"
IGNORE_INDEX = -100
"""Label value cross-entropy skips: prompt and padding tokens carry no loss."""

Progress = Callable[[int, int, float], None]
"""``progress(step, total, loss)`` after each optimiser step, ``step`` counted from 1."""


class TrainingCancelled(TwinLoopError):
    """The run was cancelled through its Event; no output folder was written."""


@dataclass(frozen=True)
class TrainResult:
    """What one run produced.

    Attributes:
        out_dir: The adapter folder (PEFT format, plus ``ewc.*`` and ``train.json``).
        steps: Optimiser steps taken.
        final_loss: Task loss of the last step (weighted mean over its batch).
        losses: Task loss per step, shape ``(steps,)``.
        seconds: Wall time of the whole run, saving included.
        trainable_parameters: Number of adapter parameters trained.
        samples: Number of new samples trained on.
        replayed: Number of replayed draws over all steps (an item may count more than once).
        penalty_shares: The EWC penalty's share of task loss + penalty per step (0 without an anchor).
        kl: The self-distillation KL per step (empty without distillation prompts).
    """

    out_dir: Path
    steps: int
    final_loss: float
    losses: list[float]
    seconds: float
    trainable_parameters: int
    samples: int
    replayed: int
    penalty_shares: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Example:
    """One tokenised training pair: ``ids = prompt + target + end-of-turn``, loss on the tail."""

    ids: list[int]
    prompt_len: int


def end_of_turn_id(foundation: Foundation) -> int:
    """ChatML's ``<|im_end|>`` when the tokenizer has it (SmolLM2's eos), else the eos."""
    tok = foundation.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        return im_end
    return int(tok.eos_token_id)


def encode_example(foundation: Foundation, prompt: str, target: str) -> _Example:
    """Tokenise a pair the way serving will see it: chat template, then target, then end of turn.

    Raises:
        InvalidInputError: An empty target, or a prompt over ``max_input_tokens``.
    """
    if not target.strip():
        raise InvalidInputError(f"training target for prompt {prompt[:60]!r} is empty")
    prompt_ids = foundation.encode_chat([{"role": "user", "content": prompt}])
    target_ids = foundation.tokenizer(target, add_special_tokens=False)["input_ids"]
    # Ending with <|im_end|> teaches the adapter to stop, which serving uses as a stop token.
    return _Example(ids=list(prompt_ids) + list(target_ids) + [end_of_turn_id(foundation)],
                    prompt_len=len(prompt_ids))


def _collate(examples: Sequence[_Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad into ``(batch, seq)`` ids, attention mask and labels (-100 on prompt and pad)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        labels[row, e.prompt_len:n] = ids[row, e.prompt_len:n]
    return ids, mask, labels


def per_example_loss(model: torch.nn.Module, examples: Sequence[_Example], pad_id: int) -> torch.Tensor:
    """Mean target-token cross-entropy of each example, shape ``(batch,)``.

    Per example rather than per batch, so replayed items can be weighted by their importance
    weights and each item's own loss can update its replay priority (paper §4.4).
    """
    ids, mask, labels = _collate(examples, pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits  # (batch, seq, vocab)
    # Token t predicts token t+1.
    shift_logits = logits[:, :-1].float()  # (batch, seq-1, vocab)
    shift_labels = labels[:, 1:]  # (batch, seq-1)
    tok_loss = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels,
                               ignore_index=IGNORE_INDEX, reduction="none")  # (batch, seq-1)
    counts = (shift_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)  # (batch,)
    return tok_loss.sum(dim=1) / counts


def distillation_kl(model: peft.PeftModel, examples: Sequence[_Example], pad_id: int) -> torch.Tensor:
    """Mean over target tokens of KL(base ‖ adapted): the base model's next-token distribution
    (the adapter switched off, no gradient) against the adapted model's, on the base model's
    own answers — zero exactly when the adapter leaves those answers' distributions unchanged."""
    ids, mask, labels = _collate(examples, pad_id)
    with torch.no_grad(), model.disable_adapter():
        base = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    adapted = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    kl = (base.exp() * (base - adapted)).sum(dim=-1)  # (batch, seq-1)
    targets = (labels[:, 1:] != IGNORE_INDEX).float()  # (batch, seq-1)
    return (kl * targets).sum() / targets.sum().clamp(min=1.0)


def sample_losses(model: torch.nn.Module, foundation: Foundation, samples: Sequence[Sample]) -> list[float]:
    """Target loss of each sample under ``model`` (base or adapted), without gradients."""
    examples = [encode_example(foundation, s.prompt, s.target) for s in samples]
    with torch.no_grad():
        return per_example_loss(model, examples, foundation.tokenizer.pad_token_id).tolist()


def _peft_config(lora: LoraConfig) -> peft.LoraConfig:
    # init_lora_weights=True is PEFT's default: A Kaiming-uniform and B = 0, so a fresh adapter
    # is the identity. The paper's Gaussian A (App. A, std 0.01) is not used: with
    # σ = 0.01 the B gradients start ~100× smaller, too slow for the short CPU runs above.
    return peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                           init_lora_weights=True)


def _replay_pairs(replay: ReplayBuffer, domain: str, items: Sequence[ReplayItem]) -> list[tuple[str, str] | None]:
    """Prompt/target of each drawn item; items stored by sample id are looked up (None if gone)."""
    need = {i.sample_id for i in items if i.prompt is None}
    stored = {}
    if need:
        stored = {r["id"]: (r["prompt"], r["target"]) for r in list_samples(replay.db, domain, limit=1_000_000)
                  if r["id"] in need}
    return [(i.prompt, i.target) if i.prompt is not None else stored.get(i.sample_id) for i in items]


def train_adapter(
    foundation: Foundation,
    samples: list[Sample],
    *,
    lora: LoraConfig,
    ewc_cfg: EwcConfig,
    training: TrainingConfig,
    out_dir: Path,
    previous: Path | None = None,
    replay: ReplayBuffer | None = None,
    domain: str,
    replay_ratio: float = 0.5,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    distill: Sequence[tuple[str, str]] = (),
    distill_per_step: int = 2,
    kl_weight: float = 1.0,
) -> TrainResult:
    """Train one domain's adapter on new samples plus replay, with an EWC penalty.

    The Foundation's model is wrapped in place for the run and unwrapped afterwards (also on
    error or cancel): its base weights are never trained and it is left without the adapter.

    Args:
        foundation: A base the caller owns (not the one serving); it must carry no adapter.
        samples: New samples for ``domain`` (at least one).
        lora: Rank, alpha, dropout and target modules of a fresh adapter.
        ewc_cfg: λ and β of the EWC penalty and Fisher decay (paper §4.3).
        training: AdamW settings, clipping, warm-up and the default steps, lr, batch and seed.
        out_dir: Where the finished adapter folder will be; must not exist yet.
        previous: The domain's previous adapter folder (PEFT format with ``ewc.*``): trained on
            from its current values, and the EWC anchor.
        replay: The replay buffers; ``replay_ratio`` of each batch is drawn from ``domain``'s
            when it holds items, and the new samples are added to it after training.
        domain: The domain being trained.
        replay_ratio: Fraction of each batch drawn from the replay buffer, in [0, 1).
        steps: Optimiser steps (default ``training.steps``).
        lr: Peak learning rate (default ``training.learning_rate``).
        batch_size: Examples per step (default ``training.batch_size``). Gradient
            accumulation is not used: one step is one batch.
        seed: Seeds adapter init, dropout and batch draws (default ``training.seed``).
        threads: Torch CPU threads for the run (restored afterwards), so serving keeps a core.
        progress: Called after each step with ``(step, total, loss)``.
        cancel: When set, the run stops before its next step.
        distill: ``(prompt, base model's answer)`` pairs for self-distillation replay
            (:func:`distillation_kl`); ``distill_per_step`` of them join each step with weight
            ``kl_weight``.

    Returns:
        The :class:`TrainResult`.

    Raises:
        InvalidInputError: No samples, a sample of another domain, bad overrides, or a
            Foundation that already carries an adapter.
        FileExistsError: ``out_dir`` exists.
        TrainingCancelled: ``cancel`` was set; nothing was written.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    steps = training.steps if steps is None else steps
    lr = training.learning_rate if lr is None else lr
    batch_size = training.batch_size if batch_size is None else batch_size
    seed = training.seed if seed is None else seed
    _check_args(foundation, samples, domain, out_dir, steps, lr, batch_size, replay_ratio, threads)
    if isinstance(distill_per_step, bool) or not isinstance(distill_per_step, int) or distill_per_step < 0:
        raise InvalidInputError(f"distill_per_step = {distill_per_step!r}: must be an integer ≥ 0")
    if not (isinstance(kl_weight, (int, float)) and math.isfinite(kl_weight) and kl_weight >= 0):
        raise InvalidInputError(f"kl_weight = {kl_weight!r}: must be a finite number ≥ 0")
    anchors = [encode_example(foundation, p, t) for p, t in distill] if distill_per_step and kl_weight else []

    examples = [encode_example(foundation, s.prompt, s.target) for s in samples]
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old_threads = torch.get_num_threads()
    base = foundation.model
    model: peft.PeftModel | None = None
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        # fork_rng: seeding for this run must not change the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if previous is not None:
                model = peft.PeftModel.from_pretrained(base, str(previous), is_trainable=True)
                ewc = _load_ewc(Path(previous), ewc_cfg)
            else:
                model = peft.get_peft_model(base, _peft_config(lora))
                ewc = EWC.from_config(ewc_cfg)
            params = trainable_parameters(model)
            run = _Run(model, params, ewc, examples, foundation.tokenizer.pad_token_id, training, steps, lr,
                       batch_size, replay, domain, replay_ratio, np.random.default_rng(seed), foundation,
                       anchors, distill_per_step, float(kl_weight))
            losses = run.loop(progress, cancel)
            ewc.consolidate(params)  # θ* ← the trained adapter (paper §4.3)
            if cancel is not None and cancel.is_set():
                raise TrainingCancelled(f"training of domain {domain!r} cancelled after {steps} steps")
            tmp_dir.mkdir(parents=True)
            model.save_pretrained(str(tmp_dir))
            ewc.save(tmp_dir)
            n_trainable = sum(p.numel() for p in params.values())
            record = {
                "domain": domain, "base": foundation.name, "seed": seed, "steps": steps,
                "learning_rate": lr, "batch_size": batch_size, "replay_ratio": replay_ratio,
                "warmup_steps": run.warmup, "threads": threads, "previous": str(previous) if previous else None,
                "lora": lora.model_dump(mode="json"), "ewc": ewc_cfg.model_dump(mode="json"),
                "training": training.model_dump(mode="json"), "trainable_parameters": n_trainable,
                "losses": losses, "replayed": run.replayed,
                "penalty_shares": run.penalty_shares, "kl": run.kls, "distill_prompts": len(anchors),
                "kl_weight": kl_weight if anchors else 0.0,
                "samples": [s.sha256() for s in samples],
                "seconds": round(time.perf_counter() - started, 3),
            }
            (tmp_dir / TRAIN_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False), "utf-8")
            fsync_tree(tmp_dir)
            os.rename(tmp_dir, out_dir)  # atomic: out_dir appears complete or not at all
            fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if model is not None:
            detach_adapter(foundation, model)
        foundation.model.requires_grad_(False)
        foundation.model.eval()
        torch.set_num_threads(old_threads)

    if replay is not None:
        # After training, at the buffer's max priority: first in line for the next run's replay.
        replay.add(domain, [{"prompt": s.prompt, "target": s.target} for s in samples])
    return TrainResult(out_dir=out_dir, steps=steps, final_loss=losses[-1], losses=losses,
                       seconds=time.perf_counter() - started, trainable_parameters=n_trainable,
                       samples=len(samples), replayed=run.replayed, penalty_shares=run.penalty_shares,
                       kl=run.kls)


def detach_adapter(foundation: Foundation, model: peft.PeftModel) -> None:
    """Remove ``model``'s LoRA layers without merging and give ``foundation`` its bare base
    back, exactly as it was (no PEFT attributes left on it)."""
    foundation.model = model.unload()
    for name in ("peft_config", "_hf_peft_config_loaded"):
        if name in vars(foundation.model):
            delattr(foundation.model, name)


def _check_args(foundation: Foundation, samples: Sequence[Sample], domain: str, out_dir: Path, steps: int,
                lr: float, batch_size: int, replay_ratio: float, threads: int | None) -> None:
    if isinstance(foundation.model, peft.PeftModel) or getattr(foundation.model, "peft_config", None):
        raise InvalidInputError("train_adapter needs a bare base model; this Foundation carries an adapter")
    if not samples:
        raise InvalidInputError(f"no samples to train domain {domain!r} on")
    for s in samples:
        if s.domain != domain:
            raise InvalidInputError(f"sample domain {s.domain!r} differs from the domain trained, {domain!r}")
    if out_dir.exists():
        raise FileExistsError(f"adapter folder {out_dir} already exists")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps = {steps!r}: must be an integer ≥ 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidInputError(f"lr = {lr!r}: must be a finite number > 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size = {batch_size!r}: must be an integer ≥ 1")
    if not 0.0 <= replay_ratio < 1.0:
        raise InvalidInputError(f"replay_ratio = {replay_ratio!r}: must be in [0, 1)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidInputError(f"threads = {threads!r}: must be an integer ≥ 1")


def _load_ewc(previous: Path, ewc_cfg: EwcConfig) -> EWC:
    # λ and β from today's settings; anchor and Fisher from the previous adapter.
    try:
        return EWC.load(previous, lam=ewc_cfg.lam, beta=ewc_cfg.beta)
    except FileNotFoundError:
        log.warning("previous adapter %s has no EWC state; training it without a penalty", previous)
        return EWC.from_config(ewc_cfg)


class _Run:
    """The optimisation loop of one run: batches, loss, Fisher, replay priorities."""

    def __init__(self, model, params, ewc: EWC, examples: list[_Example], pad_id: int, training: TrainingConfig,
                 steps: int, lr: float, batch_size: int, replay: ReplayBuffer | None, domain: str,
                 replay_ratio: float, rng: np.random.Generator, foundation: Foundation,
                 anchors: list[_Example] | None = None, distill_per_step: int = 0, kl_weight: float = 0.0) -> None:
        self.model, self.params, self.ewc = model, params, ewc
        self.examples, self.pad_id, self.training = examples, pad_id, training
        self.steps, self.batch_size, self.rng, self.foundation = steps, batch_size, rng, foundation
        self.domain, self.replay = domain, replay
        has_replay = replay is not None and replay.size(domain) > 0
        # At least one new example per step, so every batch teaches the new data.
        self.n_replay = min(round(batch_size * replay_ratio), batch_size - 1) if has_replay else 0
        self.beta = BetaSchedule(steps=steps)
        self.replayed = 0
        # Short linear warm-up (the paper's 100 would be most of a 30-step CPU run).
        self.warmup = min(training.warmup_steps, steps // 10)
        self.opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=training.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / (self.warmup + 1)) if self.warmup else 1.0)
        self._order: list[int] = []
        self.anchors, self.distill_per_step, self.kl_weight = anchors or [], distill_per_step, kl_weight
        self._anchor_order: list[int] = []
        self.penalty_shares: list[float] = []
        self.kls: list[float] = []

    def _next_anchors(self) -> list[_Example]:
        out = []
        while len(out) < min(self.distill_per_step, len(self.anchors)):
            if not self._anchor_order:
                self._anchor_order = self.rng.permutation(len(self.anchors)).tolist()
            out.append(self.anchors[self._anchor_order.pop()])
        return out

    def _next_new(self, n: int) -> list[_Example]:
        # Epochs over a fresh permutation each time, so every sample is seen equally often.
        out = []
        while len(out) < n:
            if not self._order:
                self._order = self.rng.permutation(len(self.examples)).tolist()
            out.append(self.examples[self._order.pop()])
        return out

    def loop(self, progress: Progress | None, cancel: threading.Event | None) -> list[float]:
        losses: list[float] = []
        self.model.train()
        for step in range(self.steps):
            if cancel is not None and cancel.is_set():
                raise TrainingCancelled(f"training of domain {self.domain!r} cancelled at step {step}")
            loss = self._step(step)
            losses.append(loss)
            if progress is not None:
                progress(step + 1, self.steps, loss)
        self.model.eval()
        return losses

    def _step(self, step: int) -> float:
        batch = self._next_new(self.batch_size - self.n_replay)
        weights = [1.0] * len(batch)
        drawn_ids: list[str] = []
        if self.n_replay:
            drawn = self.replay.sample(self.domain, self.n_replay, self.beta(step), self.rng)
            for item, pair, w in zip(drawn.items, _replay_pairs(self.replay, self.domain, drawn.items),
                                     drawn.weights, strict=True):
                if pair is None:  # its stored sample was deleted; skip rather than fail the run
                    continue
                batch.append(encode_example(self.foundation, *pair))
                weights.append(float(w))
                drawn_ids.append(item.item_id)
            self.replayed += len(drawn_ids)
        item_loss = per_example_loss(self.model, batch, self.pad_id)  # (batch,)
        w = torch.tensor(weights, dtype=item_loss.dtype)  # (batch,): 1 for new, IS weight for replay
        task = (w * item_loss).sum() / len(batch)
        self.opt.zero_grad(set_to_none=True)
        task.backward()
        # Fisher from the task-loss gradient only (before the penalty's gradient is added):
        # F ← βF + (1−β)g² (paper §4.3). Batch-mean g, so F is a lower bound of the
        # per-example Fisher; consistent across runs, which is what the anchor needs.
        self.ewc.accumulate({n: p.grad for n, p in self.params.items() if p.grad is not None})
        penalty = self.ewc.penalty(self.params)
        extra = penalty
        if self.anchors:
            kl = distillation_kl(self.model, self._next_anchors(), self.pad_id)
            self.kls.append(float(kl.detach()))
            extra = extra + self.kl_weight * kl
        # The penalty's share of the loss it is added to, logged so that λ can be judged
        # (learning/ewc.py): a share, not a ratio, as the task loss of a learned fact nears 0.
        pen = float(penalty.detach())
        self.penalty_shares.append(pen / max(pen + float(task.detach()), 1e-12))
        if extra.requires_grad:
            extra.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.training.max_grad_norm)
        self.opt.step()
        self.sched.step()
        if drawn_ids:
            replay_losses = item_loss[len(batch) - len(drawn_ids):].detach()
            self.replay.update_priorities(self.domain, drawn_ids, replay_losses)
        return float(task.detach())


__all__ = ["TRAIN_FILE", "TrainResult", "TrainingCancelled", "detach_adapter", "distillation_kl", "encode_example", "per_example_loss",
           "sample_losses", "train_adapter"]
