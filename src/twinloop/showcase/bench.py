"""Run every benchmark program and summarise their headline figures (docs/DESIGN.md "Facts measured here").

The programs under ``benchmarks/`` stay the source of truth: each runs as its
own process, prints its figures and writes its own JSON. This module only runs them one after
another, reads that JSON back, picks out the few figures a reader looks at first, and writes
``summary.json`` (everything, raw results included) and ``summary.md`` (one table each).

One program failing — a crash, a timeout, unreadable JSON — is recorded with its exit code
and last stderr lines; the others still run.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from twinloop.kernel.clock import now_iso
from twinloop.kernel.errors import ConfigError, InvalidInputError

# src/twinloop/showcase/bench.py → the checkout root, where benchmarks/ lives. An installed wheel has
# no benchmarks/ (they are programs, not package code), which run_benchmarks reports.
REPO_ROOT = Path(__file__).resolve().parents[2]
STDERR_TAIL_LINES = 20

Headlines = dict[str, Any]
Status = Literal["ok", "failed", "skipped"]


# -- headline figures, one extractor per program's JSON ---------------------------------------
# Each takes the document the program wrote and returns {label: value}; labels carry the unit.


def foundation_headlines(doc: Mapping[str, Any]) -> Headlines:
    """Cold (GGUF de-quantisation) vs warm (verified cache) start, from ``foundation_load.py``."""
    cold, warm = doc["cold"], doc["warm"]
    return {
        "cold load (s)": cold["load_seconds"],
        "warm load, median (s)": warm["load_seconds_median"],
        "cold whole ask (s)": cold["process_seconds"],
        "warm whole ask, median (s)": warm["process_seconds_median"],
        "load speed-up (x)": doc["load_speedup"],
        "whole ask speed-up (x)": doc["process_speedup"],
        # The corrupted cache must be detected and rebuilt, i.e. not loaded from cache.
        "corrupt cache rebuilt": not doc["corrupt_cache"]["from_cache"],
    }


def retrieval_headlines(doc: Mapping[str, Any]) -> Headlines:
    """Recall@k and p95 latency per search mode, index build speed and router accuracy."""
    k = doc["k"]
    out: Headlines = {
        "chunks": doc["chunks"],
        "build s per 1,000 chunks": doc["build_seconds_per_1000_chunks"],
    }
    for mode, r in doc["retrieval"].items():
        out[f"recall@{k} {mode}"] = r[f"recall@{k}"]
        out[f"p95 ms {mode}"] = r["latency_ms_p95"]
    router = doc["router"]
    out["router accuracy"] = router["default"]["accuracy"]
    out["router multi-domain, all labels"] = router["multi_domain"]["all_labels_activated"]
    return out


def serving_headlines(doc: Mapping[str, Any]) -> Headlines:
    """Batching gain (tok/s batched ÷ one-by-one) per workload and concurrency, adapter overhead."""
    out: Headlines = {}
    for workload, gains in doc["batching_gain"].items():
        for c, gain in sorted(gains.items(), key=lambda kv: int(kv[0])):
            out[f"batching gain {workload} c={c} (x)"] = gain
    overhead = doc["adapter_overhead"]
    # Older runs (docs/bench/serving_full.json) measured only the answer workload and stored
    # its record unnested.
    if "overhead_percent_tokens_per_second" in overhead:
        overhead = {"answer": overhead}
    for workload, o in overhead.items():
        out[f"adapter overhead {workload} c={o['concurrency']} (%)"] = o["overhead_percent_tokens_per_second"]
    out["failed requests"] = sum(r["errors"] for r in doc["runs"])
    return out


def training_headlines(doc: Mapping[str, Any]) -> Headlines:
    """Probe accuracy before, on the candidate and on Active after `twinloop train`, and its time."""
    n = doc["probes"]
    return {
        "probes correct before": f"{doc['correct_before']}/{n}",
        "probes correct, candidate": f"{doc['correct_candidate']}/{n}",
        "probes correct, Active after": f"{doc['correct_active_after']}/{n}",
        "training steps": doc["steps"],
        "training (s)": doc["training_seconds"],
        "whole `twinloop train` (s)": doc["command_seconds"],
    }


def release_headlines(doc: Mapping[str, Any]) -> Headlines:
    """Swap/rollback p50/p99 (paper §5.3: under 100 ms) and failed requests while swapping."""
    lat, load = doc["latency"], doc["under_load"]
    out: Headlines = {}
    for op in ("swap", "rollback"):
        out[f"{op} p50 (ms)"] = lat[op]["total_ms"]["p50_ms"]
        out[f"{op} p99 (ms)"] = lat[op]["total_ms"]["p99_ms"]
    out["requests under load"] = load["requests"]
    out["failed requests under load"] = load["failed"]
    out["swaps/rollbacks under load ok"] = f"{load['moves_ok']}/{load['moves']}"
    return out


# -- the table of programs ---------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark program and how to run it in each mode."""

    name: str
    """Key for ``--only`` and the stem of its output JSON (``<out_dir>/<name>.json``)."""
    script: str
    """File name under ``benchmarks/``."""
    measures: str
    """One line for the summary: what the program measures."""
    headlines: Callable[[Mapping[str, Any]], Headlines]
    """Picks the headline figures out of the program's JSON."""
    full_args: tuple[str, ...] = ()
    """Arguments of a full run: the program's own defaults unless given here."""
    quick_args: tuple[str, ...] | None = ()
    """Arguments of a ``--quick`` run; ``None``: skipped in quick mode (see ``quick_skip``)."""
    quick_skip: str = ""
    """Why the program is skipped in quick mode."""
    timeout_s: float = 3600.0
    """Limit of a full run; the program is killed (with its children) past it."""
    quick_timeout_s: float = 900.0
    """Limit of a quick run."""

    def args(self, quick: bool) -> tuple[str, ...] | None:
        """Arguments for the mode, or ``None`` when the program does not run in it."""
        return self.quick_args if quick else self.full_args


