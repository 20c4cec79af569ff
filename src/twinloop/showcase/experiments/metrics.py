"""Continual-learning metrics over the accuracy matrix R (paper §6.2).

``R[i][j]`` is the accuracy on task j's probes measured after training step i (0-based), for
``j ≤ i``; entries with ``j > i`` (tasks not yet seen) are ``None``. With T tasks:

- average accuracy ``ACC = (1/T) Σ_j R[T−1][j]`` (Lopez-Paz & Ranzato 2017, GEM);
- backward transfer ``BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1][j] − R[j][j])`` (GEM): negative
  when learning later tasks lowered earlier ones;
- forgetting ``F = (1/(T−1)) Σ_{j<T−1} max_{l∈[j, T−2]} R[l][j] − R[T−1][j]``
  (Chaudhry et al. 2018, "Riemannian Walk"): the drop from the best accuracy a task had
  before the last step to its final one; negative only when a task ends better than it ever
  was (the formula as published, not clipped at 0).

With a single task BWT and forgetting are 0 by definition (nothing came after it). All
functions are pure and take plain nested lists, so the experiment's JSON feeds them as is.
"""

from __future__ import annotations

from collections.abc import Sequence

from twinloop.kernel.errors import InvalidInputError

Matrix = Sequence[Sequence[float | None]]
"""``R[i][j]``: rows are training steps, columns tasks; ``None`` above the diagonal."""


def check_matrix(r: Matrix) -> int:
    """Validate a square, lower-triangular accuracy matrix with values in [0, 1]; returns T.

    Raises:
        InvalidInputError: Not square, empty, a missing entry on or below the diagonal, or a
            value outside [0, 1] (naming the entry).
    """
    t = len(r)
    if t == 0:
        raise InvalidInputError("accuracy matrix is empty")
    for i, row in enumerate(r):
        if len(row) != t:
            raise InvalidInputError(f"accuracy matrix row {i} has {len(row)} entries; expected {t}")
        for j in range(i + 1):
            v = row[j]
            if v is None:
                raise InvalidInputError(f"R[{i}][{j}] is missing: every task seen by step {i} needs a value")
            if not 0.0 <= float(v) <= 1.0:
                raise InvalidInputError(f"R[{i}][{j}] = {v!r}: accuracy must be in [0, 1]")
    return t


def average_accuracy(r: Matrix, step: int | None = None) -> float:
    """Mean accuracy over the tasks seen by ``step`` (default: the last), measured after it."""
    t = check_matrix(r)
    i = t - 1 if step is None else _step(step, t)
    return sum(float(r[i][j]) for j in range(i + 1)) / (i + 1)


def backward_transfer(r: Matrix, step: int | None = None) -> float:
    """GEM's BWT after ``step`` (default: the last): mean of ``R[i][j] − R[j][j]`` over j < i."""
    t = check_matrix(r)
    i = t - 1 if step is None else _step(step, t)
    if i == 0:
        return 0.0
    return sum(float(r[i][j]) - float(r[j][j]) for j in range(i)) / i


def forgetting(r: Matrix, step: int | None = None) -> float:
    """Chaudhry et al.'s average forgetting after ``step`` (default: the last).

    For each earlier task j, the best accuracy it had at any step from j to ``step − 1``
    minus its accuracy after ``step``; averaged over j < step.
    """
    return _mean(per_task_forgetting(r, step))


def per_task_forgetting(r: Matrix, step: int | None = None) -> list[float]:
    """Forgetting of each task j < ``step`` (default: the last step), in task order."""
    t = check_matrix(r)
    i = t - 1 if step is None else _step(step, t)
    return [max(float(r[l][j]) for l in range(j, i)) - float(r[i][j]) for j in range(i)]


def learning_accuracy(r: Matrix) -> float:
    """Mean accuracy of each task right after it was learned, ``(1/T) Σ_j R[j][j]``.

    The "initial accuracy" of the paper's §6.2.2 table, in our terms.
    """
    t = check_matrix(r)
    return sum(float(r[j][j]) for j in range(t)) / t


def curve(r: Matrix) -> list[float]:
    """Average accuracy over the tasks seen so far, after each step (a learning curve)."""
    t = check_matrix(r)
    return [average_accuracy(r, i) for i in range(t)]


def forgetting_curve(r: Matrix) -> list[float]:
    """Average forgetting after each step (0 after the first)."""
    t = check_matrix(r)
    return [forgetting(r, i) for i in range(t)]


def summary(r: Matrix) -> dict[str, float]:
    """ACC, BWT, forgetting and learning accuracy of one matrix."""
    return {"acc": average_accuracy(r), "bwt": backward_transfer(r), "forgetting": forgetting(r),
            "learning_accuracy": learning_accuracy(r)}


def _step(step: int, t: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < t:
        raise InvalidInputError(f"step = {step!r}: must be an integer in [0, {t - 1}]")
    return step


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


__all__ = ["Matrix", "average_accuracy", "backward_transfer", "check_matrix", "curve", "forgetting",
           "forgetting_curve", "learning_accuracy", "per_task_forgetting", "summary"]
