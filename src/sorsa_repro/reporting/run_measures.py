"""What each run reached and what it cost, per run and per (method, rank, variant) group: final training loss,
held-out loss, adapter init time, training wall time, training throughput and peak memory (result.json and metrics.csv), the
columns peft's ``method_comparison`` reports beside accuracy. The training table of main_table.md and the
cost figure read them from here."""

from __future__ import annotations

import math

import pandas as pd

from sorsa_repro.reporting.aggregate import GROUP_KEYS, Summary, group_label, shown_rank
from sorsa_repro.reporting.runs import Run
from sorsa_repro.reporting.table_format import MeanStd, Table

# column -> (header, digits)
MEASURES = {
    "final_loss": ("Final loss", 4),
    "heldout_loss": ("Held-out loss", 4),
    "init_s": ("Init s", 2),
    "train_s": ("Training s", 0),
    "tokens_per_s": ("Tokens/s", 0),
    "peak_mib": ("Peak MiB", 0),
}


def run_measures(run: Run) -> dict[str, float | None]:
    """The run's measures; tokens/s is the median over its optimizer steps (metrics.csv), the first left out
    (it carries the warm-up)."""
    train = run.result.get("train", {})
    throughput = None
    m = run.metrics
    if m is not None and "tokens_per_s" in m:
        per_step = m.dropna(subset=["tokens_per_s"]).sort_values("step")["tokens_per_s"]
        per_step = per_step.iloc[1:] if len(per_step) > 1 else per_step
        throughput = float(per_step.median()) if len(per_step) else None
    return {
        "final_loss": train.get("final_loss"),
        "heldout_loss": run.heldout_loss,
        "init_s": train.get("init_time_s"),
        "train_s": train.get("wall_time_s"),
        "tokens_per_s": throughput,
        "peak_mib": train.get("peak_memory_mb"),
    }


def group_measures(summary: Summary) -> pd.DataFrame:
    """One row per group of ``summary.groups``: mean, sample std (ddof=1) and n of every measure."""
    rows = []
    for run in summary.ok_runs:
        values = {
            k: (float(v) if v is not None and math.isfinite(float(v)) else None)
            for k, v in run_measures(run).items()
        }
        rows.append({"method": run.method, "rank": run.rank, "variant": run.variant, **values})
    frame = pd.DataFrame(rows, columns=[*GROUP_KEYS, *MEASURES])
    out = []
    for g in summary.groups.itertuples():
        sel = frame[
            (frame["method"] == g.method) & (frame["rank"] == g.rank) & (frame["variant"] == g.variant)
        ]
        entry = {"method": g.method, "rank": g.rank, "variant": g.variant}
        for column in MEASURES:
            values = sel[column].dropna()
            entry[column] = (
                values.mean() if len(values) else None,
                values.std() if len(values) > 1 else None,
            )
            entry[f"{column}_min"] = values.min() if len(values) else None
            entry[f"{column}_max"] = values.max() if len(values) else None
        out.append(entry)
    return pd.DataFrame(out)


def training_table(summary: Summary) -> Table:
    """Per group: seeds and each measure, mean ± sample std over seeds."""
    table = Table(
        title=f"{summary.experiment}: training, per method",
        caption="Mean ± sample standard deviation (ddof=1) over seeds. Final loss: the training loss of the "
        "last optimizer step; held-out loss: at the last step, on rows of the training source never trained "
        "on; init s: loading the base model and applying the method (its SVD, for the SVD family); training "
        "s: wall time of the training job (model load, init, steps, exports); tokens/s: the median "
        "over optimizer steps after the first; peak MiB: the job's peak memory (CPU RSS, or GPU).",
        label=f"{summary.experiment}-training",
        header=["Method", "r", "Seeds", *[header for header, _ in MEASURES.values()]],
        align="lrr" + "r" * len(MEASURES),
    )
    measures = group_measures(summary)
    for g, (_, m) in zip(summary.groups.itertuples(), measures.iterrows(), strict=True):
        row = [group_label(g.method, variant=g.variant), shown_rank(g.method, g.rank), g.n_seeds]
        for column, (_, digits) in MEASURES.items():
            mean, std = m[column]
            row.append(
                None
                if mean is None
                else MeanStd(float(mean), float("nan") if std is None else float(std), digits)
            )
        table.rows.append(row)
    return table
