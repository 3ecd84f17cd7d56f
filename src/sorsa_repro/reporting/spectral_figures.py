"""Figures and a summary table from the runs' ``spectral.csv`` (``results/<experiment>/<run>/``).

Built on the reporting's run loading (the protocol check included), group labels, order and figure saving;
written to the experiment's report folder, each figure as PNG and PDF, byte-identical when regenerated:

- ``spectral_curves``: d_sigma and d_d against step, per method the mean over layers, then the mean
  over seeds with a +-1 sample-std band;
- ``spectral_heatmap_d_d``, ``spectral_heatmap_d_sigma_rel``: layer x module at each run's last step,
  mean over seeds, one panel per method, one colour scale;
- ``spectral_intruders``: intruder dimensions summed over layers at the last step, per method and eps;
- ``spectral_summary.md``: the last-step numbers as a table.

Runs are grouped as in the tables: by method, rank and variant (SORSA and SORSA with gamma = 0 apart).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sorsa_repro.reporting.aggregate import Summary, group_label, sort_key
from sorsa_repro.reporting.figures import save_figure
from sorsa_repro.results import atomic_write_text

_MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LABELS = {
    "d_sigma": r"$\Delta\Sigma$",
    "d_sigma_rel": r"$\Delta\Sigma$ / mean $\sigma_0$",
    "d_d": r"$\Delta D$",
    "d_d_topk": r"$\Delta D$ (top k)",
}
SAVEFIG = {"dpi": 150, "bbox_inches": "tight"}


def load_spectral(summary: Summary) -> tuple[pd.DataFrame, list[str]]:
    """All runs' spectral.csv rows with ``run``, ``seed`` and ``label`` columns (the tables' group label:
    method, rank, variant), and the labels in the tables' order."""
    frames, keys = [], {}
    for run in summary.runs:
        csv = run.path / "spectral.csv"
        if run.problem or not csv.exists():
            continue
        try:
            df = pd.read_csv(csv)
        except (ValueError, OSError) as err:  # one bad run folder: skip it, say why
            warnings.warn(f"{run.path}: left out of the spectral analysis ({err})", stacklevel=2)
            continue
        label = group_label(run.method, run.rank, run.variant)
        keys[label] = sort_key(run.method, run.rank, run.variant)
        df["run"], df["seed"], df["label"] = run.name, run.seed or 0, label
        frames.append(df)
    if not frames:
        return pd.DataFrame(), []
    return pd.concat(frames, ignore_index=True), sorted(keys, key=keys.get)


def _intruder_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c.startswith("intruders_eps")]
    return sorted(cols, key=lambda c: float(c.removeprefix("intruders_eps")))


def _ordered_modules(modules) -> list:
    present = set(modules)
    return [m for m in _MODULE_ORDER if m in present] + sorted(present - set(_MODULE_ORDER), key=str)


def _final(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["step"] == df.groupby("run")["step"].transform("max")]


def _curves(df: pd.DataFrame, labels: list[str], base: Path) -> list[Path]:
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ["d_sigma", "d_d"], strict=True):
        per_run = df.groupby(["label", "seed", "step"])[metric].mean().reset_index()
        stats = per_run.groupby(["label", "step"])[metric].agg(["mean", "std"]).reset_index()
        for i, label in enumerate(labels):
            s = stats[stats["label"] == label]
            ax.plot(s["step"], s["mean"], label=label, color=f"C{i}")
            ax.fill_between(s["step"], s["mean"] - s["std"], s["mean"] + s["std"], color=f"C{i}", alpha=0.2)
        ax.set(xlabel="optimizer step", ylabel=LABELS[metric], title=f"{LABELS[metric]}, mean over layers")
    axes[0].legend()
    fig.tight_layout()
    return save_figure(fig, base.parent, base.name, **SAVEFIG)


