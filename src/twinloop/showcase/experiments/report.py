"""The continual-learning report: Markdown with PNG plots, tables shaped like the paper's §6.2.

:func:`write_report` turns the results document of :func:`twinloop.showcase.experiments.continual.run`
into ``report.md`` (the text, rendered here) plus four plots (drawn by
:mod:`twinloop.showcase.experiments.plots`; matplotlib, Agg backend: no display needed):

- ``learning_curves.png`` — accuracy per domain over the steps, one line per method (§6.2.3);
- ``forgetting.png`` — forgetting and backward transfer per method, the paper's figures
  marked where it has one (§6.2.2, §6.2.5);
- ``latency.png`` — p50/p95 answer latency at rest and during updates per method, and the
  time from a document's ingest to the first answer citing it (§8.2, §6.3);
- ``accuracy_matrix.png`` — R[i][j] of each method as a heat map.

Every §6.2 table keeps the paper's columns and rows, in the paper's order, with the paper's
value next to ours; where we have no such measure (dollar cost, the "− canary gates"
ablation) the cell says so instead of inventing a number.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from twinloop.kernel.atomic import atomic_write_bytes
from twinloop.showcase.experiments import plots

REPORT_FILE = "report.md"
PLOTS = ("learning_curves.png", "forgetting.png", "latency.png", "accuracy_matrix.png")

# Paper §6.2 tables (LLaMA-2-7B, 8× A100, 10 cycles of 500 samples per domain).
PAPER_ADAPTATION = {  # method: (GPU-hours, wall-clock, cost, downtime)
    "Full retrain": ("48.0", "6.0 h", "$1,920", "2–6 h"),
    "Naive adapters": ("2.5", "0.5 h", "$100", "0–1 h"),
    "TwinLoop": ("2.0", "0.3 h", "$80", "0 s"),
}
PAPER_FORGETTING = {  # method: (initial acc %, after 10 cycles %, forgetting %)
    "Static": (67.2, 67.2, 0.0),
    "Full retrain": (78.5, 71.3, 9.2),
    "Naive adapters": (76.8, 62.1, 19.1),
    "TwinLoop": (77.9, 72.5, 6.9),
}
PAPER_AVAILABILITY = {  # method: (uptime %, downtime events, rollbacks)
    "Full retrain": ("87.3 %", "10", "N/A"),
    "Naive adapters": ("95.1 %", "5", "2"),
    "TwinLoop": ("99.95 %", "1", "3"),
}
PAPER_ABLATION = {  # configuration: (accuracy %, forgetting %, GPU-hours)
    "Full TwinLoop": (77.9, 6.9, 2.0),
    "— EWC": (75.2, 14.3, 1.8),
    "— Replay": (74.1, 16.2, 1.5),
    "— Canary gates": (77.5, 7.1, 2.0),
    "— RAG refresh": (71.8, 7.2, 2.0),
}
PAPER_ROW = {"Static": "Static", "FullFineTune": "Full retrain", "NaiveAdapters": "Naive adapters",
             "TwinLoop": "TwinLoop"}
"""Our method → the paper's row of the same baseline."""
ABLATION_ROW = {"Full TwinLoop": "TwinLoop", "— EWC": "TwinLoop-EWC", "— Replay": "TwinLoop-Replay",
                "— Canary gates": None, "— RAG refresh": "TwinLoop-Index"}
"""The paper's ablation row → our method (None: not run)."""


def paper_forgetting() -> dict[str, float]:
    """The paper's forgetting (%) of each of our methods that has a paper row or ablation row."""
    return {**{ours: PAPER_FORGETTING[row][2] for ours, row in PAPER_ROW.items()},
            **{ours: PAPER_ABLATION[row][1] for row, ours in ABLATION_ROW.items()
               if ours is not None and row != "Full TwinLoop"}}


