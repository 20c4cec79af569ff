"""The continual-learning experiment on the real system (paper §6).

Domains arrive in sequence (law → med → fin, for several cycles); each (cycle, domain) step
is a *task* bringing new facts the base cannot know (:mod:`twinloop.showcase.experiments.facts`).
Every method (:mod:`twinloop.showcase.experiments.methods`) learns each task its own way; after each
step the probes of *all tasks seen so far* are answered through the method's serving copy,
which fills row i of the accuracy matrix ``R[i][j]`` (:mod:`twinloop.showcase.experiments.metrics`).

Measured per step: the update's wall time, training time and CPU seconds (the Shadow worker's
via ``getrusage(RUSAGE_CHILDREN)``, this process's for the in-place full fine-tune); the
availability of the serving copy during the update (a load generator sends real requests,
:mod:`twinloop.showcase.experiments.load`); answer latency at rest (the evaluation) and under the
update (the load); for methods that refresh the index, the time from a document's ingest to
the first answer that cites it.

The real QA sets "where they fit": a few packaged held-out cases per domain (the ones whose
cited sources are in the pack's corpus) are answered before the first and after the last
step, with their sources in the index only for those two checks, so that unrelated real
passages do not change the fact probes' prompts during the sequence. A drop shows harm to
what the model could already do (a forgetting check on real data).

Methods run one after another, each in its own temporary data directory with its own base
copy (the de-quantised model cache is shared through a link), so one method's adapters,
replay buffers and index never reach another. Greedy decoding throughout; evaluation answers
are sent ``concurrency`` at a time, so the engine batches them as it would batch users.
"""

from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from twinloop.kernel.atomic import atomic_write_json
from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import Settings
from twinloop.kernel.datadir import DataDir
from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.stats import percentile
from twinloop.showcase.experiments import metrics
from twinloop.showcase.experiments.facts import DOMAINS, Fact, Task, is_correct, tasks
from twinloop.showcase.experiments.load import LoadGenerator
from twinloop.showcase.experiments.methods import METHODS, Method, MethodParams

RESULTS_FILE = "results.json"
Progress = Callable[[str], None]

QUICK_METHODS = ("Static", "NaiveAdapters", "TwinLoop")
ANSWER_CHARS = 200
"""Answer text kept per probe in results.json."""