# On the 2-core CPU development machine, shared with other jobs (load ~3), a quick run took
# 15 min, serving 8.5 of them with ``--concurrency 1 4`` and 48 tokens, hence its smaller size now.
SPECS: dict[str, BenchSpec] = {
    s.name: s
    for s in (
        BenchSpec("foundation_load", "foundation_load.py", "cold GGUF vs warm cached start of `twinloop ask`",
                  foundation_headlines, quick_args=("--repeats", "1")),
        BenchSpec("retrieval", "retrieval.py", "recall@5 + latency: hybrid vs BM25 vs dense; router accuracy",
                  retrieval_headlines, quick_args=None,
                  quick_skip="the program has no subset option; its index of every seed corpus "
                             "(~6,750 chunks) takes ~3 min to embed. Run it with --quick --only retrieval"),
        BenchSpec("serving", "serving.py", "tok/s and latency, batching on/off, LoRA adapter overhead",
                  # One concurrency (4, where batching shows) and short answers: the program's
                  # 12+ runs at full size are most of a full bench's time.
                  serving_headlines, quick_args=("--requests", "4", "--concurrency", "4", "--max-tokens", "24")),
        BenchSpec("training", "training.py", "`twinloop train` on 3 corrections: probe accuracy, training time",
                  training_headlines, quick_args=("--steps", "10")),
        BenchSpec("release", "release.py", "swap/rollback p50/p99; failed requests while swapping under load",
                  release_headlines, quick_args=("--ops", "100", "--seconds", "10")),
    )
}


# -- running -----------------------------------------------------------------------------------


@dataclass
class BenchRecord:
    """What one program's run produced."""

    name: str
    status: Status
    command: str | None = None
    """The command line as run from the checkout root (``None`` when skipped)."""
    seconds: float | None = None
    exit_code: int | None = None
    headlines: Headlines = field(default_factory=dict)
    result: dict[str, Any] | None = None
    """The program's JSON, unchanged."""
    output: str | None = None
    error: str | None = None
    stderr_tail: list[str] = field(default_factory=list)


@dataclass
class BenchSummary:
    """A whole ``twinloop bench`` run."""

    mode: Literal["quick", "full"]
    created: str
    seconds: float
    git_commit: str | None
    git_dirty: bool | None
    machine: dict[str, Any]
    benchmarks: list[BenchRecord]
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def select(only: Sequence[str], specs: Mapping[str, BenchSpec] = SPECS) -> list[BenchSpec]:
    """The specs named in ``only`` (all when empty), in table order.

    Raises:
        InvalidInputError: a name is not in the table.
    """
    for name in only:
        if name not in specs:
            raise InvalidInputError(f"unknown benchmark {name!r}; known: {', '.join(specs)}")
    return [s for s in specs.values() if not only or s.name in only]


