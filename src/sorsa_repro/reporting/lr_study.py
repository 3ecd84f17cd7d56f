"""The learning-rate study of an experiment (``<experiment>_lr``: conf/sweep/lr_study.yaml): held-out loss
against learning rate, the rate each arm is selected at, and the claims at every rate of the grid.

Selection rule, fixed before the study ran and written into every output: for each arm (a method and its
variant: SORSA and SORSA with gamma = 0 are two arms), the multiplier of its paper learning rate with the
lowest mean held-out loss at the last step over the study's seeds. A seed whose run did not finish or whose
held-out loss is not finite (a diverged run) makes that rate's mean infinite, so a rate at which any seed
fails is never selected; ties go to the smaller multiplier. The study runs on its own seeds (100-102), not
the claims sweep's (0-2), so that the selection flatters no method in the verdicts. ``common`` is the one
multiplier with the lowest held-out loss averaged over the arms: the rate of methods outside the study.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from sorsa_repro.reporting.aggregate import Summary, group_label, load_experiment, sort_key
from sorsa_repro.reporting.runs import Run
from sorsa_repro.results import atomic_write_text

STUDY_SUFFIX = "_lr"  # the study of experiment mini is experiment mini_lr
PAPER_MULTIPLIER = 1.0  # "the paper's rates": each method's paper learning rate, unscaled
SELECTION_FILE = "lr_selection.json"
RULE = (
    "each arm's multiplier with the lowest mean held-out loss at the last step over the study's seeds "
    "(a rate where a seed did not finish or diverged is never selected; ties: the smaller multiplier)"
)


def study_experiment(experiment: str) -> str:
    return experiment + STUDY_SUFFIX


def load_study(results_dir: str | Path, experiment: str) -> Summary | None:
    """The study of ``experiment`` under ``results_dir``, or None when there is none."""
    folder = Path(results_dir) / study_experiment(experiment)
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        return None
    return load_experiment(results_dir, study_experiment(experiment))


@dataclass
class Point:
    """One arm at one multiplier: its runs by seed."""

    arm: tuple  # (method, rank, arm variant)
    multiplier: float
    runs: dict[int, Run]

    def losses(self, seeds: list[int]) -> list[float]:
        """Held-out loss per seed; inf where the run is missing, unfinished or not finite."""
        out = []
        for seed in seeds:
            run = self.runs.get(seed)
            loss = run.heldout_loss if run is not None and run.status == "ok" else None
            out.append(loss if loss is not None and math.isfinite(loss) else math.inf)
        return out

    def mean(self, seeds: list[int]) -> float:
        losses = self.losses(seeds)
        return math.inf if math.inf in losses else statistics.fmean(losses)

    @property
    def lr(self) -> float | None:
        return next((r.lr for r in self.runs.values() if r.lr is not None), None)


def grid_points(study: Summary) -> dict[tuple, dict[float, Point]]:
    """Arm -> multiplier -> its runs (the untrained base model is not an arm)."""
    out: dict[tuple, dict[float, Point]] = {}
    for run in study.runs:
        if run.method == "base" or run.lr_multiplier is None or run.seed is None:
            continue
        arm = (run.method, run.rank, run.arm)
        point = out.setdefault(arm, {}).setdefault(run.lr_multiplier, Point(arm, run.lr_multiplier, {}))
        point.runs[run.seed] = run
    return {arm: dict(sorted(out[arm].items())) for arm in sorted(out, key=lambda a: sort_key(*a))}


def study_seeds(study: Summary) -> list[int]:
    return sorted({r.seed for r in study.runs if r.seed is not None and r.method != "base"})


def multipliers(study: Summary) -> list[float]:
    return sorted({m for points in grid_points(study).values() for m in points})


def floor_loss(summary: Summary | None) -> float | None:
    """The untrained base model's held-out loss (its run in the experiment), the floor of every figure."""
    base = [
        r.heldout_loss for r in (summary.runs if summary else []) if r.method == "base" and r.heldout_loss
    ]
    return base[0] if base else None


