"""Elastic Weight Consolidation on adapter parameters (paper §4.3; Kirkpatrick et al. 2017).

After a domain's adapter is trained, its parameters become the anchor θ* and a diagonal
Fisher estimate F says how much each one mattered. The next training run adds
``λ · Σ_i F_i (θ_i − θ*_i)²`` to the loss, so parameters that were important move little.

Importance is accumulated with decay, ``F ← βF + (1−β)·g²`` (paper §4.3, "dynamic
importance"), so old tasks fade rather than vanish. F starts at zero and the formula is
applied as written, without Adam-style bias correction: fed per-batch squared gradients,
the starting zero weighs β^k after k batches (0.9^20 ≈ 0.12), and fed one Fisher estimate
per training run it makes the first run's importance (1−β)·E[g²], the paper's recursion.

**Normalised penalty** (the default in settings, ``ewc.normalised``). On raw squared
gradients λ has no unit: the Fisher's scale follows the loss's and the adapter's size, so a
λ of 0.05 left the penalty a thousandth of the loss and EWC changed nothing measurable
(docs/DESIGN.md "Learning"). Normalised, the penalty is

    λ · Σ_i F_i (θ_i − θ*_i)² / Σ_i F_i θ*_i²

— the importance-weighted share of the previous adapter that the run has moved, squared.
λ is then the loss, in nats per target token, charged for moving the adapter by its whole
importance-weighted size (undoing it entirely costs λ; moving it by 30 % costs 0.09 λ),
whatever the Fisher's scale. The trainer logs the penalty's share of the loss per step.

Anchor and Fisher are stored next to the adapter: ``ewc.safetensors`` holds ``anchor.<name>``
and ``fisher.<name>`` tensors (names as in ``model.named_parameters()``), and ``ewc.json``
holds λ, β, the accumulation count and the SHA-256 of the tensor file (written last, so a
crash between the two writes is detected on load).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from twinloop.kernel.atomic import atomic_write_bytes, atomic_write_json, sha256_bytes
from twinloop.kernel.config import EwcConfig
from twinloop.kernel.errors import IntegrityError, InvalidInputError

TENSORS_FILE = "ewc.safetensors"
META_FILE = "ewc.json"
FORMAT_VERSION = 1

NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
"""A dict of name → tensor, or the ``(name, tensor)`` pairs of ``model.named_parameters()``."""


def _named(tensors: NamedTensors) -> dict[str, torch.Tensor]:
    return dict(tensors.items()) if isinstance(tensors, Mapping) else dict(tensors)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that training changes (``requires_grad``): the adapter's, under PEFT."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class EWC:
    """Anchor θ* and diagonal Fisher F per parameter name, and the penalty they define.

    Tensors are kept in float32 (the Fisher of bf16 adapters would underflow) on the device
    they were given on; :meth:`penalty` moves them to each parameter's device as needed.

    Args:
        lam: Penalty strength λ (≥ 0).
        beta: Fisher decay β in [0, 1].
    """

    def __init__(self, lam: float, beta: float, normalised: bool = False) -> None:
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0.0:
            raise InvalidInputError(f"EWC lam = {lam!r}: must be a number ≥ 0")
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0.0 <= beta <= 1.0:
            raise InvalidInputError(f"EWC beta = {beta!r}: must be in [0, 1]")
        self.lam = float(lam)
        self.beta = float(beta)
        self.normalised = bool(normalised)
        """Divide the penalty by ``Σ F θ*²`` (see the module docstring)."""
        self.steps = 0
        """Number of :meth:`accumulate` calls folded into F so far."""
        self.anchor: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: EwcConfig) -> EWC:
        """An empty EWC state with λ and β from settings."""
        return cls(lam=config.lam, beta=config.beta, normalised=config.normalised)

    def accumulate(self, named_grads: NamedTensors, *, squared: bool = False) -> None:
        """Fold one batch's gradients into F: ``F ← βF + (1−β)·g²``, elementwise.

        Args:
            named_grads: Gradient per parameter name, each shaped like its parameter; or,
                with ``squared=True``, values already squared (e.g. from :func:`estimate_fisher`).
            squared: Whether the values are already ``g²``.

        Raises:
            InvalidInputError: A gradient's shape differs from the stored Fisher's, or a
                value is not finite.
        """
        grads = _named(named_grads)
        new: dict[str, torch.Tensor] = {}
        for name, g in grads.items():
            g = g.detach().float()
            g2 = g if squared else g * g
            if not torch.isfinite(g2).all():
                raise InvalidInputError(f"gradient for {name!r} has non-finite values")
            old = self.fisher.get(name)
            if old is None:
                old = torch.zeros_like(g2)  # no importance yet: the recursion starts at F = 0
            elif old.shape != g2.shape:
                raise InvalidInputError(f"gradient for {name!r} has shape {tuple(g2.shape)}, "
                                        f"but its Fisher has {tuple(old.shape)}")
            old = old.to(g2.device)
            new[name] = self.beta * old + (1.0 - self.beta) * g2
        # Parameters absent from this batch (no gradient) decay too: their importance is
        # an average over batches in which they had gradient 0.
        for name, old in self.fisher.items():
            if name not in new:
                new[name] = self.beta * old
        self.fisher = new
        self.steps += 1

    def consolidate(self, named_params: NamedTensors) -> None:
        """Set the anchor θ* to the current values of these parameters (after a task).

        Only the names given are re-anchored; others keep their anchor. Pass
        :func:`trainable_parameters` of the model to anchor the whole adapter.
        """
        for name, p in _named(named_params).items():
            self.anchor[name] = p.detach().float().clone()

    def penalty(self, named_params: NamedTensors) -> torch.Tensor:
        """``λ · Σ_i F_i (θ_i − θ*_i)²`` over the parameters that have an anchor.

        The paper (§4.3) writes λ/2; here the penalty has no ½, so its gradient is exactly
        ``2λF(θ−θ*)`` and λ means the same here as in the tests and in settings. A parameter without an anchor (a first task, or a
        newly added module) or without a Fisher contributes zero.

        Returns:
            A scalar float32 tensor, differentiable with respect to the parameters.

        Raises:
            InvalidInputError: A parameter's shape differs from its anchor's (e.g. the
                adapter's rank changed since it was anchored).
        """
        params = _named(named_params)
        total: torch.Tensor | None = None
        scale = torch.zeros((), dtype=torch.float32)
        device = next(iter(params.values())).device if params else torch.device("cpu")
        for name, theta in params.items():
            anchor, fisher = self.anchor.get(name), self.fisher.get(name)
            if anchor is None or fisher is None:
                continue
            if anchor.shape != theta.shape or fisher.shape != theta.shape:
                raise InvalidInputError(f"parameter {name!r} has shape {tuple(theta.shape)}, but its EWC anchor "
                                        f"has {tuple(anchor.shape)} and Fisher {tuple(fisher.shape)}")
            if anchor.device != theta.device:  # move once and keep, not on every step
                anchor = self.anchor[name] = anchor.to(theta.device)
                fisher = self.fisher[name] = fisher.to(theta.device)
            term = (fisher * (theta.float() - anchor).pow(2)).sum()  # scalar, from (*param_shape)
            total = term if total is None else total + term
            if self.normalised:
                scale = scale.to(theta.device) + (fisher * anchor.pow(2)).sum().detach()
        if total is None:
            return torch.zeros((), dtype=torch.float32, device=device)
        if self.normalised:
            # An anchor of zeros (nothing learned yet) or a zero Fisher has no size to keep.
            if float(scale) <= 0.0:
                return torch.zeros((), dtype=torch.float32, device=device)
            return self.lam * total / scale
        return self.lam * total

    # --- persistence -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """λ, β, steps and CPU copies of the anchor and Fisher tensors."""
        return {
            "lam": self.lam,
            "beta": self.beta,
            "steps": self.steps,
            "normalised": self.normalised,
            "anchor": {k: v.detach().cpu().clone() for k, v in self.anchor.items()},
            "fisher": {k: v.detach().cpu().clone() for k, v in self.fisher.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this object's state with one from :meth:`state_dict`.

        Raises:
            InvalidInputError: A key is missing or λ/β are out of range.
        """
        missing = {"lam", "beta", "steps", "anchor", "fisher"} - set(state)
        if missing:
            raise InvalidInputError(f"EWC state is missing {sorted(missing)!r}")
        checked = EWC(state["lam"], state["beta"])  # validates λ and β
        self.lam, self.beta, self.steps = checked.lam, checked.beta, int(state["steps"])
        self.normalised = bool(state.get("normalised", self.normalised))
        self.anchor = {k: v.detach().float().clone() for k, v in state["anchor"].items()}
        self.fisher = {k: v.detach().float().clone() for k, v in state["fisher"].items()}

    def save(self, directory: str | Path) -> None:
        """Write ``ewc.safetensors`` and ``ewc.json`` into an adapter folder, atomically each."""
        directory = Path(directory)
        tensors = {f"anchor.{k}": v.detach().float().cpu().contiguous() for k, v in self.anchor.items()}
        tensors.update({f"fisher.{k}": v.detach().float().cpu().contiguous() for k, v in self.fisher.items()})
        data = st_save(tensors)
        atomic_write_bytes(directory / TENSORS_FILE, data)
        atomic_write_json(directory / META_FILE, {
            "format": FORMAT_VERSION, "lam": self.lam, "beta": self.beta, "steps": self.steps,
            "normalised": self.normalised,
            "sha256": sha256_bytes(data),
        })

    @classmethod
    def load(cls, directory: str | Path, *, lam: float | None = None, beta: float | None = None,
             normalised: bool | None = None) -> EWC:
        """Read the state :meth:`save` wrote.

        Args:
            directory: The adapter folder.
            lam: Use this λ instead of the stored one (settings may have changed since).
            beta: Use this β instead of the stored one.
            normalised: Use this penalty form instead of the stored one.

        Raises:
            FileNotFoundError: No EWC state in ``directory``.
            IntegrityError: The files are unreadable or do not match each other.
        """
        directory = Path(directory)
        meta_path, tensors_path = directory / META_FILE, directory / TENSORS_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"no EWC state in {directory} ({META_FILE} missing)")
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            data = tensors_path.read_bytes()
        except (OSError, ValueError) as e:
            raise IntegrityError(f"cannot read EWC state in {directory}: {e}") from e
        if meta.get("format") != FORMAT_VERSION:
            raise IntegrityError(f"{meta_path}: format = {meta.get('format')!r}, expected {FORMAT_VERSION}")
        if sha256_bytes(data) != meta.get("sha256"):
            raise IntegrityError(f"{tensors_path} does not match the SHA-256 recorded in {meta_path}")
        try:
            tensors = st_load(data)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise IntegrityError(f"{tensors_path} is not a readable safetensors file: {e}") from e
        ewc = cls(meta["lam"] if lam is None else lam, meta["beta"] if beta is None else beta,
                  bool(meta.get("normalised", False)) if normalised is None else normalised)
        ewc.steps = int(meta["steps"])
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if kind == "anchor":
                ewc.anchor[name] = value
            elif kind == "fisher":
                ewc.fisher[name] = value
            else:
                raise IntegrityError(f"{tensors_path}: unexpected tensor {key!r}")
        return ewc