def _heatmap(final: pd.DataFrame, labels: list[str], metric: str, base: Path) -> list[Path]:
    data = final.dropna(subset=["layer_num"]).groupby(["label", "layer_num", "module"])[metric].mean()
    modules = _ordered_modules(final["module"])
    vmax = float(data.max()) if len(data) else 1.0
    fig = Figure(figsize=(2.2 + 2.4 * len(labels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(labels), sharey=True))
    for ax, label in zip(axes, labels, strict=True):
        grid = data[label].unstack("module").reindex(columns=modules) if label in data else pd.DataFrame()
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(modules)), [m.removesuffix("_proj") for m in modules], rotation=90)
        ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
        ax.set_title(label)
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=list(axes), label=LABELS[metric])
    return save_figure(fig, base.parent, base.name, **SAVEFIG)


def _intruder_totals(final: pd.DataFrame) -> pd.DataFrame:
    return final.groupby(["label", "seed"])[_intruder_columns(final)].sum()


def _intruders(final: pd.DataFrame, labels: list[str], base: Path) -> list[Path]:
    cols = _intruder_columns(final)
    totals = _intruder_totals(final).groupby("label")
    mean, std = totals.mean().reindex(labels), totals.std().reindex(labels).fillna(0)
    fig = Figure(figsize=(1.5 + 1.2 * len(labels), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(len(cols), 1)
    x = np.arange(len(labels))
    for j, col in enumerate(cols):
        eps = col.removeprefix("intruders_eps")
        ax.bar(x + j * width, mean[col], width, yerr=std[col], label=f"eps={eps}", color=f"C{j}", capsize=3)
    ax.set_xticks(x + width * (len(cols) - 1) / 2, labels)
    k = int(final["k"].max()) if "k" in final else "k"
    ax.set(ylabel=f"intruder dimensions (top {k}, all layers)", title="Intruder dimensions at the end")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, base.parent, base.name, **SAVEFIG)


def _fmt(values: pd.Series, digits: int) -> str:
    if len(values) > 1:
        return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"
    return f"{values.mean():.{digits}f}"


def summary_markdown(final: pd.DataFrame, labels: list[str]) -> str:
    metrics = ["d_sigma", "d_sigma_rel", "d_d", "d_d_topk"]
    per_run = final.groupby(["label", "seed"]).agg({**dict.fromkeys(metrics, "mean"), "step": "max"})
    per_run = per_run.join(_intruder_totals(final))
    cols = _intruder_columns(final)
    head = ["method", "seeds", "step", "ΔΣ", "ΔΣ rel", "ΔD", "ΔD top-k"]
    head += [f"intruders ε={c.removeprefix('intruders_eps')}" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        r = per_run.loc[label]
        cells = [label, str(len(r)), str(int(r["step"].max()))]
        cells += [_fmt(r[m], 4) for m in metrics] + [_fmt(r[c], 1) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    k = int(final["k"].max()) if "k" in final else "k"
    note = (
        f"\nAt each run's last step. ΔΣ, ΔD: mean over the adapted layers; intruder dimensions: summed over "
        f"layers, among each layer's top {k} singular vectors. ΔΣ rel = ΔΣ / mean σ₀. "
        "Mean ± sample std (ddof=1) over seeds.\n"
    )
    return "\n".join(lines) + "\n" + note


def write_spectral_figures(summary: Summary, out_dir: str | Path) -> list[Path]:
    """Write the figures and ``spectral_summary.md`` into ``out_dir``; return their paths (empty when no run
    of the experiment has a spectral.csv)."""
    df, labels = load_spectral(summary)
    if df.empty:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = _final(df)
    paths = []
    with matplotlib.style.context("default"):  # the same look whatever the user's matplotlibrc says
        paths += _curves(df, labels, out / "spectral_curves")
        for metric in ("d_d", "d_sigma_rel"):
            paths += _heatmap(final, labels, metric, out / f"spectral_heatmap_{metric}")
        if _intruder_columns(final):
            paths += _intruders(final, labels, out / "spectral_intruders")
    atomic_write_text(out / "spectral_summary.md", summary_markdown(final, labels))
    return paths + [out / "spectral_summary.md"]
