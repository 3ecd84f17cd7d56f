"""Aggregate the runs of one experiment (``runs.collect_runs``) over seeds, and the names tables use.

Reads only ``results/<experiment>/<run>/{result.json,config.yaml,metrics.csv}``. Runs are grouped
by (method, rank, variant), where the variant is every key of result.json's "run" block besides
experiment/method/rank/seed (e.g. ``ortho_mode`` or ``gamma`` in a sweep), and the learning-rate multiplier
where one method ran at several (a learning-rate study), so sweep variants are never averaged together.
A run counts ("ok") once its training finished; its accuracies enter where it was evaluated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sorsa_repro import method_registry
from sorsa_repro.evaluation.tasks import BENCHMARKS, display_name
from sorsa_repro.reporting.protocol import check_protocol
from sorsa_repro.reporting.runs import Run, collect_runs

GROUP_KEYS = ["method", "rank", "variant"]
METHOD_ORDER = ["base", "full", "lora", "pissa", "sorsa"]  # the floor, paper order; others alphabetically
METHOD_NAMES = method_registry.display_names()  # one per method: its registry entry (method_registry.py)
SEEDLESS = method_registry.untrained_methods()  # the base model: one run whatever the seed (seed 0)
BENCH_ORDER = list(BENCHMARKS)
GRADER_ORDER = ["metamath", "numeric", "lenient", "math_verify"]  # metamath first: the paper's comparison
MODES = ("strict", "flexible")


def ordered(values, order: list[str]) -> list:
    """``values`` in the fixed ``order`` first, the rest sorted: deterministic tables and legends."""
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order))


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def bench_name(bench: str) -> str:
    return display_name(bench)


def shown_rank(method: str, rank: int | None) -> int | None:
    """The rank a table or label shows: none for full fine-tuning and the base model (their configs still carry
    one)."""
    return rank if rank and method not in ("full", *SEEDLESS) else None


def group_label(method: str, rank: int | None = None, variant: str = "") -> str:
    """The one label of a (method, rank, variant) group in tables, figures, claims and READMEs ("SORSA r=16
    [variant=gamma0]"); without a rank where a column or caption gives it."""
    rank = shown_rank(method, rank)
    label = method_name(method) + (f" r={rank}" if rank else "")
    return label + (f" [{variant}]" if variant else "")


@dataclass
class Summary:
    """Aggregated accuracies of one experiment, plus everything a reader must be told."""

    experiment: str
    runs: list[Run]  # every run folder, including failed ones
    scores: pd.DataFrame  # one row per (run, benchmark, grader, mode): accuracy in percent
    stats: pd.DataFrame  # GROUP_KEYS + benchmark, grader, mode -> mean, std (ddof=1), n
    groups: pd.DataFrame  # GROUP_KEYS -> label, n_seeds, seeds, missing, trainable_params
    notes: list[str]  # missing seeds, failed runs, inconsistencies: shown beside every table

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    @property
    def benchmarks(self) -> list[str]:
        return ordered(self.scores["benchmark"], BENCH_ORDER)

    def graders(self, bench: str) -> list[str]:
        return ordered(self.scores.loc[self.scores["benchmark"] == bench, "grader"], GRADER_ORDER)

    @property
    def ranks(self) -> list[int]:
        return sorted({r for r in self.groups["rank"] if r})


def _score_rows(run: Run) -> list[dict]:
    """One row per benchmark x grader x mode, accuracy in percent."""
    base = {"method": run.method, "rank": run.rank, "variant": run.variant, "run": run.name, "seed": run.seed}
    return [
        {**base, "benchmark": bench, "grader": grader, "mode": mode, "acc": 100.0 * float(score[mode])}
        for bench, ev in run.result.get("eval", {}).items()
        for grader, score in ev.get("scores", {}).items()
        for mode in MODES
        if score.get(mode) is not None
    ]


def sort_key(method: str, rank: int, variant: str = "") -> tuple:
    """Paper methods first in paper order, then the others alphabetically; then rank, variant."""
    index = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return index, method, rank, variant


def _sort_groups(df: pd.DataFrame) -> pd.DataFrame:
    keys = [sort_key(m, r, v) for m, r, v in zip(df["method"], df["rank"], df["variant"], strict=True)]
    return df.iloc[sorted(range(len(df)), key=lambda i: keys[i])]


def _seed_groups(ok: list[Run], expected_seeds: list[int] | None, notes: list[str]) -> pd.DataFrame:
    """One row per (method, rank, variant): its seeds, the missing ones, its trainable parameters, learning
    rate and held-out loss (mean, sample std over seeds); notes what is missing or inconsistent."""
    per_run = pd.DataFrame(
        [
            (r.method, r.rank, r.variant, r.seed, r.result.get("train", {}).get("trainable_params"), r.lr,
             r.lr_multiplier, r.heldout_loss)
            for r in ok
        ],
        columns=[*GROUP_KEYS, "seed", "params", "lr", "lr_multiplier", "heldout"],
    )  # fmt: skip
    seeded = per_run[
        ~per_run["method"].isin(SEEDLESS)
    ]  # the base model's one run is seed 0 whatever they are
    want = set(expected_seeds) if expected_seeds else set(seeded["seed"].dropna())
    groups = []
    for key, g in per_run.groupby(GROUP_KEYS, sort=False, dropna=False):
        seeds = sorted(s for s in g["seed"].dropna().astype(int).unique())
        missing = sorted(want - set(seeds)) if key[0] not in SEEDLESS else []
        label = group_label(*key)
        params = sorted(g["params"].dropna().astype(int).unique())
        rates = sorted(g["lr"].dropna().unique())
        if missing:
            notes.append(f"{label}: {len(seeds)} of {len(want)} seeds; missing seed(s) {_join(missing)}")
        if len(params) > 1:
            notes.append(f"{label}: trainable params differ between seeds ({_join(params)})")
        if len(rates) > 1:
            notes.append(f"{label}: learning rates differ between seeds ({_join(rates)})")
        heldout = g["heldout"].dropna()
        groups.append(
            {
                **dict(zip(GROUP_KEYS, key, strict=True)),
                "label": label,
                "n_seeds": len(seeds),
                "seeds": _join(seeds),
                "missing": _join(missing),
                "trainable_params": params[0] if params else None,
                "lr": rates[0] if rates else None,
                "lr_multiplier": g["lr_multiplier"].dropna().iloc[0]
                if g["lr_multiplier"].notna().any()
                else None,
                "heldout_mean": heldout.mean() if len(heldout) else None,
                "heldout_std": heldout.std() if len(heldout) > 1 else None,
            }
        )
    columns = [*GROUP_KEYS, "label", "n_seeds", "seeds", "missing", "trainable_params", "lr", "lr_multiplier",
               "heldout_mean", "heldout_std"]  # fmt: skip
    return _sort_groups(pd.DataFrame(groups, columns=columns))


def summarize(
    runs: list[Run], experiment: str, expected_seeds: list[int] | None = None, check: bool = True
) -> Summary:
    """Mean and sample std (ddof=1) over seeds of every benchmark x grader x mode accuracy.

    Raises ``ProtocolMismatchError`` when the runs with results do not share one protocol.
    Warns (and records a note) for groups with missing seeds and for runs without results.
    """
    ok = [r for r in runs if r.status == "ok"]
    if check:
        check_protocol(ok)
    notes = [f"{r.name}: {r.status}; not included" for r in runs if r.status != "ok"]
    evaluated = [r for r in ok if any(ev.get("scores") for ev in r.result.get("eval", {}).values())]
    if evaluated:  # in an evaluated experiment, a run that was not is a gap in the accuracy tables
        notes += [f"{r.name}: no eval results; in the loss columns only" for r in ok if r not in evaluated]
    scores = pd.DataFrame([row for r in ok for row in _score_rows(r)])
    if scores.empty:
        scores = pd.DataFrame(columns=[*GROUP_KEYS, "run", "seed", "benchmark", "grader", "mode", "acc"])
    keys = [*GROUP_KEYS, "benchmark", "grader", "mode"]
    stats = scores.groupby(keys)["acc"].agg(mean="mean", std="std", n="count").reset_index()

    groups = _seed_groups(ok, expected_seeds, notes)
    # a benchmark evaluated for fewer seeds than the group has is a hidden gap: say so
    n_seeds = groups.set_index(GROUP_KEYS)["n_seeds"]
    for row in stats.itertuples():
        if row.n < n_seeds[(row.method, row.rank, row.variant)] and row.mode == "strict":
            notes.append(
                f"{group_label(row.method, row.rank, row.variant)}: {row.benchmark}/{row.grader} "
                f"has {row.n} of {n_seeds[(row.method, row.rank, row.variant)]} seeds"
            )
    for note in notes:
        warnings.warn(f"{experiment}: {note}", stacklevel=2)
    return Summary(experiment, runs, scores, _sort_groups(stats), groups.reset_index(drop=True), notes)


def load_experiment(
    results_dir: str | Path, experiment: str, expected_seeds: list[int] | None = None
) -> Summary:
    """``summarize(collect_runs(results_dir / experiment))``."""
    return summarize(collect_runs(Path(results_dir) / experiment), experiment, expected_seeds)


def _join(values) -> str:
    return ", ".join(str(v) for v in values)