def estimate_fisher(model: nn.Module, batches: Iterable[Any],
                    loss_fn: Callable[[nn.Module, Any], torch.Tensor], n_samples: int) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: the mean squared gradient over up to ``n_samples`` batches.

    Only trainable (``requires_grad``) parameters are differentiated, so under PEFT the base
    weights are never touched. Each batch contributes the square of its loss's gradient;
    pass batches of one example for the per-example Fisher ``E_x[(∂ log p(y|x)/∂θ)²]`` of
    paper §4.3 (the square of a batch-mean gradient underestimates it by about the batch
    size). The model runs in eval mode (no dropout), its training mode is restored afterwards,
    and no ``.grad`` is written.

    Args:
        model: The model with its adapter.
        batches: Inputs for ``loss_fn``; only the first ``n_samples`` are used.
        loss_fn: ``loss_fn(model, batch)`` → scalar loss (e.g. mean token cross-entropy).
        n_samples: Cap on batches used (``EwcConfig.fisher_samples``).

    Returns:
        Squared-gradient mean per trainable parameter name, float32, shaped like the parameter;
        feed it to :meth:`EWC.accumulate` with ``squared=True``.

    Raises:
        InvalidInputError: ``n_samples < 1``, the model has no trainable parameters, or
            ``batches`` is empty.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InvalidInputError(f"n_samples = {n_samples!r}: must be an integer ≥ 1")
    params = trainable_parameters(model)
    if not params:
        raise InvalidInputError("model has no trainable parameters to estimate a Fisher for")
    was_training = model.training
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    model.eval()
    try:
        for batch in batches:
            if count >= n_samples:
                break
            # autograd.grad rather than backward(): no .grad is written, so frozen weights
            # and the caller's accumulated gradients stay as they were.
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    sums[name] += g.detach().float().pow(2)
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise InvalidInputError("estimate_fisher got no batches")
    return {name: s / count for name, s in sums.items()}
