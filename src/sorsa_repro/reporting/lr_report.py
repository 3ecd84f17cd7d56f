"""The files of a learning-rate study: lr_study.md (held-out loss per arm and rate, the selection, each claim's
verdict at every rate), lr_selection.json, and the sensitivity figure lr_sensitivity.{png,pdf}."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.style
from matplotlib.figure import Figure

from sorsa_repro.reporting.aggregate import Summary, group_label
from sorsa_repro.reporting.claims import verdict_word
from sorsa_repro.reporting.figures import STYLE, save_figure
from sorsa_repro.reporting.lr_robustness import grid_rows
from sorsa_repro.reporting.lr_study import floor_loss, grid_points, selection, study_seeds, write_selection
from sorsa_repro.results import atomic_write_text

STUDY_FILE = "lr_study.md"
SENSITIVITY = "lr_sensitivity"
SENSITIVITY_CAPTION = (
    "Held-out loss at the last step against the learning rate (log axis), one line per arm through the mean "
    "over seeds; dots = each seed; the selected rate circled; dashed = the untrained base model (the floor)."
)


def sensitivity_figure(study: Summary, floor: float | None = None) -> Figure:
    seeds, chosen = study_seeds(study), selection(study)
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for i, (arm, by_rate) in enumerate(grid_points(study).items()):
        label = group_label(arm[0], variant=arm[2])
        color = f"C{i % 10}"
        xs, means = [], []
        for point in by_rate.values():
            losses = [v for v in point.losses(seeds) if math.isfinite(v)]
            if point.lr is None or not losses:
                continue
            ax.scatter([point.lr] * len(losses), losses, color=color, s=10, alpha=0.6, lw=0)
            xs.append(point.lr)
            means.append(sum(losses) / len(losses))
        ax.plot(xs, means, color=color, marker="o", ms=3, lw=1.4, label=label)
        best = chosen["arms"][label]
        if best["lr"] is not None and best["heldout_loss"] is not None:
            ax.scatter(
                [best["lr"]], [best["heldout_loss"]], s=90, facecolors="none", edgecolors=color, lw=1.2
            )
    floor = floor if floor is not None else floor_loss(study)
    if floor is not None:
        ax.axhline(floor, color="0.4", ls="--", lw=1, label="base model (untrained)")
    ax.set_xscale("log")
    ax.set(
        xlabel="learning rate", ylabel="held-out loss, last step", title=f"{study.experiment}: sensitivity"
    )
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def grid_table(study: Summary) -> str:
    """Markdown: each claim row (claims 1-3) x each rate of the grid, its verdict there."""
    by_rate = grid_rows(study)
    keys = list(dict.fromkeys(r.key for rows in by_rate.values() for r in rows))
    header = ["claim", "comparison", "statistic", *[f"x{m:g}" for m in by_rate]]
    lines = ["| " + " | ".join(header) + " |", "|:--|:--|:--|" + ":--|" * len(by_rate)]
    for key in keys:
        cells = []
        for rows in by_rate.values():
            row = next((r for r in rows if r.key == key), None)
            cells.append("–" if row is None else f"{verdict_word(row.verdict)} ({row.difference})")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_study_report(study: Summary, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_selection(study, out_dir)
    md = written[0]
    text = md.read_text(encoding="utf-8")
    text += (
        f"\n![{SENSITIVITY}]({SENSITIVITY}.png)\n\n*{SENSITIVITY_CAPTION}* ([PDF]({SENSITIVITY}.pdf))\n\n"
        "### Each claim at every rate of the grid\n\nAll arms at the same multiplier of their paper rates, "
        f"paired by seed ({', '.join(map(str, study_seeds(study)))}); verdict (A − B [95% CI]) as in claims.md.\n\n"
        + grid_table(study)
        + "\n"
    )
    atomic_write_text(md, text)
    with matplotlib.style.context(["default", STYLE]):
        written += save_figure(sensitivity_figure(study), out_dir, SENSITIVITY)
    return written
