"""The statistics the claims are judged on: per-run measures (loss, penalty, spectral change, per-problem
outcomes) and the paired tests over seeds (Student-t interval, exact McNemar). Definitions: ``claims``."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from sorsa_repro.evaluation.predictions import read_predictions
from sorsa_repro.evaluation.summary import Z975
from sorsa_repro.reporting.runs import Run

# two-sided 95% Student-t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df))
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (next tabulated df below)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    known = [d for d in T975 if d <= df]
    return T975[max(known)] if df <= 30 else Z975


def paired_interval(diffs: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of the 95% t interval of the mean difference; None for fewer than 2 pairs."""
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (binomial, p = 1/2)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def last_quarter_loss(run: Run) -> float | None:
    m = run.metrics
    if m is None or "loss" not in m or m["loss"].dropna().empty:
        return None
    loss = m.dropna(subset=["loss"]).sort_values("step")["loss"]
    return float(loss.iloc[-max(1, len(loss) // 4) :].mean())


def steps_to_half_loss(run: Run) -> float | None:
    m = run.metrics
    if m is None or "loss" not in m or m["loss"].dropna().empty:
        return None
    m = m.dropna(subset=["loss"]).sort_values("step")
    reached = m[m["loss"] <= 0.5 * float(m["loss"].iloc[0])]
    return float(reached["step"].iloc[0]) if len(reached) else float(m["step"].iloc[-1] + 1)


def final_heldout(run: Run) -> float | None:
    """The held-out loss at the run's last step; None when not measured (or not finite: a diverged run)."""
    value = run.heldout_loss
    return value if value is not None and math.isfinite(value) else None


def final_penalty(run: Run) -> float | None:
    m = run.metrics
    if m is None or "ortho_penalty" not in m or m["ortho_penalty"].dropna().empty:
        return None
    return float(m.dropna(subset=["ortho_penalty"]).sort_values("step")["ortho_penalty"].iloc[-1])


def spectral_final(run: Run, column: str) -> float | None:
    path = run.path / "spectral.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    if df.empty or column not in df:
        return None
    return float(df[df["step"] == df["step"].max()][column].mean())


def outcomes(run: Run, bench: str, grader: str) -> dict[str, bool] | None:
    """Problem id -> strict verdict of one grader, from predictions/<bench>.jsonl (the evaluated rows)."""
    path = run.path / "predictions" / f"{bench}.jsonl"
    n = run.result.get("eval", {}).get(bench, {}).get("n")
    if not path.exists() or not n:
        return None
    rows = list(read_predictions(path).values())[:n]
    return {r["id"]: bool(r["correct"].get(grader, {}).get("strict")) for r in rows}
