"""claims.md: each claim of the paper with its verdict at two learning-rate settings and across the grid.

*Selected rates* (the fair comparison): the experiment's own runs, each method at the rate its learning-rate
study selected (``lr_study``; the main job runs the claims sweep there). *The paper's rates* (the faithful
replication): the study's runs at x1, every method at its paper learning rate. Then one line per claim on
whether its verdict holds across the study's whole grid, claim 2 at matched held-out loss, the untrained base
model as the floor, and the full tables of both settings. Without a study, the experiment's runs alone.
"""

from __future__ import annotations

from pathlib import Path

from sorsa_repro.reporting.aggregate import Summary, group_label
from sorsa_repro.reporting.claims import Row, claim_rows, one_seed_lean, verdict_word
from sorsa_repro.reporting.lr_robustness import claim_lines, grid_rows, matched_rows, robustness
from sorsa_repro.reporting.lr_study import PAPER_MULTIPLIER, RULE, selection, study_experiment, study_seeds
from sorsa_repro.reporting.runs import Run
from sorsa_repro.results import atomic_write_text

CLAIMS_FILE = "claims.md"
CLAIM_TEXT = {
    "1": "SORSA's training loss falls faster than PiSSA's and LoRA's (full FT the other reference)",
    "2": "SORSA changes the pretrained singular values and vectors less than LoRA, PiSSA and full FT",
    "3": "the orthonormal regularizer keeps U, V near-orthonormal and helps (gamma > 0 vs gamma = 0)",
    "4": "accuracy: SORSA > PiSSA > full FT > LoRA on GSM8K and MATH",
}
STATISTICS = (
    "Statistics fixed in advance (`sorsa_repro/reporting/claims.py`): convergence = held-out loss at the last "
    "step (rows never trained on), mean training loss over the last quarter of steps and steps to half the "
    "step-1 loss; weight change = ΔΣ relative and ΔD at the last recorded step, mean over adapted matrices; "
    "regularizer = final penalty, held-out and last-quarter loss and accuracy against SORSA with gamma = 0; "
    "accuracy = strict, each benchmark's first grader, Wilson 95% interval pooled over seeds. A and B: mean ± "
    "sample std over seeds. Differences A − B are paired by seed, with a 95% Student-t interval. Verdicts: "
    "supported / contradicted when the interval excludes 0 (for accuracy also the exact McNemar test on the "
    "same problems at p < 0.05), else inconclusive."
)
DEFAULT_NOTE = (
    "A check at this experiment's scale: what holds here need not hold for Llama-2-7B on MetaMathQA, and "
    "the other way round."
)


def scale_note(summary: Summary) -> str:
    """The experiment's own caveat (``scale_note`` in its config), else a general one."""
    notes = [r.config.get("scale_note") for r in summary.runs if r.config.get("scale_note")]
    return notes[0] if notes else DEFAULT_NOTE


def rows_table(rows: list[Row]) -> str:
    lines = [
        "| claim | comparison | statistic | A | B | A − B [95% CI] | seeds | verdict |",
        "|:--|:--|:--|--:|--:|--:|--:|:--|",
    ]
    lines += [f"| {r.claim} | {r.comparison} | {r.statistic} | {r.a} | {r.b} | {r.difference} | {r.seeds} | "
              f"{r.verdict} |" for r in rows]  # fmt: skip
    return "\n".join(lines)


def _cell(row: Row | None) -> str:
    if row is None:
        return "not measured"
    word = verdict_word(row.verdict)
    lean = one_seed_lean(row.verdict)
    return (
        (f"**{word}**" if word != "inconclusive" else word)
        + (f": {row.difference}" if row.difference != "–" else f" ({row.seeds} seed)")
        + (f", {lean}" if lean else "")
    )


def _rates(runs: list[Run]) -> str:
    """Each arm's learning rate in these runs: "SORSA x3 (lr 9e-05), ..." (base model left out)."""
    seen = {}
    for run in runs:
        if run.method != "base" and run.lr is not None:
            seen.setdefault(group_label(run.method, variant=run.arm), (run.lr_multiplier, run.lr))
    return ", ".join(f"{label} x{m:g} (lr {lr:.3g})" for label, (m, lr) in seen.items())


def floor_line(summary: Summary) -> str:
    """The untrained base model's held-out loss and accuracies, or a note that the experiment has no base run."""
    base = [r for r in summary.runs if r.method == "base" and r.status == "ok"]
    if not base:
        return "**Floor.** No run of the untrained base model in this experiment (`+arm=base`)."
    run = base[0]
    parts = [f"held-out loss {run.heldout_loss:.4f}" if run.heldout_loss is not None else "no held-out loss"]
    for bench, ev in run.result.get("eval", {}).items():
        grader = next(iter(ev.get("scores", {})), None)
        if grader:
            k, n = ev["scores"][grader].get("n_strict"), ev.get("n")
            parts.append(
                f"{bench} accuracy {100 * ev['scores'][grader]['strict']:.1f}% ({k}/{n}, {grader}, strict)"
            )
    return "**Floor.** The untrained base model (its run in this experiment): " + "; ".join(parts) + "."