@dataclass(frozen=True)
class EvalConfig:
    """What one run of the experiment does.

    Attributes:
        mode: ``quick`` (CI), ``full`` (the report) or ``custom``.
        domains: Domains in the order they arrive each cycle.
        cycles: How often the domain sequence repeats, each time with new facts.
        facts_per_step: New facts per (cycle, domain) task.
        probes_per_fact: Paraphrased probes asked per fact (at most 3).
        methods: Method names (see :data:`~twinloop.showcase.experiments.methods.METHODS`).
        steps: Optimiser steps per update.
        lr: Adapter learning rate (the CPU recipe, ``benchmarks/training.py``).
        full_lr: Full fine-tune learning rate.
        batch_size: Examples per training step.
        seed: Training seed.
        max_tokens: Completion limit of every answer (greedy decoding).
        concurrency: Evaluation answers in flight at once (engine batching).
        load_interval_s: Least time between two load-generator requests during an update.
        real_cases_per_domain: Packaged held-out QA cases per domain for the real-data check
            (0 skips it).
        threads: Torch threads for training (None: the Shadow worker's default, cores − 1).
        foundation: Overrides of the base model settings (tests use ``{"source": "tiny"}``).
        report: Write ``report.md`` and PNG plots next to ``results.json``.
    """

    mode: Literal["quick", "full", "custom"] = "custom"
    domains: tuple[str, ...] = DOMAINS
    cycles: int = 2
    facts_per_step: int = 3
    probes_per_fact: int = 2
    methods: tuple[str, ...] = tuple(METHODS)
    steps: int = 30
    lr: float = 2e-3
    full_lr: float = 5e-5
    batch_size: int = 4
    seed: int = 0
    max_tokens: int = 40
    concurrency: int = 4
    load_interval_s: float = 5.0
    real_cases_per_domain: int = 2
    threads: int | None = None
    foundation: dict[str, Any] | None = None
    report: bool = False
    consolidation: dict[str, Any] | None = None
    """Overrides of the ``consolidation`` settings for the adapter methods' Shadow runs."""

    def __post_init__(self) -> None:
        for name in ("cycles", "facts_per_step", "probes_per_fact", "steps", "batch_size", "max_tokens",
                     "concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} = {v!r}: must be an integer ≥ 1")
        if self.probes_per_fact > 3:
            raise InvalidInputError(f"probes_per_fact = {self.probes_per_fact}: the fact set has 3 probes per fact")
        if self.real_cases_per_domain < 0:
            raise InvalidInputError(f"real_cases_per_domain = {self.real_cases_per_domain}: must be ≥ 0")
        for name in ("lr", "full_lr", "load_interval_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise InvalidInputError(f"{name} = {v!r}: must be a number > 0")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise InvalidInputError(f"threads = {self.threads!r}: must be an integer ≥ 1")
        if not self.methods:
            raise InvalidInputError("methods is empty: name at least one of " + ", ".join(METHODS))
        for m in self.methods:
            if m not in METHODS:
                raise InvalidInputError(f"unknown method {m!r}; known: {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise InvalidInputError(f"methods = {list(self.methods)!r}: a method is named twice")
        for d in self.domains:
            if d not in DOMAINS:
                raise InvalidInputError(f"unknown domain {d!r} for the experiment; known: {', '.join(DOMAINS)}")
        tasks(self.domains, self.cycles, self.facts_per_step)  # enough facts for the sequence

    def params(self) -> MethodParams:
        return MethodParams(steps=self.steps, lr=self.lr, full_lr=self.full_lr, batch_size=self.batch_size,
                            seed=self.seed, max_tokens=self.max_tokens, threads=self.threads,
                            consolidation=self.consolidation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quick_config(**overrides: Any) -> EvalConfig:
    """CI mode: 1 cycle, law then med, 2 facts each, Static vs NaiveAdapters vs TwinLoop.

    Fewer, smaller steps at a higher learning rate than the full mode (16 steps of 2 examples
    at 3e-3 rather than 30 of 4 at 2e-3) so that it finishes in about four minutes on a 2-core
    CPU (with the full mode's steps it took six); no real-QA check. Consolidation is lightened
    the same way — 8 self-distillation prompts, 2 a step, no model paraphrases — since each
    Shadow worker generates the base's answers afresh in a new data directory.
    """
    base = dict(mode="quick", domains=("law", "med"), cycles=1, facts_per_step=2, probes_per_fact=2,
                methods=QUICK_METHODS, steps=16, lr=3e-3, batch_size=2, real_cases_per_domain=0,
                consolidation={"distill_prompts": 8, "distill_per_step": 2, "model_paraphrases": 0})
    return EvalConfig(**{**base, **overrides})


def full_config(**overrides: Any) -> EvalConfig:
    """Report mode: every method, law → med → fin for 2 cycles of 3 facts, report written.

    Sized to finish in about an hour on a 2-core CPU. Each adapter update is a Shadow worker
    run of 60–85 s (30 steps of 4 examples on one core, next to the serving load), and the
    evaluation after step i answers every probe seen so far; three cycles were on course for
    about 110 minutes (9 updates × 5 adapter methods), over the 90 minutes allowed.
    """
    base = dict(mode="full", domains=DOMAINS, cycles=2, facts_per_step=3, probes_per_fact=2,
                methods=tuple(METHODS), report=True)
    return EvalConfig(**{**base, **overrides})


# -- the run ---------------------------------------------------------------------------------


def run(config: EvalConfig, out_dir: str | Path, *, settings: Settings, progress: Progress | None = None) -> dict:
    """Run the experiment; write ``results.json`` (and the report in report mode) to ``out_dir``.

    Args:
        config: What to run.
        out_dir: Folder for the results (created).
        settings: The user's settings: model, retrieval, EWC, replay... Their data directory
            only lends its model cache; every method works in a temporary data directory.
        progress: Called with one line per step.

    Returns:
        The results document (what ``results.json`` holds).
    """
    say = progress or (lambda _msg: None)
    git = git_state()  # the code that runs is the code at the start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started_at = now_iso()
    t0 = time.perf_counter()
    if config.foundation:
        doc = settings.model_dump(mode="json")
        doc["foundation"].update(config.foundation)
        settings = Settings.model_validate(doc)
    task_list = tasks(config.domains, config.cycles, config.facts_per_step)
    real = select_real_cases(config.domains, config.real_cases_per_domain) if config.real_cases_per_domain else []
    model_cache = DataDir(Path(settings.data_dir)).model_cache
    work = Path(tempfile.mkdtemp(prefix="twinloop-eval-"))
    results: dict[str, Any] = {}

    def document(partial: bool) -> dict[str, Any]:
        return {
            "experiment": "continual-learning",
            "partial": partial,
            "started_at": started_at,
            "seconds": round(time.perf_counter() - t0, 1),
            "git": git,
            "machine": machine(),
            "model": {"foundation": settings.foundation.model_dump(mode="json"),
                      "lora": settings.lora.model_dump(mode="json"), "ewc": settings.ewc.model_dump(mode="json"),
                      "replay": settings.replay.model_dump(mode="json")},
            "config": config.to_dict(),
            "tasks": [{"index": t.index, "name": t.name, "cycle": t.cycle, "domain": t.domain,
                       "facts": [f.id for f in t.facts]} for t in task_list],
            "real_cases": [{"id": c["case"].id, "domain": c["case"].domain, "documents": len(c["documents"])}
                           for c in real],
            "methods": results,
            "comparison": compare(results),
        }

    try:
        for name in config.methods:
            say(f"[{name}] starting ({METHODS[name].description})")
            results[name] = run_method(METHODS[name], work / name, model_cache, settings, config, task_list,
                                       real, say)
            if len(results) < len(config.methods):
                # A long run that fails late keeps what it measured ("partial": true).
                atomic_write_json(out_dir / RESULTS_FILE, document(partial=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = document(partial=False)
    atomic_write_json(out_dir / RESULTS_FILE, doc)
    if config.report:
        from twinloop.showcase.experiments.report import write_report

        write_report(doc, out_dir)
    return doc


def run_method(cls: type[Method], data_dir: Path, model_cache: Path, settings: Settings, config: EvalConfig,
               task_list: list[Task], real: list[dict[str, Any]], say: Progress) -> dict[str, Any]:
    """One method through the whole task sequence; returns its part of the results."""
    (data_dir / "cache").mkdir(parents=True)
    # The de-quantised base is ~0.5 GB and 15 s to rebuild: every method (and its Shadow
    # worker) reads the one the user's data directory already has.
    (data_dir / "cache" / "foundation").symlink_to(model_cache.resolve(), target_is_directory=True)
    method = cls(data_dir, settings, config.params())
    t = time.perf_counter()
    method.start()
    startup_s = time.perf_counter() - t
    n = len(task_list)
    r: list[list[float | None]] = [[None] * n for _ in range(n)]
    steps: list[dict[str, Any]] = []
    try:
        real_before = real_check(method, real, config) if real else None
        for i, task in enumerate(task_list):
            seen = task_list[: i + 1]
            queries = [(f.probes[0], f.domain) for s in seen for f in s.facts]
            cpu0 = time.process_time()
            with LoadGenerator(method.answer, queries, config.load_interval_s) as load:
                update = method.update(task)
            serve_cpu = time.process_time() - cpu0
            t = time.perf_counter()
            answers = evaluate(method, seen, config)
            eval_s = time.perf_counter() - t
            active = method.active_release()
            if update.release_id is not None and active != update.release_id:
                # R must measure what the method learned: a release that left Active during its
                # own evaluation makes the row meaningless, so say it loudly.
                say(f"[{cls.name}] WARNING: Active is {active} after evaluating {task.name}, not the release "
                    f"swapped in ({update.release_id})")
            for j in range(i + 1):
                mine = [a for a in answers if a["task"] == j]
                r[i][j] = sum(a["correct"] for a in mine) / len(mine)
            row_acc = metrics.average_accuracy(_square(r, i))
            steps.append({
                "task": task.name, "cycle": task.cycle, "domain": task.domain,
                "update": asdict(update), "load": load.stats.to_dict(), "active_release": active,
                "process_cpu_s": round(serve_cpu, 3), "eval_s": round(eval_s, 3), "answers": answers,
            })
            say(f"[{cls.name}] {task.name}: update {update.wall_s:.1f} s (train {update.train_s:.1f} s, "
                f"cpu {update.train_cpu_s:.1f} s), served {load.stats.served}/{load.stats.sent} during it; "
                f"eval {len(answers)} answers {eval_s:.1f} s, accuracy so far {row_acc:.2f}")
        real_after = real_check(method, real, config) if real else None
        rollbacks = method.rollbacks()
    finally:
        method.close()
    return {**summarise(cls, r, steps, startup_s, real_before, real_after), "rollbacks": rollbacks}


def _square(r: list[list[float | None]], i: int) -> list[list[float | None]]:
    """The leading (i+1)×(i+1) block of R: the matrix as it stood after step i."""
    return [row[: i + 1] for row in r[: i + 1]]


def evaluate(method: Method, seen: list[Task], config: EvalConfig) -> list[dict[str, Any]]:
    """Answer every probe of the tasks seen so far; one record per probe."""
    items = [(t.index, f, p) for t in seen for f in t.facts for p in f.probes[: config.probes_per_fact]]

    def one(item: tuple[int, Fact, str]) -> dict[str, Any]:
        j, fact, probe = item
        t = time.perf_counter()
        try:
            rec = method.answer(probe, fact.domain)
        except Exception as e:  # an error is a wrong answer, recorded, never a crashed run
            return {"task": j, "fact": fact.id, "probe": probe, "correct": False, "cited": False,
                    "latency_ms": round((time.perf_counter() - t) * 1000, 1), "status": "error",
                    "text": f"{type(e).__name__}: {e}"[:ANSWER_CHARS]}
        text = model_text(rec.text)
        return {"task": j, "fact": fact.id, "probe": probe, "correct": is_correct(text, fact),
                "cited": any(c.uri == fact.uri for c in rec.citations),
                "latency_ms": round((time.perf_counter() - t) * 1000, 1), "status": rec.status,
                "text": text[:ANSWER_CHARS]}

    with ThreadPoolExecutor(config.concurrency, thread_name_prefix="twinloop-eval") as pool:
        return list(pool.map(one, items))


def model_text(text: str) -> str:
    """The answer as scored: its text (in a grounded domain, quotes of the passages)."""
    return text


# -- real QA cases ---------------------------------------------------------------------------


def select_real_cases(domains: tuple[str, ...], per_domain: int) -> list[dict[str, Any]]:
    """The first ``per_domain`` packaged held-out cases of each domain whose cited sources are
    in the domain's seed corpus, with those source documents.

    Raises:
        InvalidInputError: A domain without enough such cases.
    """
    from twinloop.knowledge.domains import load_pack, pack_corpus
    from twinloop.release.qa import citation_matches, load_cases

    cases = load_cases(list(domains))
    out: list[dict[str, Any]] = []
    for d in domains:
        corpus = pack_corpus(load_pack(d))
        found = 0
        for case in (c for c in cases if c.domain == d and c.citations):
            docs = [doc for doc in corpus
                    if any(citation_matches(ref, SimpleNamespace(uri=doc.uri, label=None)) for ref in case.citations)]
            if not docs:
                continue
            out.append({"case": case, "documents": [doc.model_dump(mode="json", exclude_none=True) for doc in docs]})
            found += 1
            if found == per_domain:
                break
        if found < per_domain:
            raise InvalidInputError(f"domain {d!r} has only {found} packaged QA cases with sources in its corpus; "
                                    f"{per_domain} asked for")
    return out


def real_check(method: Method, real: list[dict[str, Any]], config: EvalConfig) -> dict[str, Any]:
    """Answer the real cases with their sources in the index (added, then set aside again)."""
    from twinloop.learning.filters import ToxicityFilter
    from twinloop.serving.dryrun import score_pipeline_answer as score_answer
    from twinloop.serving.pipeline import AnswerRequest

    by_domain: dict[str, list[dict[str, Any]]] = {}
    for item in real:
        by_domain.setdefault(item["case"].domain, []).extend(item["documents"])
    for d, docs in by_domain.items():
        method.ingest_existing(d, docs)
    tox = ToxicityFilter()
    results = []
    try:
        for item in real:
            case = item["case"]
            t = time.perf_counter()
            req = AnswerRequest(query=case.query, domain=case.domain, as_of=case.as_of,
                                jurisdiction=case.jurisdiction, max_tokens=max(config.max_tokens, 64))
            try:
                rec = method.service.answer(req)
            except Exception as e:  # counted as a failed case, as the QA dry run does
                results.append({"case": case.id, "domain": case.domain, "content_ok": False, "passed": False,
                                "answer": f"{type(e).__name__}: {e}"[:ANSWER_CHARS]})
                continue
            res = score_answer(case, rec, (time.perf_counter() - t) * 1000, tox)
            results.append({"case": case.id, "domain": case.domain, "content_ok": res.content_ok,
                            "passed": res.passed, "answer": res.answer[:ANSWER_CHARS]})
    finally:
        for d, docs in by_domain.items():
            method.remove_existing(d, sorted({doc["uri"] for doc in docs if doc.get("uri")}))
    n = len(results)
    return {"cases": n, "content_ok": sum(r["content_ok"] for r in results) / n,
            "passed": sum(r["passed"] for r in results) / n, "results": results}


# -- summaries -------------------------------------------------------------------------------


def summarise(cls: type[Method], r: list[list[float | None]], steps: list[dict[str, Any]], startup_s: float,
              real_before: dict | None, real_after: dict | None) -> dict[str, Any]:
    """One method's figures: GEM metrics, costs, availability, latencies."""
    sent = sum(s["load"]["sent"] for s in steps)
    served = sum(s["load"]["served"] for s in steps)
    eval_lat = [a["latency_ms"] for s in steps for a in s["answers"] if a["status"] != "error"]
    load_lat = [x for s in steps for x in s["load"]["latencies_ms"]]
    cited = [s["update"]["ingest_to_cited_s"] for s in steps if s["update"]["ingest_s"] is not None]
    ingest = [s["update"]["ingest_s"] for s in steps if s["update"]["ingest_s"] is not None]
    cycles: dict[int, dict[str, float]] = {}
    for s in steps:
        c = cycles.setdefault(s["cycle"], {"wall_s": 0.0, "train_s": 0.0, "train_cpu_s": 0.0, "update_wall_s": 0.0})
        c["wall_s"] += s["update"]["wall_s"] + s["eval_s"]
        c["update_wall_s"] += s["update"]["wall_s"]
        c["train_s"] += s["update"]["train_s"]
        c["train_cpu_s"] += s["update"]["train_cpu_s"]
    final = r[-1]
    domains = sorted({s["domain"] for s in steps})
    per_domain = {d: statistics.fmean(float(final[j]) for j, s in enumerate(steps) if s["domain"] == d)
                  for d in domains}
    return {
        "name": cls.name,
        "description": cls.description,
        "refresh_index": cls.refresh_index,
        "ewc": cls.ewc,
        "replay": cls.replay,
        "R": r,
        **metrics.summary(r),
        "curve": metrics.curve(r),
        "forgetting_curve": metrics.forgetting_curve(r),
        "per_task_forgetting": metrics.per_task_forgetting(r),
        "final_accuracy_by_domain": per_domain,
        "availability": served / sent if sent else 1.0,
        "requests_during_updates": sent,
        "failed_during_updates": sent - served,
        "latency_eval_ms": {"p50": percentile(eval_lat, 50), "p95": percentile(eval_lat, 95), "n": len(eval_lat)},
        "latency_under_update_ms": {"p50": percentile(load_lat, 50), "p95": percentile(load_lat, 95),
                                    "n": len(load_lat)},
        "ingest_to_cited_s": {
            "values": cited,
            "median": statistics.median([c for c in cited if c is not None]) if any(c is not None for c in cited)
            else None,
            "cited_share": (sum(c is not None for c in cited) / len(cited)) if cited else None,
            "ingest_median_s": statistics.median(ingest) if ingest else None,
        },
        "cycles": {str(k): {kk: round(vv, 3) for kk, vv in v.items()} for k, v in sorted(cycles.items())},
        "train_cpu_s_total": round(sum(s["update"]["train_cpu_s"] for s in steps), 3),
        "update_wall_s_total": round(sum(s["update"]["wall_s"] for s in steps), 3),
        "startup_s": round(startup_s, 3),
        "real_qa": {"before": real_before, "after": real_after} if real_before is not None else None,
        "steps": steps,
    }


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """The headline comparison (paper §6.2.2): TwinLoop's forgetting next to Naive adapters'."""
    out: dict[str, Any] = {"paper": {"naive_forgetting": 0.191, "twinloop_forgetting": 0.069}}
    for name in ("NaiveAdapters", "TwinLoop", "TwinLoop-Index", "IndexOnly"):
        if name in results:
            m = results[name]
            out[name] = {"acc": m["acc"], "forgetting": m["forgetting"], "bwt": m["bwt"]}
    tl = results.get("TwinLoop")
    if tl is not None:
        out["ingest_to_cited_median_s"] = tl["ingest_to_cited_s"]["median"]
    return out


# -- provenance ------------------------------------------------------------------------------


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit the code ran from and whether the working tree had changes (None outside git)."""
    where = str(cwd or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", where, "status", "--porcelain"], capture_output=True, text=True,
                                check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed_files": None}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": head, "dirty": bool(changed), "changed_files": changed}


def machine() -> dict[str, Any]:
    import os

    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


__all__ = ["EvalConfig", "QUICK_METHODS", "RESULTS_FILE", "evaluate", "full_config", "git_state", "quick_config",
           "real_check", "run", "select_real_cases"]
