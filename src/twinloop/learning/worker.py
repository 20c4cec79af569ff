"""The Shadow worker process, and how the CLI and the API start it (docs/DESIGN.md "Learning").

``python -m twinloop.learning.worker --job JOB_ID [--data-dir D] [--config C]`` runs one job in
its own process, with its own copy of the base model, so training never shares weights, locks
or the GIL with serving. It sets the torch thread count from ``foundation.threads`` (default:
cores − 1) so a serving process on the same machine keeps a core, treats SIGTERM as a cancel
(the run stops before its next step and records nothing), and writes status and progress to
the job's ``train_jobs`` row.

The job row carries a snapshot of the starter's settings (API keys left out), so the worker
trains with exactly the settings of the process that asked, however those were built.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from twinloop.kernel.datadir import DataDir
from twinloop.kernel.db import Database
from twinloop.kernel.errors import TwinLoopError
from twinloop.learning.feedback import FeedbackDesk
from twinloop.learning.jobs import JobRunningError, TrainJobs

log = logging.getLogger("twinloop.learning.worker")

PROGRESS_INTERVAL_S = 0.25
"""Least time between two progress writes (each is a synchronous SQLite commit)."""


def _settings_snapshot(settings) -> dict[str, Any]:
    # ``api`` holds keys: never copied into the database.
    return settings.model_dump(mode="json", exclude={"api"})


def start_training_job(settings, db: Database, known_domains: Collection[str], *,
                       feedback: FeedbackDesk | None = None, domains: list[str] | None = None,
                       steps: int | None = None, lr: float | None = None, seed: int | None = None) -> str:
    """Validate the request, create the job row and spawn its worker; returns the job id.

    Args:
        settings: The starter's settings; a snapshot (API keys left out) goes with the job.
        db: The metadata database (the job row).
        known_domains: Configured domain names.
        feedback: When given, feedback a crash left unfiltered is filtered first, so the job
            trains on everything accepted so far (learning/feedback.py).
        domains, steps, lr, seed: The request (default: every domain with new samples, and
            ``settings.training``).

    Raises:
        UnknownDomainError, InvalidInputError: Bad request values (checked before anything runs).
        JobRunningError: Another training job is queued or running.
    """
    from twinloop.learning.shadow import check_request

    domains = check_request(known_domains, domains, steps, lr, seed)
    if feedback is not None:
        feedback.process_pending()
    jobs = TrainJobs(db)
    jobs.reap_stale()
    live = jobs.live()
    if live:
        raise JobRunningError(f"training job {live[0]['id']} is {live[0]['status']}; wait for it or stop it")
    params = {"domains": domains, "steps": steps, "lr": lr, "seed": seed,
              "settings": _settings_snapshot(settings)}
    jid = jobs.create(domains, params)
    data = DataDir(Path(settings.data_dir).resolve())
    try:
        with open(data.logs / f"{jid}.log", "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "twinloop.learning.worker", "--job", jid, "--data-dir", str(data.root)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the starter's terminal does not reach it
            )
    except OSError as e:
        reason = f"could not start the worker: {e}"
        jobs.fail(jid, reason)
        # No worker will write its failure: the starter records it (as the reaper does).
        from twinloop.release.events import EventStore

        EventStore(db).append("training.failed", actor="system:shadow", subject=jid, reason=reason[:300],
                              data={"domains": domains})
        raise TwinLoopError(f"could not start the training worker: {e}") from e
    jobs.set_pid(jid, proc.pid)
    # Reap the child when it exits, so a long-lived starter (the API server) keeps no zombies.
    threading.Thread(target=proc.wait, name=f"reap-{jid}", daemon=True).start()
    return jid


def _threads(settings) -> int:
    return settings.foundation.threads or max(1, (os.cpu_count() or 2) - 1)


def run_job(job_id: str, data_dir: Path, config: Path | None = None) -> int:
    """Run one queued job to its end in this process; returns the exit code (0 ok, 1 crash, 2 error)."""
    import torch

    from twinloop.kernel.config import load_settings
    from twinloop.learning.trainer import TrainingCancelled
    from twinloop.runtime import (
        Runtime,  # this process's entry point: it builds its own
    )

    jobs = TrainJobs(Database(DataDir(Path(data_dir)).database))
    job = jobs.get(job_id)
    snapshot = job["params"].get("settings")
    if snapshot is not None:
        settings = load_settings(None, **{**snapshot, "data_dir": data_dir})
    else:
        settings = load_settings(config, data_dir=data_dir)
    runtime = Runtime(settings)
    threads = _threads(settings)
    torch.set_num_threads(threads)

    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    jobs.start(job_id, os.getpid())
    last = [0.0]

    def progress(doc: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or doc["step"] == doc["total"] or doc["step"] == 1:
            last[0] = now
            jobs.progress(job_id, doc)

    p = job["params"]
    audit = runtime.events
    audit.append("training.started", actor="system:shadow", subject=job_id, reason="",
                 data={"domains": p.get("domains"), "steps": p.get("steps"), "lr": p.get("lr"), "seed": p.get("seed")})
    try:
        result = run_shadow(runtime, job_id, p, cancel, progress, threads)
    except TrainingCancelled as e:
        jobs.fail(job_id, str(e), status="cancelled")
        audit.append("training.failed", actor="system:shadow", subject=job_id, reason=f"cancelled: {e}")
        return 2
    except TwinLoopError as e:
        jobs.fail(job_id, str(e))
        audit.append("training.failed", actor="system:shadow", subject=job_id, reason=str(e)[:300])
        log.error("training job %s failed: %s", job_id, e)
        return 2
    except BaseException as e:
        jobs.fail(job_id, f"{type(e).__name__}: {e}")
        audit.append("training.failed", actor="system:shadow", subject=job_id, reason=f"{type(e).__name__}")
        log.exception("training job %s crashed", job_id)
        return 1
    jobs.finish(job_id, result)
    audit.append("training.finished", actor="system:shadow", subject=job_id, reason="",
                 data={"release_id": result.get("release_id"), "seconds": result.get("seconds"),
                       "domains": {d: {k: v for k, v in r.items() if k in ("samples", "steps", "final_loss")}
                                   for d, r in result.get("domains", {}).items()}})
    return 0


def run_shadow(runtime, job_id: str, params: dict[str, Any], cancel, progress, threads: int) -> dict[str, Any]:
    """Run the job's Shadow training with this process's runtime, passed down explicitly."""
    from twinloop.learning.shadow import ShadowInputs, run_shadow_training

    inputs = ShadowInputs(settings=runtime.settings, data_dir=runtime.data_dir, db=runtime.db,
                          registry=runtime.releases, domains=runtime.domains.names(),
                          foundation=runtime.foundation, index_revision=runtime.knowledge.current_revision,
                          router_json=runtime.router.spec.to_json())
    return run_shadow_training(inputs, job_id, domains=params.get("domains"), steps=params.get("steps"),
                               lr=params.get("lr"), seed=params.get("seed"), cancel=cancel, progress=progress,
                               threads=threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twinloop.learning.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="train_jobs id to run")
    parser.add_argument("--data-dir", type=Path, default=None, help="data directory (default: from settings)")
    parser.add_argument("--config", type=Path, default=None, help="YAML settings, when the job has no snapshot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    data_dir = args.data_dir
    if data_dir is None:
        from twinloop.kernel.config import load_settings

        data_dir = load_settings(args.config).data_dir
    try:
        return run_job(args.job, data_dir, args.config)
    except TwinLoopError as e:  # unknown job, job not queued
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
