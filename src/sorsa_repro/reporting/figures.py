"""Figures (PNG and PDF) from the runs' metrics.csv and the aggregated accuracies.

Uses ``matplotlib.figure.Figure`` directly (Agg rendering, no pyplot global state) and strips
the metadata that would vary between runs, so regenerated files are byte-identical.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.style
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from sorsa_repro.reporting.aggregate import Summary, bench_name, group_label, sort_key
from sorsa_repro.reporting.protocol import check_protocol
from sorsa_repro.reporting.runs import Run
from sorsa_repro.results import atomic_write_bytes

EMA_SPAN = 10  # one smoothing setting for every curve and method
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 150,
    "figure.dpi": 100,
}
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
_SMOOTH = (
    f"each seed's curve smoothed by an exponential moving average (span {EMA_SPAN} steps) before averaging"
)
CAPTIONS = {
    "loss": "Training loss against optimizer step, one line per method: mean over seeds, shaded band = "
    f"min–max over seeds; {_SMOOTH}.",
    "ortho_penalty": "SORSA orthonormal penalty (mean over adapted matrices of ||UᵀU − I||_F and "
    "||VᵀV − I||_F, as logged in metrics.csv) against optimizer step: mean over seeds, band = min–max; "
    f"{_SMOOTH}.",
    "heldout_loss": "Held-out loss (rows never trained on) against optimizer step, at the steps where it was "
    "measured: mean over seeds (markers), band = min–max; not smoothed; dashed = the untrained base model.",
    "accuracy_per_method": "Accuracy (%) per method, strict answer extraction, each benchmark's first grader: "
    "correct answers pooled over seeds, bar = Wilson 95% interval; the base model (untrained) is the floor.",
    "cost_per_method": "Training cost per method: wall time of the training job and its peak memory, mean over "
    "seeds (bars), min–max (whiskers).",
    "accuracy_vs_rank": "Accuracy (%) against rank, strict answer extraction, grader named in each panel: "
    "mean over seeds, error bars = sample standard deviation (ddof=1; none with one seed).",
}


def _trained(run: Run) -> bool:
    if run.divergence:  # a diverged run's curve is left out (the README's run table says why)
        return False
    return run.status == "ok" or run.result.get("train", {}).get("status") == "finished"


def seed_curves(runs: list[Run], column: str, span: int = EMA_SPAN) -> dict[tuple, pd.DataFrame]:
    """Per group: smoothed ``column`` against step, as mean/min/max/n over seeds."""
    by_group: dict[tuple, list[pd.Series]] = {}
    for run in runs:
        m = run.metrics
        if m is None or column not in m or m[column].dropna().empty:
            continue
        s = (
            m.dropna(subset=[column])
            .drop_duplicates("step", keep="last")
            .set_index("step")[column]
            .sort_index()
        )
        by_group.setdefault((run.method, run.rank, run.variant), []).append(s.ewm(span=span).mean())
    curves = {}
    for key in sorted(by_group, key=lambda k: sort_key(*k)):
        df = pd.concat(by_group[key], axis=1)
        curves[key] = pd.DataFrame(
            {"mean": df.mean(axis=1), "min": df.min(axis=1), "max": df.max(axis=1), "n": df.count(axis=1)}
        )
    return curves


def _curve_figure(curves: dict, colors: dict, ylabel: str, title: str) -> Figure:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for key, c in curves.items():
        ax.plot(
            c.index,
            c["mean"],
            color=colors[key],
            lw=1.4,
            marker="o" if len(c) < 4 else None,  # a curve of one point draws nothing without a marker
            ms=3,
            label=f"{group_label(*key)} (n={int(c['n'].max())})",
        )
        ax.fill_between(c.index, c["min"], c["max"], color=colors[key], alpha=0.2, lw=0)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def heldout_curves(runs: list[Run]) -> dict[tuple, pd.DataFrame]:
    """Per group (the base model left out): the held-out loss at the measured steps, mean/min/max over seeds."""
    return seed_curves([r for r in runs if r.method != "base"], "heldout_loss", span=1)


def _heldout_figure(curves: dict, colors: dict, floor: float | None, title: str) -> Figure:
    fig = _curve_figure(curves, colors, "held-out loss", title)
    ax = fig.axes[0]
    for line in ax.get_lines():
        line.set_marker("o")
        line.set_markersize(3)
    if floor is not None:
        ax.axhline(floor, color="0.4", ls="--", lw=1, label="base model (untrained)")
        ax.legend(frameon=False)
    return fig


def _accuracy_figure(summary: Summary) -> Figure:
    """One panel per benchmark: each group's pooled accuracy (strict, first grader) with its Wilson interval."""
    from sorsa_repro.evaluation.summary import wilson

    benches = summary.benchmarks
    labels = list(summary.groups["label"])
    fig = Figure(figsize=(3.8 * len(benches), 0.45 * len(labels) + 1.2))
    for i, bench in enumerate(benches):
        ax = fig.add_subplot(1, len(benches), i + 1)
        grader = summary.graders(bench)[0]
        for y, g in enumerate(summary.groups.itertuples()):
            runs = [
                r for r in summary.ok_runs if (r.method, r.rank, r.variant) == (g.method, g.rank, g.variant)
            ]
            scores = [r.result.get("eval", {}).get(bench, {}) for r in runs]
            k = sum((e.get("scores", {}).get(grader) or {}).get("n_strict") or 0 for e in scores)
            n = sum(e.get("n") or 0 for e in scores if grader in e.get("scores", {}))
            if not n:
                continue
            low, high = wilson(k, n)
            ax.errorbar([100 * k / n], [y], xerr=[[100 * (k / n - low)], [100 * (high - k / n)]], fmt="o",
                        color=f"C{y % 10}", capsize=3)  # fmt: skip
        ax.set_yticks(range(len(labels)), labels if i == 0 else [""] * len(labels))
        ax.invert_yaxis()
        ax.set(xlabel="accuracy (%)", title=f"{bench_name(bench)} ({grader}, strict)")
    fig.tight_layout()
    return fig