def to_markdown(summary: Summary, caveat: str, study: Summary | None = None) -> str:
    rows = claim_rows(summary)
    seeds = ", ".join(
        str(s) for s in sorted({r.seed for r in summary.runs if r.seed is not None and r.method != "base"})
    )
    parts = [
        f"## The paper's claims at this scale ({summary.experiment})\n",
        f"*{caveat}*\n",
        STATISTICS + "\n",
    ]
    if study is None:
        parts += [
            f"No learning-rate study of this experiment ({study_experiment(summary.experiment)}): each verdict holds "
            f"at these runs' rates ({_rates(summary.runs) or '–'}) only; `make lr-study` runs one.\n",
            floor_line(summary) + "\n",
            rows_table(rows),
        ]
    else:
        parts += _two_settings(summary, study, rows, seeds)
    claims = [f"{k}. {v}" for k, v in CLAIM_TEXT.items()]
    missing = [k for k in CLAIM_TEXT if not any(r.claim == k for r in rows)]
    notes = [f"\nNo runs to test claim {', '.join(missing)} in this experiment."] if missing else []
    return "\n".join([*parts, "", "Claims (arXiv 2409.00055):", "", *claims, *notes]) + "\n"


def _two_settings(summary: Summary, study: Summary, rows: list[Row], seeds: str) -> list[str]:
    by_rate = grid_rows(study)
    paper = {r.key: r for r in by_rate.get(PAPER_MULTIPLIER, [])}
    chosen = selection(study)
    study_seeds_text = ", ".join(map(str, study_seeds(study)))
    picked = ", ".join(f"{label} x{a['multiplier']:g}" for label, a in chosen["arms"].items())
    grid = ", ".join(f"x{m:g}" for m in chosen["multipliers"])
    intro = (
        f"**Learning rates: two settings.** *Selected rates* (the fair comparison): this experiment's runs, seeds "
        f"{seeds}, at {_rates(summary.runs)}; the study {study.experiment} (seeds {study_seeds_text}, never "
        f"the claims' seeds) selected {picked} by its rule, fixed in advance: {RULE}. *The paper's rates* (the "
        f"faithful replication): the study's runs at x{PAPER_MULTIPLIER:g}, each method at its paper learning "
        f"rate (SORSA 3e-5, the others 2e-5), seeds {study_seeds_text}. The study trains only: accuracy (claim "
        f"4) is measured at the selected rates alone. Grid: {grid} of each paper rate.\n"
    )
    table = [
        "| claim | comparison | statistic | paper's rates | selected rates | across the grid |",
        "|:--|:--|:--|:--|:--|:--|",
    ]
    for row in rows:
        across = robustness(by_rate, row.key) if row.claim != "4" else "not measured (the study trains only)"
        table.append(f"| {row.claim} | {row.comparison} | {row.key[2]} | {_cell(paper.get(row.key))} | "
                     f"{_cell(row)} | {across} |")  # fmt: skip
    lines = claim_lines(by_rate)
    robust = [f"- Claim {c}: {lines[c]}" for c in sorted(lines)]
    robust.append("- Claim 4: measured at the selected rates only (the learning-rate study trains only).")
    matched = matched_rows(study)
    return [
        intro,
        floor_line(summary) + "\n",
        "### Each claim at both learning-rate settings\n",
        "\n".join(table) + "\n",
        "### Across the learning-rate grid\n",
        "\n".join(robust) + "\n",
        "### Claim 2 at matched held-out loss\n",
        "A bigger step changes more weights by construction: here each method's weight change where both reach "
        "the same held-out loss, read off its study runs (seeds "
        f"{study_seeds_text}) from the smallest rate to its best (`sorsa_repro/reporting/lr_robustness.py`).\n",
        rows_table(matched) if matched else "Not available: the study lacks spectral measures or a method.",
        f"\n### At the selected rates ({summary.experiment}, seeds {seeds})\n",
        rows_table(rows),
        f"\n### At the paper's rates ({study.experiment} at x{PAPER_MULTIPLIER:g}, seeds {study_seeds_text})\n",
        rows_table(list(paper.values())) if paper else f"The study has no runs at x{PAPER_MULTIPLIER:g}.",
    ]


def write_claims(summary: Summary, out_dir: str | Path, caveat: str, study: Summary | None = None) -> Path:
    path = Path(out_dir) / CLAIMS_FILE
    atomic_write_text(path, to_markdown(summary, caveat, study))
    return path
