"""The continual-learning report's plots: four PNG files drawn with matplotlib (Agg backend).

:func:`twinloop.showcase.experiments.report.write_report` calls these with the methods of a
results document, in report order; what each plot shows is listed in that module's docstring.
The plots only draw: every figure they show is already in the results document, and the
paper's values come in as arguments.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from twinloop.kernel.atomic import atomic_write_bytes

Methods = dict[str, dict[str, Any]]
"""A results document's methods by name, in the order the report lists them."""

MARKERS = {"Static": "s", "IndexOnly": "*", "NaiveAdapters": "v", "TwinLoop": "o", "TwinLoop-EWC": "^", "TwinLoop-Replay": "D",
           "TwinLoop-Index": "P", "FullFineTune": "X"}
COLORS = {"Static": "#7f7f7f", "IndexOnly": "#bcbd22", "NaiveAdapters": "#d62728", "TwinLoop": "#2ca02c", "TwinLoop-EWC": "#ff7f0e",
          "TwinLoop-Replay": "#9467bd", "TwinLoop-Index": "#17becf", "FullFineTune": "#1f77b4"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _domain_curve(x: dict[str, Any], tasks: list[dict[str, Any]], domain: str) -> list[float | None]:
    """Mean accuracy over ``domain``'s tasks seen so far, after each step (None before the first)."""
    out: list[float | None] = []
    for i, row in enumerate(x["R"]):
        vals = [row[j] for j in range(i + 1) if tasks[j]["domain"] == domain]
        out.append(statistics.fmean(vals) if vals else None)
    return out


def learning_curves(methods: Methods, tasks: list[dict[str, Any]], domains: list[str], path: Path) -> Path:
    """Accuracy over the tasks seen so far after each step: all domains, then one panel per domain."""
    plt = _pyplot()
    panels = ["all", *domains]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    steps = list(range(len(tasks)))
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, x in methods.items():
            ys = x["curve"] if panel == "all" else _domain_curve(x, tasks, panel)
            ax.plot(steps, [float("nan") if y is None else y for y in ys], marker=MARKERS.get(name, "o"),
                    label=name, color=COLORS.get(name), alpha=0.85)
        ax.set_title("all domains" if panel == "all" else panel)
        ax.set_xticks(steps, [t["name"] for t in tasks], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy on tasks seen so far")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Learning curves (accuracy after each step)")
    out = _save(fig, path)
    plt.close(fig)
    return out


def forgetting(methods: Methods, paper: dict[str, float], path: Path) -> Path:
    """Forgetting and BWT per method as bars; ``paper``: the paper's forgetting (%) by our method name."""
    plt = _pyplot()
    m = methods
    names = list(m)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names)), 3.8))
    xs = list(range(len(names)))
    w = 0.38
    ax.bar([x - w / 2 for x in xs], [100 * m[n]["forgetting"] for n in names], w, label="forgetting (ours)",
           color=[COLORS.get(n, "#333") for n in names])
    ax.bar([x + w / 2 for x in xs], [100 * m[n]["bwt"] for n in names], w, label="BWT (ours)", color="#bbbbbb")
    for x, n in zip(xs, names, strict=True):
        if n in paper:
            ax.plot([x - w, x + w], [paper[n]] * 2, color="black", linestyle="--", linewidth=1)
    ax.plot([], [], color="black", linestyle="--", linewidth=1, label="paper's forgetting (7B, 10 cycles)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("percentage points")
    ax.set_title("Forgetting (Chaudhry et al.) and backward transfer per method")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def latency(methods: Methods, path: Path) -> Path:
    """Answer latency per method (evaluation and during updates), and ingest → first cited answer."""
    plt = _pyplot()
    m = methods
    names = list(m)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    xs = list(range(len(names)))
    w = 0.2
    series = [("latency_eval_ms", "p50", "evaluation p50"), ("latency_eval_ms", "p95", "evaluation p95"),
              ("latency_under_update_ms", "p50", "during updates p50"),
              ("latency_under_update_ms", "p95", "during updates p95")]
    for k, (key, q, label) in enumerate(series):
        ax1.bar([x + (k - 1.5) * w for x in xs], [(m[n][key][q] or 0) / 1000 for n in names], w, label=label)
    ax1.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
    ax1.set_ylabel("seconds per answer")
    ax1.set_title("Answer latency")
    ax1.legend(fontsize=7)
    ax1.grid(axis="y", alpha=0.3)
    cited = {n: [v for v in m[n]["ingest_to_cited_s"]["values"] if v is not None] for n in names}
    cited = {n: v for n, v in cited.items() if v}
    if cited:
        for k, (n, vals) in enumerate(cited.items()):
            ax2.scatter([k] * len(vals), vals, color=COLORS.get(n), label=n)
            ax2.plot([k - 0.25, k + 0.25], [statistics.median(vals)] * 2, color="black")
        ax2.set_xticks(range(len(cited)), list(cited), rotation=20, ha="right", fontsize=8)
        ax2.set_ylim(bottom=0)
    else:
        ax2.text(0.5, 0.5, "no method refreshed the index", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_ylabel("seconds")
    ax2.set_title("Document ingest → first cited answer")
    ax2.grid(axis="y", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def matrices(methods: Methods, tasks: list[dict[str, Any]], path: Path) -> Path:
    """Each method's R[i][j] as a heat map."""
    plt = _pyplot()
    m = methods
    names = list(m)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    labels = [t["name"] for t in tasks]
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.axis("off")
            continue
        r = [[float("nan") if v is None else v for v in row] for row in m[names[k]]["R"]]
        im = ax.imshow(r, vmin=0, vmax=1, cmap="viridis")
        for i, row in enumerate(r):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 else "black")
        ax.set_title(names[k], fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
    fig.suptitle("R[i][j]: accuracy on task j (column) after step i (row)")
    out = _save(fig, path)
    plt.close(fig)
    return out



__all__ = ["COLORS", "MARKERS", "Methods", "forgetting", "latency", "learning_curves", "matrices"]