def _cost_figure(summary: Summary) -> Figure:
    """Training wall time and peak memory per group: mean over seeds, min-max whiskers."""
    from sorsa_repro.reporting.run_measures import group_measures

    measures = group_measures(summary)
    labels = list(summary.groups["label"])
    fig = Figure(figsize=(7.6, 0.45 * len(labels) + 1.2))
    for i, (column, xlabel) in enumerate(
        (("train_s", "training wall time (s)"), ("peak_mib", "peak memory (MiB)"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        for y, (_, m) in enumerate(measures.iterrows()):
            mean = m[column][0]
            if mean is None:
                continue
            err = [[mean - m[f"{column}_min"]], [m[f"{column}_max"] - mean]]
            ax.barh([y], [mean], xerr=err, color=f"C{y % 10}", alpha=0.8, capsize=3)
        ax.set_yticks(range(len(labels)), labels if i == 0 else [""] * len(labels))
        ax.invert_yaxis()
        ax.set(xlabel=xlabel)
    fig.tight_layout()
    return fig


def _rank_figure(summary: Summary) -> Figure:
    benches = summary.benchmarks
    fig = Figure(figsize=(3.6 * len(benches), 3.4))
    stats = summary.stats[(summary.stats["mode"] == "strict") & (summary.stats["rank"] > 0)]
    lines = list(dict.fromkeys(zip(summary.groups["method"], summary.groups["variant"], strict=True)))
    for i, bench in enumerate(benches):
        ax = fig.add_subplot(1, len(benches), i + 1)
        grader = summary.graders(bench)[0]
        sel = stats[(stats["benchmark"] == bench) & (stats["grader"] == grader)]
        for (method, variant), g in sel.groupby(["method", "variant"], sort=False):
            g = g.sort_values("rank")
            label = group_label(method, variant=variant)
            ax.errorbar(
                g["rank"],
                g["mean"],
                yerr=g["std"].fillna(0),
                marker="o",
                capsize=3,
                color=f"C{lines.index((method, variant)) % 10}",
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(summary.ranks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(r) for r in summary.ranks])
        ax.set(xlabel="rank r", ylabel="accuracy (%)", title=f"{bench_name(bench)} ({grader})")
    fig.axes[0].legend(frameon=False)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str, **savefig) -> list[Path]:
    """``stem``.png and ``stem``.pdf, each written atomically, without varying metadata."""
    paths = []
    for fmt, metadata in METADATA.items():
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=metadata, **savefig)
        path = Path(out_dir) / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def write_figures(summary: Summary, out_dir: str | Path) -> list[Path]:
    """loss, held-out loss, ortho_penalty (when logged) and accuracy_vs_rank (several ranks) as PNG and PDF."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [r for r in summary.runs if _trained(r)]
    check_protocol(runs)  # curves of different protocols are not comparable either
    keys = sorted({(r.method, r.rank, r.variant) for r in summary.runs}, key=lambda k: sort_key(*k))
    colors = {k: f"C{i % 10}" for i, k in enumerate(keys)}
    figures = {}
    with matplotlib.style.context(["default", STYLE]):  # independent of the user's matplotlibrc
        if curves := seed_curves(runs, "loss"):
            figures["loss"] = _curve_figure(
                curves, colors, "training loss", f"{summary.experiment}: training loss"
            )
        if curves := heldout_curves(runs):
            base = [r.heldout_loss for r in runs if r.method == "base" and r.heldout_loss is not None]
            title = f"{summary.experiment}: held-out loss"
            figures["heldout_loss"] = _heldout_figure(curves, colors, base[0] if base else None, title)
        if curves := seed_curves(runs, "ortho_penalty"):
            title = f"{summary.experiment}: orthonormal penalty"
            figures["ortho_penalty"] = _curve_figure(curves, colors, "orthonormal penalty", title)
        if not summary.stats.empty:
            figures["accuracy_per_method"] = _accuracy_figure(summary)
        if not summary.groups.empty:
            figures["cost_per_method"] = _cost_figure(summary)
        if len(summary.ranks) > 1 and not summary.stats.empty:
            figures["accuracy_vs_rank"] = _rank_figure(summary)
        written = []
        for stem in CAPTIONS:
            if stem in figures:
                written += save_figure(figures[stem], out_dir, stem)
            else:  # a stale figure would contradict the results
                for fmt in METADATA:
                    (out_dir / f"{stem}.{fmt}").unlink(missing_ok=True)
    return written