def write_report(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.md`` and the PNG plots for a results document; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods, tasks = _methods(doc), doc["tasks"]
    written = [
        plots.learning_curves(methods, tasks, doc["config"]["domains"], out_dir / PLOTS[0]),
        plots.forgetting(methods, paper_forgetting(), out_dir / PLOTS[1]),
        plots.latency(methods, out_dir / PLOTS[2]),
        plots.matrices(methods, tasks, out_dir / PLOTS[3]),
    ]
    md = render_markdown(doc)
    atomic_write_bytes(out_dir / REPORT_FILE, md.encode("utf-8"))
    return [out_dir / REPORT_FILE, *written]


# -- formatting ------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, digits: int = 1, unit: str = "") -> str:
    return "—" if x is None else f"{x:.{digits}f}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _methods(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # In the order the run named them (results.json sorts its keys).
    order = [n for n in doc["config"]["methods"] if n in doc["methods"]]
    return {n: doc["methods"][n] for n in order + sorted(set(doc["methods"]) - set(order))}


def _cycles(doc: dict[str, Any]) -> int:
    return doc["config"]["cycles"]


def _per_cycle(m: dict[str, Any], key: str) -> float:
    vals = [c[key] for c in m["cycles"].values()]
    return statistics.fmean(vals) if vals else 0.0


def _rollbacks(m: dict[str, Any]) -> str:
    if "rollbacks" not in m:
        return "not recorded"
    if m["train_cpu_s_total"] == 0 or all(s["update"]["release_id"] is None for s in m["steps"]):
        return "N/A (no release moves)"
    return f"{len(m['rollbacks'])} (watch: error-rate trigger only)"


def _ingest_median(m: dict[str, Any]) -> float | None:
    vals = [s["update"]["ingest_s"] for s in m["steps"] if s["update"]["ingest_s"] is not None]
    return statistics.median(vals) if vals else None


def _downtime(m: dict[str, Any]) -> str:
    failed = m["failed_during_updates"]
    if m["requests_during_updates"] == 0:
        return "—"
    if failed == 0:
        return "0 s"
    # Requests were refused for the whole of each update window (FullFineTune).
    windows = [s["load"]["seconds"] for s in m["steps"] if s["load"]["failed"]]
    return f"{sum(windows) / len(windows):.0f} s per update ({failed} refused)"


# -- markdown --------------------------------------------------------------------------------


def render_markdown(doc: dict[str, Any]) -> str:
    """The report's text (tables and notes; the plots are linked)."""
    cfg, git = doc["config"], doc["git"]
    n_tasks = len(doc["tasks"])
    commit = git.get("commit") or "unknown"
    dirty = " (working tree had uncommitted changes: " + ", ".join(git.get("changed_files") or []) + ")" \
        if git.get("dirty") else ""
    parts: list[str] = []
    parts.append("# Continual learning on the real model (paper §6.2)\n")
    parts.append(
        f"Made by {_command(cfg)} from commit `{commit}`{dirty}, "
        f"started {doc['started_at']}, {doc['seconds'] / 60:.0f} min in all, on {doc['machine']['cpus']} CPU cores "
        f"({doc['machine']['platform']}, torch {doc['machine']['torch']}). Model: "
        f"{_model_name(doc)}; LoRA r={doc['model']['lora']['r']} α={doc['model']['lora']['alpha']} on "
        f"{', '.join(doc['model']['lora']['target_modules'])}; EWC λ={doc['model']['ewc']['lam']} "
        f"β={doc['model']['ewc']['beta']}; replay mix {doc['model']['replay']['mix_ratio']}, α="
        f"{doc['model']['replay']['alpha']}. Raw figures: [results.json](results.json).\n")
    parts.append(_setup_section(doc, n_tasks))
    parts.append(_headline(doc))
    parts.append(_adaptation_table(doc))
    parts.append(_forgetting_table(doc))
    parts.append(_curves_section(doc))
    parts.append(_availability_table(doc))
    parts.append(_ablation_table(doc))
    parts.append(_latency_section(doc))
    parts.append(_real_qa_section(doc))
    parts.append(_matrices_section(doc))
    parts.append(_honesty_section(doc))
    parts.append("## Reproduce\n\n```bash\nHF_HUB_OFFLINE=1 .venv/bin/twinloop eval --full     # all methods, this report "
                 "(docs/eval/)\nHF_HUB_OFFLINE=1 .venv/bin/twinloop eval --quick    # the CI sanity run, a few minutes "
                 "(bench-results/eval-quick/)\n```\n\nThe run measured above: " + _command(cfg) + ".\n")
    return "\n".join(parts)


def _command(cfg: dict[str, Any]) -> str:
    if cfg["mode"] in ("quick", "full"):
        return f"`twinloop eval --{cfg['mode']}`"
    return "`twinloop.showcase.experiments.continual.run` with a custom configuration (results.json has it)"


def _model_name(doc: dict[str, Any]) -> str:
    f = doc["model"]["foundation"]
    if f.get("source") == "tiny":
        return "a tiny random model (plumbing test; the figures mean nothing)"
    return "SmolLM2-135M-Instruct (float32, CPU)" if f.get("source") == "gguf" else str(f.get("path"))


def _setup_section(doc: dict[str, Any], n_tasks: int) -> str:
    cfg = doc["config"]
    seq = " → ".join(t["name"] for t in doc["tasks"])
    return (
        "## Setup\n\n"
        f"- **Tasks**: {n_tasks} steps, {cfg['cycles']} cycle(s) of {' → '.join(cfg['domains'])}: {seq}. Each step "
        f"brings {cfg['facts_per_step']} new facts about made-up entities the base cannot know "
        "(`src/twinloop/showcase/experiments/data/facts.yaml`), each arriving as a correction plus one "
        "paraphrased prompt; "
        f"each fact is probed with {cfg['probes_per_fact']} other paraphrases. An answer is right when it contains "
        "the fact's answer string (normalised).\n"
        "- **R[i][j]**: accuracy on task j's probes after step i, answered through each method's own running "
        "Service (route forced to the fact's domain; retrieval, adapter, verification as in production); "
        f"greedy decoding, at most {cfg['max_tokens']} tokens.\n"
        "- **Metrics** (GEM; `experiments/metrics.py`): ACC = mean of the last row; BWT = mean of "
        "R[T−1][j] − R[j][j]; forgetting (Chaudhry et al. 2018) = mean over earlier tasks of the best earlier "
        "accuracy minus the final one; learned = mean of R[j][j] (accuracy right after learning).\n"
        f"- **Training**: {cfg['steps']} steps per update, lr {cfg['lr']} (adapters) / {cfg['full_lr']} (full "
        f"fine-tune), batch {cfg['batch_size']}, seed {cfg['seed']}; adapters by the real Shadow worker process "
        "(one CPU thread), swapped in while Active serves; the full fine-tune trains the served weights in place.\n"
        f"- **Availability**: during every update a client sends real answer requests (one every "
        f"{cfg['load_interval_s']} s or back to back when slower) and counts the served ones.\n"
        "- **Methods**: " + "; ".join(f"**{n}** — {m['description']}" for n, m in _methods(doc).items()) + ".\n")


def _headline(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    lines = ["## Headline\n"]
    naive, tl = m.get("NaiveAdapters"), m.get("TwinLoop")
    if naive and tl:
        lines.append(
            f"- **Forgetting: TwinLoop {_pct(tl['forgetting'])} vs Naive adapters {_pct(naive['forgetting'])}** "
            f"(paper: 6.9 % vs 19.1 %). Final average accuracy {_pct(tl['acc'])} vs {_pct(naive['acc'])}; "
            f"BWT {tl['bwt']:+.3f} vs {naive['bwt']:+.3f}.")
    idx = m.get("TwinLoop-Index")
    if idx and naive:
        lines.append(
            f"- Adapters alone, with vs without EWC + replay (TwinLoop-Index vs NaiveAdapters): forgetting "
            f"{_pct(idx['forgetting'])} vs {_pct(naive['forgetting'])}, ACC {_pct(idx['acc'])} vs "
            f"{_pct(naive['acc'])}.")
    io = m.get("IndexOnly")
    if io and tl:
        lines.append(
            f"- Index refresh alone (IndexOnly: the base answering from the ingested facts, no training): ACC "
            f"{_pct(io['acc'])}, forgetting {_pct(io['forgetting'])} — against TwinLoop's {_pct(tl['acc'])} and "
            f"{_pct(tl['forgetting'])}.")
    if tl:
        c = tl["ingest_to_cited_s"]
        if c["median"] is not None:
            lines.append(
                f"- **Document ingest → first answer citing it: median {c['median']:.1f} s** (TwinLoop; "
                f"{_pct(c['cited_share'])} of the steps got a cited answer within 4 questions; values "
                f"{', '.join(_num(v) for v in c['values'])} s). The ingest itself took a median "
                f"{_num(_ingest_median(tl), 2)} s; the rest is answering (one to four answers of a few seconds "
                "each on this CPU, with the load generator's requests sharing it). The paper's "
                "case study (§6.3) has the index updated 30 min after publication.")
    for name in ("FullFineTune",):
        if name in m:
            ff = m[name]
            lines.append(f"- Full fine-tune: forgetting {_pct(ff['forgetting'])}, ACC {_pct(ff['acc'])}, "
                         f"availability during updates {_pct(ff['availability'])}, "
                         f"{ff['train_cpu_s_total'] / max(1, len(ff['steps'])):.0f} CPU-s per update.")
    return "\n".join(lines) + "\n"


def _adaptation_table(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    rows = []
    for ours, paper in (("FullFineTune", "Full retrain"), ("NaiveAdapters", "Naive adapters"),
                        ("TwinLoop", "TwinLoop")):
        p = PAPER_ADAPTATION[paper]
        if ours not in m:
            rows.append([paper, "not run", p[0], "not run", p[1], "—", p[2], "not run", p[3]])
            continue
        x = m[ours]
        rows.append([f"{paper} (ours: {ours})", f"{_per_cycle(x, 'train_cpu_s'):.0f} CPU-s", p[0],
                     f"{_per_cycle(x, 'update_wall_s'):.0f} s", p[1], "— (no cloud pricing; CPU-s given)", p[2],
                     _downtime(x), p[3]])
    return ("## 6.2.1 Adaptation speed\n\n"
            + _table(["Method", "CPU-seconds / cycle (ours)", "GPU-hours (paper)", "Wall-clock / cycle (ours)",
                      "Wall-clock (paper)", "Cost (ours)", "Cost (paper)", "Downtime (ours)", "Downtime (paper)"],
                     rows)
            + "\n\nOurs: training CPU time per cycle (the Shadow worker's user+sys seconds; the full fine-tune's "
              "own), and the update's wall time per cycle (ingest, training, swap). A cycle here is "
              f"{len(doc['config']['domains'])} domain updates of {doc['config']['facts_per_step']} facts; the "
              "paper's is 500 samples per domain on 8 A100s, so only the ratios between rows compare.\n")


def _forgetting_table(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    rows = []
    for ours, paper in PAPER_ROW.items():
        p = PAPER_FORGETTING[paper]
        if ours not in m:
            rows.append([paper, "not run", f"{p[0]} %", "not run", f"{p[1]} %", "not run", f"{p[2]} %", "—"])
            continue
        x = m[ours]
        rows.append([f"{paper} (ours: {ours})", _pct(x["learning_accuracy"]), f"{p[0]} %", _pct(x["acc"]),
                     f"{p[1]} %", _pct(x["forgetting"]), f"{p[2]} %", f"{x['bwt']:+.3f}"])
    return ("## 6.2.2 Catastrophic forgetting\n\n![forgetting](forgetting.png)\n\n"
            + _table(["Method", "Initial acc (ours)", "Initial acc (paper)",
                      f"After {_cycles(doc)} cycle(s) (ours)", "After 10 cycles (paper)", "Forgetting (ours)",
                      "Forgetting (paper)", "BWT (ours)"], rows)
            + "\n\n\"Initial acc\" is, for us, the mean accuracy on each task right after it was learned (mean "
              "R[j][j]); the paper's is the accuracy after the first cycle. \"After N cycles\" is ACC, the mean of "
              "R's last row. Forgetting is Chaudhry et al.'s (the paper measures \"accuracy on domain A after "
              "training domain B, averaged over all pairs\").\n")


def _curves_section(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    names = [t["name"] for t in doc["tasks"]]
    rows = [[n] + [_pct(v) for v in x["curve"]] for n, x in m.items()]
    return ("## 6.2.3 Learning curves\n\n![learning curves](learning_curves.png)\n\n"
            "Average accuracy over the tasks seen so far, after each step:\n\n"
            + _table(["Method"] + [f"after {n}" for n in names], rows) + "\n")


def _availability_table(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    rows = []
    for ours, paper in (("FullFineTune", "Full retrain"), ("NaiveAdapters", "Naive adapters"),
                        ("TwinLoop", "TwinLoop")):
        p = PAPER_AVAILABILITY[paper]
        if ours not in m:
            rows.append([paper, "not run", p[0], "not run", p[1], "—", p[2]])
            continue
        x = m[ours]
        rows.append([f"{paper} (ours: {ours})",
                     f"{100 * x['availability']:.2f} % ({x['requests_during_updates'] - x['failed_during_updates']}"
                     f"/{x['requests_during_updates']})", p[0],
                     str(sum(1 for s in x["steps"] if s["load"]["failed"])), p[1],
                     _rollbacks(x), p[2]])
    return ("## 6.2.4 Availability\n\n"
            + _table(["Method", "Uptime during updates (ours)", "Uptime (paper)", "Updates with failed requests (ours)",
                      "Downtime events (paper)", "Rollbacks (ours)", "Rollbacks (paper)"], rows)
            + "\n\nOurs: the share of real requests served while each update ran (the paper: uptime over 10 "
              "cycles). Rollbacks are counted from each method's audit log; the post-swap watch runs with its "
              "error-rate trigger only (its latency trigger is set out of reach: on this CPU it rolled back "
              "every healthy release, see the notes below). The adapter methods keep answering from Active "
              "while the worker trains and during the swap. The full fine-tune has one copy of the weights, which it trains in place: requests that "
              "arrive meanwhile are refused, as a deployment without a second full copy must; a request already "
              "running when the update starts is finished first.\n")


def _ablation_table(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    rows = []
    for paper, ours in ABLATION_ROW.items():
        p = PAPER_ABLATION[paper]
        if ours is None:
            rows.append([paper, "not run (QA and canary skipped for every method)", f"{p[0]} %", "—",
                         f"{p[1]} %", "—", str(p[2])])
            continue
        if ours not in m:
            rows.append([paper, "not run", f"{p[0]} %", "not run", f"{p[1]} %", "not run", str(p[2])])
            continue
        x = m[ours]
        rows.append([f"{paper} (ours: {ours})", _pct(x["acc"]), f"{p[0]} %", _pct(x["forgetting"]), f"{p[1]} %",
                     f"{x['train_cpu_s_total'] / max(1, _cycles(doc)):.0f} CPU-s / cycle", str(p[2])])
    if "IndexOnly" in m:
        x = m["IndexOnly"]
        rows.append(["— Adapters, not in the paper (ours: IndexOnly)", _pct(x["acc"]), "—", _pct(x["forgetting"]),
                     "—", "0 CPU-s (no training)", "—"])
    return ("## 6.2.5 Ablation study\n\n"
            + _table(["Configuration", "Accuracy (ours)", "Accuracy (paper)", "Forgetting (ours)",
                      "Forgetting (paper)", "Cost (ours)", "GPU-hours (paper)"], rows) + "\n")


def _latency_section(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    rows = []
    for n, x in m.items():
        a, u = x["latency_eval_ms"], x["latency_under_update_ms"]
        c = x["ingest_to_cited_s"]
        rows.append([n, _num(a["p50"], 0), _num(a["p95"], 0), _num(u["p50"], 0), _num(u["p95"], 0),
                     "—" if c["median"] is None else f"{c['median']:.1f} s ({_pct(c['cited_share'])} cited)"])
    return ("## Latency\n\n![latency](latency.png)\n\n"
            + _table(["Method", "p50 ms (evaluation)", "p95 ms (evaluation)", "p50 ms (during updates)",
                      "p95 ms (during updates)", "ingest → cited answer"], rows)
            + "\n\nEvaluation answers are sent four at a time (the engine batches them), so their latency "
              "includes queueing; during updates one client sends one request at a time while the worker "
              "trains on the other core.\n")


def _real_qa_section(doc: dict[str, Any]) -> str:
    m = _methods(doc)
    if not any(x.get("real_qa") for x in m.values()):
        return ("## Real QA cases\n\nSkipped in this run (`real_cases_per_domain = 0`).\n")
    rows = []
    for n, x in m.items():
        rq = x.get("real_qa")
        if not rq:
            continue
        b, a = rq["before"], rq["after"]
        rows.append([n, str(b["cases"]), _pct(b["content_ok"]), _pct(a["content_ok"]), _pct(b["passed"]),
                     _pct(a["passed"])])
    ids = ", ".join(f"`{c['id']}`" for c in doc["real_cases"])
    return ("## Real QA cases (forgetting check on real data)\n\n"
            f"Packaged held-out cases ({ids}) answered before the first and after the last step, with their "
            "cited sources from the packs' real corpora in the index for those two checks only. \"Content\" = the "
            "answer contains an expected phrase; \"passed\" also needs the required citation (as the QA "
            "dry-run judges).\n\n"
            + _table(["Method", "Cases", "Content before", "Content after", "Passed before", "Passed after"], rows)
            + "\n")


def _matrices_section(doc: dict[str, Any]) -> str:
    names = [t["name"] for t in doc["tasks"]]
    out = ["## Accuracy matrices R[i][j]\n\n![accuracy matrices](accuracy_matrix.png)\n"]
    for n, x in _methods(doc).items():
        rows = [[f"after {names[i]}"] + [("" if v is None else f"{v:.2f}") for v in row]
                for i, row in enumerate(x["R"])]
        out.append(f"**{n}**\n\n" + _table(["step \\ task"] + names, rows) + "\n")
    return "\n".join(out)


def _honesty_section(doc: dict[str, Any]) -> str:
    cfg, m = doc["config"], _methods(doc)
    per_task = cfg["facts_per_step"] * cfg["probes_per_fact"]
    lines = ["## What these figures can and cannot say\n"]
    lines.append(
        "- **Scale.** A 135M-parameter model on a 2-core CPU, a few facts per step and "
        f"{cfg['cycles']} cycle(s), against the paper's LLaMA-2-7B on 8 A100s with 500 samples per domain and "
        "10 cycles. Accuracies, costs and latencies are not comparable in absolute terms; the orderings "
        f"between rows and the shape of the effects are what this run can test. With {per_task} probes per "
        f"task, one answer moves a task's accuracy by 1/{per_task}: differences of a few points are noise, "
        "and one seed was run."
        + (" The full mode runs 2 cycles: with 3 the run was on course for about 110 minutes on this "
           "machine (measured on its first methods), over the 90 allowed, so it was cut to 2."
           if cfg["mode"] == "full" and cfg["cycles"] == 2 else ""))
    lines.append(
        "- **Where forgetting can happen.** Each domain has its own adapter, so training med never touches "
        "law's weights: cross-domain forgetting of the adapter methods is zero by construction (paper §4.2, "
        "\"independent updates\"). It appears within a domain across cycles, when the domain's adapter is "
        "trained on new facts starting from the previous one. The full fine-tune shares all weights across "
        "domains and can forget across them. With one cycle there is nothing for the adapters to forget.")
    lines.append(
        "- **Where TwinLoop's low forgetting comes from.** The index keeps every ingested fact and the answer "
        "pipeline retrieves it, so TwinLoop's answers do not depend on the adapter remembering. TwinLoop-Index "
        "(adapters with EWC + replay, no index) against NaiveAdapters isolates what EWC and replay do for the "
        "adapters themselves; TwinLoop-EWC and TwinLoop-Replay remove one each.")
    base = m.get("TwinLoop")
    effects = []
    for name, what in (("TwinLoop-EWC", "EWC"), ("TwinLoop-Replay", "replay"), ("TwinLoop-Index", "the index")):
        if base and name in m:
            d_f = 100 * (m[name]["forgetting"] - base["forgetting"])
            d_a = 100 * (m[name]["acc"] - base["acc"])
            effects.append(f"without {what}: forgetting {d_f:+.1f} points, ACC {d_a:+.1f} points")
    if effects:
        lines.append("- **Ablations in this run**, against full TwinLoop: " + "; ".join(effects) + ".")
    if base and "TwinLoop-EWC" in m and m["TwinLoop-EWC"]["R"] == base["R"]:
        lines.append(
            f"- **EWC changed no answer.** TwinLoop and TwinLoop-EWC (λ = 0) have the same accuracy matrix, "
            f"entry for entry. With the configured λ = {doc['model']['ewc']['lam']} (the paper's 0.01–0.1) and "
            "a diagonal Fisher accumulated from squared batch gradients of the adapter, the penalty did not move "
            "training enough to change a single answer; replay did the consolidating. A λ "
            "sweep (or a normalised Fisher) is the next experiment; it is not run here.")
    io = m.get("IndexOnly")
    if base and io:
        if io["acc"] > base["acc"]:
            verdict = ("the adapters cost accuracy on top of retrieval: trained on a few facts each, they make the "
                       "model state learned facts where the question asks another (e.g. a learned \"19 hours\" "
                       "in answers about other acts) and override retrieved passages")
        elif io["acc"] < base["acc"]:
            verdict = "the adapters add accuracy on top of retrieval"
        else:
            verdict = "the adapters neither add nor cost accuracy on top of retrieval"
        lines.append(f"- **Adapters next to the index.** IndexOnly ACC {_pct(io['acc'])} vs TwinLoop "
                     f"{_pct(base['acc'])}: in this run {verdict}.")
    drops = [(n, x["real_qa"]["before"]["content_ok"], x["real_qa"]["after"]["content_ok"]) for n, x in m.items()
             if x.get("real_qa") and x["train_cpu_s_total"] > 0]
    if drops:
        lines.append(
            "- **Real QA cases after training.** " + "; ".join(f"{n} {_pct(b)} → {_pct(a)}" for n, b, a in drops)
            + " of the held-out real cases answered with the expected content (Static and IndexOnly do not "
            "train and stay put). Adapters trained only on short made-up facts damage answers to other questions "
            "of their domain; in deployment the QA dry run's forgetting gate (paper §5.1), skipped here, is what "
            "stands between such a candidate and users.")
    lines.append(
        "- **Gates.** QA dry-run and canary are skipped (forced swaps, audited) to keep each update about a "
        "minute; the \"− canary gates\" ablation is therefore not measured. Approvals that law and med "
        "require are given by the experiment itself.")
    lines.append(
        "- **The rollback watch's latency trigger is off in this experiment.** Its limit is the larger of "
        "`rollback.latency_p95_ms` (1000 ms) and 2 × the pre-swap p95, and the pre-swap window only fills "
        "while no watch runs (600 s after each swap). With a swap every minute or two the window stays empty, "
        "the limit falls to 1000 ms, and every answer of this model on this CPU takes longer: a first full run "
        "had each new release rolled back automatically about ten requests after its swap, and the next Shadow "
        "run trained on top of the rolled-back parent (adapters vanished from later releases; their domains "
        "answered exactly as the base). That run was discarded; the defect is reported, not fixed here.")
    lines.append(
        "- **Availability** is measured with one client during updates only; Static never updates. It says "
        "that serving went on, not how the system behaves under production load.")
    lines.append(
        "- **Timings** come from a shared 2-core machine; other work on it during the run lengthens wall "
        "times and latencies (CPU-seconds are less affected).")
    lines.append(
        "- **Training/serving prompt.** The Shadow trainer formats a sample with the chat template and the "
        "configured system prompt; the answer pipeline adds its own. The experiment sets "
        "`foundation.system_prompt` to the pipeline's no-source prompt so that adapter-only answers are served "
        "with the prompt they were trained with; with retrieved sources the prompt still differs from training.")
    return "\n".join(lines) + "\n"

__all__ = ["PLOTS", "REPORT_FILE", "paper_forgetting", "render_markdown", "write_report"]
