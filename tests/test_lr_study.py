"""The learning-rate study on hand-made run folders with known answers: the selection rule (a clear best, a
tie, a diverged seed), the robustness line (a win at every rate, a win that flips, a tie), claim 2 at matched
held-out loss, and claims.md with both settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sorsa_repro.reporting import cli
from sorsa_repro.reporting.aggregate import load_experiment
from sorsa_repro.reporting.claims import claim_rows
from sorsa_repro.reporting.claims_report import write_claims
from sorsa_repro.reporting.lr_robustness import claim_lines, grid_rows, matched_rows, robustness, value_at
from sorsa_repro.reporting.lr_study import load_study, selection
from sorsa_repro.results import atomic_write_json

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
GRID = (1.0, 3.0, 10.0, 30.0)
SEEDS = (100, 101, 102)
PAPER_LR = {"sorsa": 3e-5, "lora": 2e-5, "pissa": 2e-5, "full": 2e-5}
# held-out loss at the last step per arm and multiplier (a seed adds its own small offset)
HELDOUT = {
    "sorsa": (0.80, 0.85, 1.00, 1.30),  # best at x1
    "pissa": (0.95, 0.88, 0.86, 0.50),  # x30 would be best, but one seed diverges there: x10
    "lora": (1.00, 0.95, 0.90, 0.89),  # best at x30; SORSA < LoRA flips (x1, x3 below; x10, x30 above)
    "full": (0.90, 0.90, 1.10, 1.40),  # SORSA < full FT at every rate; x1 and x3 tie: the smaller is chosen
    "sorsa-gamma0": (0.80, 0.85, 1.00, 1.30),  # SORSA's tie with its control
}
NOISE = {100: 0.0, 101: 0.01, 102: -0.01}


def make_study_run(root: Path, exp: str, arm: str, multiplier: float, seed: int, heldout: float, d_d: float):
    method, _, variant = arm.partition("-")
    name = f"{arm}-r16-s{seed}-x{multiplier:g}"
    path = root / exp / name
    lr = PAPER_LR[method] * multiplier
    result = {
        "run": {"experiment": exp, "method": method, "rank": 16, "seed": seed, **({"variant": variant} if variant else {})},
        "train": {"status": "finished", "steps": 8, "lr": lr, "lr_multiplier": multiplier, "heldout_loss": heldout},
        "protocol": {"train": {"model": "m", "steps": 8}},
    }  # fmt: skip
    atomic_write_json(path / "result.json", result)
    steps = list(range(1, 9))
    pd.DataFrame({"step": steps, "loss": [heldout + 0.1] * 8}).to_csv(path / "metrics.csv", index=False)
    pd.DataFrame({"step": [8], "layer": ["a"], "d_sigma_rel": [d_d / 2], "d_d": [d_d]}).to_csv(
        path / "spectral.csv", index=False
    )


@pytest.fixture
def study(tmp_path):
    for arm, losses in HELDOUT.items():
        for multiplier, loss in zip(GRID, losses, strict=True):
            for seed in SEEDS:
                value = loss + NOISE[seed] if arm != "sorsa-gamma0" else loss - NOISE[seed]
                if arm == "pissa" and multiplier == 30 and seed == 101:
                    value = math.nan  # diverged
                # weight change grows with the step: SORSA's faster (x3 per rate step), others x2
                change = (0.01 if arm.startswith("sorsa") else 0.002) * (
                    3 if arm.startswith("sorsa") else 2
                ) ** GRID.index(multiplier)
                make_study_run(tmp_path, "exp_lr", arm, multiplier, seed, value, change)  # fmt: skip
    return load_experiment(tmp_path, "exp_lr")


def test_the_selection_rule(study):
    chosen = selection(study)
    picked = {label: a["multiplier"] for label, a in chosen["arms"].items()}
    assert picked == {
        "Full FT": 1.0,
        "LoRA": 30.0,
        "PiSSA": 10.0,
        "SORSA": 1.0,
        "SORSA [variant=gamma0]": 1.0,
    }
    assert chosen["arms"]["PiSSA"]["grid"]["30"] is None  # a diverged seed: that rate's mean is infinite
    assert chosen["arms"]["LoRA"]["lr"] == pytest.approx(6e-4) and chosen["seeds"] == list(SEEDS)
    assert chosen["arms"]["SORSA"]["heldout_loss"] == pytest.approx(0.80)
    edges = {label: a["at_edge"] for label, a in chosen["arms"].items()}
    assert edges["LoRA"] and edges["SORSA"] and not edges["PiSSA"]  # x30 and x1 are the grid's ends


def test_runs_of_one_method_at_several_rates_are_never_averaged(study):
    labels = set(study.groups["label"])
    assert "SORSA r=16 [lr x3]" in labels and "SORSA r=16 [lr x3, variant=gamma0]" in labels
    assert set(study.groups["n_seeds"]) == {3}


def test_the_robustness_line_for_a_steady_win_a_flip_and_a_tie(study):
    by_rate = grid_rows(study)
    key = ("1", "SORSA < Full FT", "held-out loss, last step")
    assert robustness(by_rate, key) == "holds across the grid (supported)"
    flip = robustness(by_rate, ("1", "SORSA < LoRA", "held-out loss, last step"))
    assert flip == "flips: supported at x1, x3, contradicted at x10, x30"
    tie = robustness(by_rate, ("3", "SORSA < SORSA [variant=gamma0]", "held-out loss, last step"))
    assert tie == "inconclusive at every rate"
    lines = claim_lines(by_rate)
    assert lines["1"].startswith("**flips** within the grid (x1, x3, x10, x30)")
    assert "SORSA < Full FT (held-out loss, last step): holds across the grid (supported)" in lines["1"]
    assert lines["3"].startswith("**holds only in part of the grid**")  # the penalty is not measured here


def test_a_one_seed_study_gives_directions_not_verdicts(study):
    """small's study has one seed: no interval, so every verdict is inconclusive, and the line says which way
    each rate leans instead of "inconclusive at every rate"."""
    one = [r for r in study.runs if r.seed == 100]
    by_rate = {m: claim_rows(study, [r for r in one if r.lr_multiplier == m]) for m in GRID}
    flip = robustness(by_rate, ("1", "SORSA < LoRA", "held-out loss, last step"))
    assert flip == (
        "inconclusive at every rate (one seed, no interval): the claim's direction at x1, x3; "
        "against the claim at x10, x30"
    )
    row = next(r for r in by_rate[1.0] if r.key == ("1", "SORSA < LoRA", "held-out loss, last step"))
    assert (
        row.difference == "-0.2000 (one seed)"
        and row.verdict == "inconclusive (one seed: the claim's direction)"
    )
    assert claim_lines(by_rate)["1"].startswith("**no verdict: one seed** (directions only)")


def test_weight_change_is_read_off_at_the_matched_loss():
    points = [(1.0, 0.01), (0.8, 0.03), (0.7, 0.05), (0.9, 0.08)]  # the last rate is past the best
    assert value_at(points, 0.75) == pytest.approx(0.04)
    assert value_at(points, 1.0) == 0.01 and value_at(points, 0.7) == 0.05
    assert value_at(points, 1.1) is None and value_at(points, 0.6) is None  # never extrapolated


def test_claim_2_at_matched_heldout_loss(tmp_path):
    """SORSA's best held-out loss is 0.70, LoRA's 0.74: matched at 0.74, where SORSA's line (x3: 0.80, ΔD 0.03;
    x10: 0.70, ΔD 0.05) gives ΔD 0.042 and LoRA's (x30: 0.74) 0.008: SORSA changes more at the same loss."""
    curves = {"sorsa": ((1.0, 0.8, 0.7, 0.9), (0.01, 0.03, 0.05, 0.08)),
              "lora": ((1.1, 0.9, 0.75, 0.74), (0.002, 0.004, 0.006, 0.008))}  # fmt: skip
    for arm, (losses, changes) in curves.items():
        for multiplier, loss, change in zip(GRID, losses, changes, strict=True):
            for seed in SEEDS:
                make_study_run(tmp_path, "m_lr", arm, multiplier, seed, loss + NOISE[seed], change)
    (row,) = [r for r in matched_rows(load_experiment(tmp_path, "m_lr")) if r.statistic.startswith("ΔD")]
    assert row.comparison == "SORSA < LoRA" and row.statistic == "ΔD at matched held-out loss (0.7400)"
    assert row.a.startswith("0.04200") and row.b.startswith("0.00800") and row.seeds == 3
    assert row.verdict == "**contradicted**"