def run_benchmarks(
    only: Sequence[str] = (),
    *,
    quick: bool = False,
    out_dir: Path | None = None,
    benchmarks_dir: Path | None = None,
    specs: Mapping[str, BenchSpec] = SPECS,
    progress: Callable[[str], None] | None = None,
) -> BenchSummary:
    """Run the selected benchmark programs one after another and write the summary.

    Programs run sequentially, never side by side: they measure throughput and latency on
    the same cores, so overlapping them would corrupt each other's figures.

    Args:
        only: Benchmark names to run; all when empty. A program skipped in quick mode still
            runs when named here (with its full-size arguments, having no smaller ones).
        quick: Small sizes (a smoke run of every program, not figures to quote).
        out_dir: Where the programs' JSON, their logs and the summary go; default
            ``bench-results`` (``bench-results/quick`` with ``quick``, so a smoke run never
            overwrites a full run's figures) in the checkout.
        benchmarks_dir: Folder holding the programs; default ``benchmarks/`` of the checkout.
            Programs run with its parent as working directory.
        specs: The table of programs (tests pass their own).
        progress: Called with one line before and after each program.

    Returns:
        The summary, also written to ``out_dir/summary.json`` and ``out_dir/summary.md``.

    Raises:
        InvalidInputError: a name in ``only`` is unknown.
        ConfigError: the benchmarks folder does not exist (e.g. an installed wheel).
    """
    chosen = select(only, specs)
    bench_dir = (benchmarks_dir or REPO_ROOT / "benchmarks").resolve()
    if not bench_dir.is_dir():
        raise ConfigError(f"benchmark programs not found: {bench_dir} is not a folder "
                          "(they ship with the source checkout, not the installed package)")
    root = bench_dir.parent
    default_out = root / "bench-results" / "quick" if quick else root / "bench-results"
    out = (out_dir or default_out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _line: None)

    start = time.perf_counter()
    created = now_iso()
    machine = machine_info()  # before the first program, so its load is other work's, not ours
    records: list[BenchRecord] = []
    for spec in chosen:
        args = spec.args(quick)
        if args is None and spec.name in only:
            args = spec.full_args
        if args is None:
            records.append(BenchRecord(spec.name, "skipped", error=f"skipped in --quick: {spec.quick_skip}"))
            say(f"{spec.name}: skipped in --quick")
            continue
        timeout = spec.quick_timeout_s if quick else spec.timeout_s
        say(f"{spec.name}: running (limit {timeout:.0f} s)…")
        rec = run_one(spec, args, bench_dir=bench_dir, out_dir=out, timeout_s=timeout)
        records.append(rec)
        say(f"{spec.name}: {rec.status} in {rec.seconds:.0f} s" + (f" — {rec.error}" if rec.error else ""))

    commit, dirty = _git_state(root)
    summary = BenchSummary(
        mode="quick" if quick else "full", created=created, seconds=round(time.perf_counter() - start, 1),
        git_commit=commit, git_dirty=dirty, machine=machine, benchmarks=records,
    )
    write_summary(summary, out, specs)
    return summary


