"""One Shadow run: new samples → adapters → one candidate release (paper §4.4–4.5;
docs/DESIGN.md "Learning").

Crash safety comes from the order of the writes, each atomic on its own:

1. each domain's adapter is trained into ``data_dir/tmp/<job id>/`` (renamed into place only
   when complete, learning/trainer.py), then copied into the content-addressed artifact store
   (atomic rename); an orphan artifact is harmless, since nothing names it yet;
2. the candidate release is committed (one transaction; it names only verified artifacts);
3. the "shadow" pointer moves to it (one transaction);
4. the samples are marked used (one transaction), only now that a release holds what was
   learned from them.

A crash before 4 leaves the samples "new", so the next run trains on them again; a crash
anywhere leaves Active untouched, because Shadow never writes the "active" pointer. The next
run deletes the temporary folders of runs that are no longer alive.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.datadir import DataDir
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, TwinLoopError, UnknownDomainError
from twinloop.learning.consolidation import distill_pairs, with_paraphrases
from twinloop.learning.intake import list_samples, mark_used
from twinloop.learning.jobs import TrainJobs, pid_alive
from twinloop.learning.replay import ReplayBuffer
from twinloop.learning.sample import Sample
from twinloop.release.registry import ReleaseRegistry

log = logging.getLogger(__name__)

MAX_SAMPLES = 100_000
"""Upper bound on the new samples read per domain and run."""

ShadowProgress = Callable[[dict[str, Any]], None]
"""``progress(doc)`` after each step: ``domain``, ``domain_index``, ``domains_total``, ``step``,
``total``, ``loss``."""


class NothingToTrainError(TwinLoopError):
    """No domain asked for has new samples."""


@dataclass(frozen=True)
class ShadowInputs:
    """What a Shadow run reads and writes, passed explicitly by the worker process.

    Attributes:
        settings: The job's settings snapshot (lora, ewc, training, replay sections).
        data_dir: The data directory (temporary folders of runs).
        db: The metadata database (samples, replay buffers, jobs).
        registry: The process's release registry (artifacts, candidate, the Shadow pointer).
        domains: Configured domain names.
        foundation: The worker's own copy of the base model.
        index_revision: The knowledge index's current revision (recorded with the release).
        router_json: The router configuration the candidate carries.
    """

    settings: Any
    data_dir: DataDir
    db: Database
    registry: ReleaseRegistry
    domains: Collection[str]
    foundation: Any
    index_revision: Callable[[], int]
    router_json: str


def clean_tmp(data_dir: DataDir, jobs: TrainJobs, keep: str | None = None) -> list[str]:
    """Delete the temporary folders of runs whose worker is gone; returns the names removed.

    A folder is named by its job id; it is kept only for ``keep`` and for live jobs whose
    process is alive (another Shadow run, should one be running).
    """
    removed = []
    for folder in data_dir.shadow_tmp.iterdir():
        if folder.name == keep:
            continue
        try:
            job = jobs.get(folder.name)
            alive = job["status"] in ("queued", "running") and pid_alive(job["pid"])
        except TwinLoopError:
            alive = False
        if alive:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def check_request(known: Collection[str], domains: list[str] | None, steps: int | None, lr: float | None,
                  seed: int | None) -> list[str] | None:
    """Validate a training request before a job is made for it; returns the domains, deduplicated.

    Raises:
        UnknownDomainError: A domain not in ``known``.
        InvalidInputError: ``steps`` < 1, a non-positive ``lr`` or a non-integer ``seed``.
    """
    if domains:
        for d in domains:
            if d not in known:
                raise UnknownDomainError(f"unknown domain {d!r}; known: {', '.join(sorted(known))}")
        domains = list(dict.fromkeys(domains))
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InvalidInputError(f"steps = {steps!r}: must be an integer ≥ 1")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
        raise InvalidInputError(f"lr = {lr!r}: must be a finite number > 0")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInputError(f"seed = {seed!r}: must be an integer")
    return domains or None


def _new_samples(db: Database, names: Collection[str]) -> dict[str, list[dict[str, Any]]]:
    found = {d: list_samples(db, d, status="new", limit=MAX_SAMPLES) for d in sorted(names)}
    return {d: rows for d, rows in found.items() if rows}


def _sample(row: dict[str, Any]) -> Sample:
    return Sample(domain=row["domain"], prompt=row["prompt"], target=row["target"], source=row["source"],
                  request_id=row["request_id"], score=row["score"], meta=row["meta"])


def run_shadow_training(inputs: ShadowInputs, job_id: str, domains: list[str] | None = None, steps: int | None = None,
                        lr: float | None = None, seed: int | None = None,
                        cancel: threading.Event | None = None, progress: ShadowProgress | None = None,
                        threads: int | None = None) -> dict[str, Any]:
    """Train every domain with new samples and record one candidate release; set "shadow" to it.

    Uses ``inputs.foundation`` — call it in the worker process, whose base is its own copy.

    Args:
        inputs: What the run reads and writes (:class:`ShadowInputs`).
        job_id: Names the temporary folder and the lineage.
        domains: Only these domains (default: every domain with new samples).
        steps, lr, seed: Overrides of ``settings.training``.
        cancel: Set to stop before the next step; nothing is recorded.
        progress: Called after each step (see :data:`ShadowProgress`).
        threads: Torch CPU threads for training.

    Returns:
        ``release_id``, ``parent``, ``index_revision``, ``seconds`` and per domain ``samples``,
        ``steps``, ``final_loss``, ``seconds``, ``adapter`` (digest).

    Raises:
        NothingToTrainError: No new samples in the domains asked for.
        TrainingCancelled: ``cancel`` was set.
        UnknownDomainError, InvalidInputError: Bad request values.
    """
    from twinloop.learning.trainer import train_adapter

    started = time.perf_counter()
    settings, db, registry = inputs.settings, inputs.db, inputs.registry
    domains = check_request(inputs.domains, domains, steps, lr, seed)
    jobs = TrainJobs(db)
    clean_tmp(inputs.data_dir, jobs, keep=job_id)
    registry.artifacts.clean_temporaries()
    work = inputs.data_dir.shadow_tmp / job_id
    try:
        todo = _new_samples(db, domains or inputs.domains)
        if not todo:
            raise NothingToTrainError("no new training samples" + (f" for {', '.join(domains)}" if domains else ""))
        parent_id = registry.pointer("active")
        parent = registry.get(parent_id) if parent_id else None
        adapters = dict(parent.adapters) if parent else {}
        replay = ReplayBuffer(db, settings.replay)
        seed_used = settings.training.seed if seed is None else seed
        per_domain: dict[str, dict[str, Any]] = {}
        lineage_domains: dict[str, dict[str, Any]] = {}
        used_ids: list[int] = []
        for i, (domain, rows) in enumerate(sorted(todo.items())):
            previous = registry.artifacts.get("adapter", adapters[domain]) if domain in adapters else None

            def on_step(step: int, total: int, loss: float, _d: str = domain, _i: int = i) -> None:
                if progress is not None:
                    progress({"domain": _d, "domain_index": _i, "domains_total": len(todo), "step": step,
                              "total": total, "loss": loss})

            work.mkdir(parents=True, exist_ok=True)
            # A batch never holds more items than exist (new + replayable): the paper's 32
            # would repeat three corrections ten times each per step, ~16x the CPU cost of
            # the same learning signal (measured: 10.4 s vs 0.45 s per step).
            # Corrections go in with paraphrases, and the base's own answers to general prompts
            # are replayed under a KL term (learning/consolidation.py).
            samples = with_paraphrases([_sample(r) for r in rows], settings.consolidation, inputs.foundation,
                                       seed=seed_used)
            distill = distill_pairs(inputs.foundation, settings.consolidation, inputs.data_dir.distill_cache)
            # Sized by the samples that arrived, not their paraphrases: the paraphrases are drawn
            # over the steps instead, so a run costs what it did before them (in the demo, a
            # batch of all 28 rewordings made 40 steps take 13 minutes instead of one).
            batch = max(1, min(settings.training.batch_size, len(rows) + replay.size(domain)))
            result = train_adapter(
                inputs.foundation, samples, lora=settings.lora, ewc_cfg=settings.ewc,
                training=settings.training, out_dir=work / domain, previous=previous, replay=replay,
                domain=domain, replay_ratio=settings.replay.mix_ratio, steps=steps, lr=lr, seed=seed_used,
                threads=threads, batch_size=batch, progress=on_step, cancel=cancel, distill=distill,
                distill_per_step=settings.consolidation.distill_per_step,
                kl_weight=settings.consolidation.kl_weight)
            artifact = registry.artifacts.put_dir(result.out_dir, "adapter")
            adapters[domain] = artifact.digest
            used_ids += [r["id"] for r in rows]
            metrics = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
                       "seconds": round(result.seconds, 3), "replayed": result.replayed,
                       "trainable_parameters": result.trainable_parameters,
                       "paraphrases": len(samples) - len(rows), "distill_prompts": len(distill),
                       "penalty_shares": result.penalty_shares, "kl": result.kl}
            lineage_domains[domain] = {"samples": [r["sha256"] for r in rows], "sample_ids": [r["id"] for r in rows],
                                       "previous_adapter": parent.adapters.get(domain) if parent else None,
                                       "adapter": artifact.digest, "metrics": metrics}
            per_domain[domain] = {"samples": len(rows), "steps": result.steps, "final_loss": result.final_loss,
                                  "seconds": round(result.seconds, 3), "adapter": artifact.digest}
        lineage = {
            "job_id": job_id, "parent": parent_id, "base": inputs.foundation.name, "seed": seed_used,
            "hyperparameters": {
                "steps": steps or settings.training.steps, "learning_rate": lr or settings.training.learning_rate,
                "replay_ratio": settings.replay.mix_ratio, "lora": settings.lora.model_dump(mode="json"),
                "ewc": settings.ewc.model_dump(mode="json"), "training": settings.training.model_dump(mode="json"),
                "consolidation": settings.consolidation.model_dump(mode="json"),
            },
            "domains": lineage_domains,
        }
        index_revision = inputs.index_revision()
        crash_point("shadow.before_release")
        release = registry.create_candidate(parent_id, adapters, index_revision, inputs.router_json, lineage)
        registry.set_pointer("shadow", release.id)
        # Last: only now does a committed release hold what these samples taught.
        with db.transaction() as conn:
            mark_used(conn, used_ids)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"release_id": release.id, "parent": parent_id, "index_revision": index_revision,
            "domains": per_domain, "seconds": round(time.perf_counter() - started, 3)}


__all__ = ["NothingToTrainError", "ShadowInputs", "check_request", "clean_tmp", "run_shadow_training"]