def selection(study: Summary) -> dict:
    """What ``lr_selection.json`` holds: the rule, the seeds, per arm the selected multiplier, its learning
    rate and the mean held-out loss at every multiplier, and the common multiplier."""
    seeds, points = study_seeds(study), grid_points(study)
    arms = {}
    for arm, by_rate in points.items():
        means = {m: p.mean(seeds) for m, p in by_rate.items()}
        best = min(means, key=lambda m: (means[m], m))
        rates = sorted(means)
        arms[group_label(arm[0], variant=arm[2])] = {
            "method": arm[0],
            "variant": arm[2],
            "multiplier": best,
            # the lowest loss at the grid's edge: the best rate may lie beyond it
            "at_edge": len(rates) > 1 and best in (rates[0], rates[-1]),
            "lr": by_rate[best].lr,
            "heldout_loss": _finite(means[best]),
            "grid": {f"{m:g}": _finite(v) for m, v in means.items()},
        }
    grid = multipliers(study)
    averaged = {m: statistics.fmean(points[a][m].mean(seeds) if m in points[a] else math.inf for a in points)
                for m in grid}  # fmt: skip
    common = min(averaged, key=lambda m: (averaged[m], m)) if averaged else None
    return {
        "experiment": study.experiment,
        "rule": RULE,
        "seeds": seeds,
        "multipliers": grid,
        "arms": arms,
        "common": {
            "multiplier": common,
            "mean_heldout_loss": {f"{m:g}": _finite(v) for m, v in averaged.items()},
        },
        "floor_heldout_loss": floor_loss(study),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def study_table(study: Summary, chosen: dict) -> str:
    """Markdown: arms x multipliers, mean ± sample std of the held-out loss over seeds (n), selected in bold."""
    seeds, points, grid = study_seeds(study), grid_points(study), multipliers(study)
    header = ["arm", *[f"x{m:g}" for m in grid], "selected"]
    lines = ["| " + " | ".join(header) + " |", "|:--|" + "--:|" * len(grid) + ":--|"]
    for arm, by_rate in points.items():
        label = group_label(arm[0], variant=arm[2])
        picked = chosen["arms"][label]["multiplier"]
        cells = []
        for m in grid:
            point = by_rate.get(m)
            cell = "–" if point is None else _loss_cell(point.losses(seeds))
            cells.append(f"**{cell}**" if m == picked else cell)
        lr, edge = chosen["arms"][label]["lr"], chosen["arms"][label]["at_edge"]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | x{picked:g} (lr {lr:.3g}){' †' if edge else ''} |"
        )
    return "\n".join(lines)


def _loss_cell(losses: list[float]) -> str:
    finite = [v for v in losses if math.isfinite(v)]
    failed = len(losses) - len(finite)
    if not finite:
        return f"failed ({failed})"
    sd = f" ± {statistics.stdev(finite):.4f}" if len(finite) > 1 else ""
    return f"{statistics.fmean(finite):.4f}{sd}" + (
        f" ({failed} failed)" if failed else f" (n={len(finite)})"
    )


def write_selection(study: Summary, out_dir: str | Path) -> list[Path]:
    """lr_selection.json and lr_study.md (the table, the rule, the seeds) under ``out_dir``."""
    out_dir = Path(out_dir)
    chosen = selection(study)
    js = out_dir / SELECTION_FILE
    atomic_write_text(js, json.dumps(chosen, indent=2, sort_keys=True) + "\n")
    floor = chosen["floor_heldout_loss"]
    common = chosen["common"]["multiplier"]
    text = [
        f"## Learning-rate study ({study.experiment})\n",
        f"Held-out loss at the last step (rows after the training subset, never trained on), mean ± sample "
        f"std (ddof=1) over seeds {', '.join(map(str, chosen['seeds']))}, at each multiplier of the paper's "
        f"learning rate (SORSA 3e-5, the others 2e-5). Selection rule, fixed in advance: {RULE}. "
        f"The untrained base model's held-out loss (the floor): {'–' if floor is None else f'{floor:.4f}'}. "
        f"One multiplier for all (lowest held-out loss averaged over the arms): x{common:g}.\n",
        study_table(study, chosen),
        "",
        *(
            [
                "† at the edge of the grid: the lowest held-out loss lies at its smallest or largest rate, so the "
                "best rate may lie beyond it.",
                "",
            ]
            if any(a["at_edge"] for a in chosen["arms"].values())
            else []
        ),  # fmt: skip
        f"Generated from the run folders by `sorsa_repro.reporting.lr_study`; machine-readable: [{SELECTION_FILE}]"
        f"({SELECTION_FILE}).",
    ]
    md = out_dir / "lr_study.md"  # lr_report adds the figure and the claims at every rate
    atomic_write_text(md, "\n".join(text) + "\n")
    return [md, js]