def run_one(spec: BenchSpec, args: Sequence[str], *, bench_dir: Path, out_dir: Path, timeout_s: float) -> BenchRecord:
    """Run one program as a subprocess and read its JSON; never raises for the program's faults.

    Its stdout and stderr go to ``<out_dir>/<name>.stdout.log`` and ``.stderr.log`` while it
    runs (``tail -f`` shows progress); the record keeps the last stderr lines.
    """
    root = bench_dir.parent
    result_path = out_dir / f"{spec.name}.json"
    # A stale file from an earlier run must not pass for this run's result.
    result_path.unlink(missing_ok=True)
    argv = [sys.executable, str(bench_dir / spec.script), *args, "--out", str(result_path)]
    shown = [_rel(Path(a), root) if Path(a).is_absolute() else a for a in argv]
    rec = BenchRecord(spec.name, "failed", command=shlex.join(shown), output=str(result_path))
    stdout_log, stderr_log = out_dir / f"{spec.name}.stdout.log", out_dir / f"{spec.name}.stderr.log"
    start = time.perf_counter()
    with stdout_log.open("w", encoding="utf-8") as out_fh, stderr_log.open("w", encoding="utf-8") as err_fh:
        # Its own session, so a timeout kills the program's children too (`twinloop ask`,
        # the training worker) rather than leaving them to hold the cores.
        proc = subprocess.Popen(argv, cwd=root, stdout=out_fh, stderr=err_fh, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rec.error = f"timed out after {timeout_s:g} s"
        except BaseException:
            # Ctrl-C reaches only our process group, not the program's own session.
            _kill_group(proc)
            raise
    rec.seconds = round(time.perf_counter() - start, 1)
    rec.exit_code = proc.returncode
    rec.stderr_tail = stderr_log.read_text(encoding="utf-8", errors="replace").splitlines()[-STDERR_TAIL_LINES:]
    if rec.error:
        return rec
    if proc.returncode != 0:
        rec.error = f"exit code {proc.returncode}"
        return rec
    try:
        rec.result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        rec.error = f"no readable JSON at {result_path}: {e}"
        return rec
    try:
        rec.headlines = spec.headlines(rec.result)
    except (KeyError, TypeError, ValueError) as e:
        # The program and its extractor disagree on the JSON's shape: keep the raw result.
        rec.error = f"cannot read headline figures from {result_path.name}: {type(e).__name__} {e}"
        return rec
    rec.status = "ok"
    return rec


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the program and every process it started, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone, with its group
        pass
    proc.wait()


def machine_info() -> dict[str, Any]:
    """CPU count, Python, platform, torch version and load — enough to tell two runs' machines apart."""
    try:
        # The installed version without importing torch (seconds on a small machine).
        torch_version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    # Other work on the machine slows every figure; the load average says whether it was idle.
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "torch": torch_version, "load_average_1m": load}


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    """HEAD's commit and whether the work tree has changes; ``(None, None)`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        st = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return head.stdout.strip(), (bool(st.stdout.strip()) if st.returncode == 0 else None)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the checkout when inside it, so the command reads as one to retype."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# -- writing -----------------------------------------------------------------------------------


def write_summary(summary: BenchSummary, out_dir: Path, specs: Mapping[str, BenchSpec] = SPECS) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` into ``out_dir``; returns their paths."""
    json_path, md_path = out_dir / "summary.json", out_dir / "summary.md"
    summary.files = {"json": str(json_path), "markdown": str(md_path)}
    json_path.write_text(json.dumps(summary.to_json(), indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(summary, specs), encoding="utf-8")
    return json_path, md_path


def format_value(value: Any) -> str:
    """A figure as a table cell: 4 significant digits, booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "–" if value is None else str(value)


def render_markdown(summary: BenchSummary, specs: Mapping[str, BenchSpec] = SPECS) -> str:
    """One overview table, then per benchmark its command and a table of headline figures."""
    measures = {name: s.measures for name, s in specs.items()}
    m = summary.machine
    commit = (summary.git_commit or "unknown")[:12] + (" (uncommitted changes)" if summary.git_dirty else "")
    lines = [
        f"# Benchmark summary ({summary.mode})",
        "",
        f"{summary.created} · commit {commit} · {m['cpu_count']} CPUs · Python {m['python']} · "
        f"torch {m['torch'] or 'not installed'} · {m['platform']} · load {format_value(m.get('load_average_1m'))} "
        f"at start · {summary.seconds:.0f} s in all",
        "",
        "| benchmark | status | seconds |",
        "|---|---|---:|",
    ]
    lines += [f"| {r.name} | {r.status} | {format_value(r.seconds)} |" for r in summary.benchmarks]
    for r in summary.benchmarks:
        lines += ["", f"## {r.name}", ""]
        if r.name in measures:
            lines += [measures[r.name] + ".", ""]
        if r.command:
            lines += [f"`{r.command}`", ""]
        if r.status != "ok":
            lines.append(f"**{r.status}**: {r.error}")
            if r.stderr_tail:
                lines += ["", "```", *r.stderr_tail, "```"]
            continue
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in r.headlines.items()]
    return "\n".join(lines) + "\n"