def test_claims_file_states_each_verdict_at_both_settings(study, tmp_path):
    exp_runs = tmp_path / "exp"
    for arm in HELDOUT:  # the claims sweep at the selected rates, seeds 0-2
        for seed in (0, 1, 2):
            multiplier = {"sorsa": 1.0, "pissa": 10.0, "lora": 30.0, "full": 1.0}[arm.partition("-")[0]]
            make_study_run(tmp_path, "exp", arm, multiplier, seed, HELDOUT[arm][0] - 0.05 * seed, 0.01)
    summary = load_experiment(tmp_path, "exp")
    text = write_claims(summary, tmp_path / "out", "a test scale", load_study(tmp_path, "exp")).read_text()
    assert "### Each claim at both learning-rate settings" in text
    assert "| 1 | SORSA < LoRA | held-out loss, last step | **supported**: " in text  # at x1
    assert "flips: supported at x1, x3, contradicted at x10, x30 |" in text
    assert (
        "- Claim 1: **flips** within the grid" in text
        and "- Claim 4: measured at the selected rates only" in text
    )
    assert "LoRA x30 (lr 0.0006)" in text and "seeds 100, 101, 102" in text
    assert exp_runs.is_dir()


def test_the_report_command_writes_the_study_files(study, tmp_path):
    assert (
        cli.main(["tables", "experiment=exp_lr", f"results_dir={tmp_path}", f"out_dir={tmp_path / 'o'}"]) == 0
    )
    out = tmp_path / "o" / "exp_lr"
    chosen = json.loads((out / "lr_selection.json").read_text())
    assert chosen["arms"]["PiSSA"]["multiplier"] == 10.0
    study_md = (out / "lr_study.md").read_text()
    assert "| PiSSA |" in study_md and "**0.8600 ± 0.0100 (n=3)**" in study_md and "1 failed" in study_md
    assert "x30 (lr 0.0006) † |" in study_md and "† at the edge of the grid" in study_md
    assert "### Each claim at every rate of the grid" in study_md
    assert (out / "lr_sensitivity.png").stat().st_size > 0 and not (out / "claims.md").exists()
    assert "## Learning-rate study (exp_lr)" in (out / "README.md").read_text()
