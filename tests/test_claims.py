"""claims.md on hand-made run folders with known answers: a clear win, a clear loss, a tie, a floor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sorsa_repro.evaluation.summary import wilson
from sorsa_repro.reporting.aggregate import load_experiment
from sorsa_repro.reporting.claim_stats import mcnemar_p, paired_interval, t_quantile
from sorsa_repro.reporting.claims import claim_rows
from sorsa_repro.reporting.claims_report import write_claims
from sorsa_repro.results import atomic_write_json

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
N_PROBLEMS = 40


def make_run(root: Path, method: str, seed: int, loss_at_end: float, correct: int, *, variant=None,
             penalty=None, d_d=0.01):  # fmt: skip
    """A finished, evaluated run: 8 steps of loss falling from 2.0 to ``loss_at_end``, ``correct`` of 40
    synthetic problems right (the first ones), spectral metrics at step 8."""
    name = f"{method}{'-' + variant if variant else ''}-r16-s{seed}"
    path = root / "exp" / name
    run = {
        "experiment": "exp",
        "method": method,
        "rank": 16,
        "seed": seed,
        **({"variant": variant} if variant else {}),
    }
    result = {
        "run": run,
        "train": {"status": "finished", "steps": 8},
        "protocol": {"train": {"model": "m"}},
        "eval": {"synthetic": {"n": N_PROBLEMS, "limit": N_PROBLEMS, "max_new_tokens": 8, "prompt_version": "v",
                               "scores": {"numeric": {"version": "1", "strict": correct / N_PROBLEMS}}}},
    }  # fmt: skip
    atomic_write_json(path / "result.json", result)
    steps = list(range(1, 9))
    loss = [2.0 + (loss_at_end - 2.0) * (s - 1) / 7 for s in steps]
    frame = pd.DataFrame({"step": steps, "loss": loss})
    frame["ortho_penalty"] = penalty if penalty is not None else None
    frame.to_csv(path / "metrics.csv", index=False)
    rows = [{"id": f"p{i}", "correct": {"numeric": {"strict": i < correct, "flexible": i < correct}}}
            for i in range(N_PROBLEMS)]  # fmt: skip
    (path / "predictions").mkdir()
    (path / "predictions" / "synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(
        {"step": [8, 8], "layer": ["a", "b"], "d_sigma_rel": [d_d / 2] * 2, "d_d": [d_d] * 2}
    ).to_csv(path / "spectral.csv", index=False)
    return path


def test_statistics_on_known_values():
    assert t_quantile(2) == 4.303 and t_quantile(100) == pytest.approx(1.96, abs=1e-3)
    mean, low, high = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert paired_interval([1.0]) is None
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)  # the textbook Wilson upper bound for 0/10
    # the interval holds its own proportion exactly, rounding included (0/150 gave a low end of +1e-17 once,
    # and the accuracy figure's error bar a negative length)
    assert all(
        wilson(k, n)[0] <= k / n <= wilson(k, n)[1] for n in range(1, 301) for k in (0, 1, n // 2, n - 1, n)
    )
    assert all(wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0 for n in range(1, 301))
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64) and mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0


@pytest.fixture
def experiment(tmp_path):
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        make_run(tmp_path, "sorsa", seed, 0.50 + noise, 30 - seed, penalty=0.001, d_d=0.001)
        make_run(tmp_path, "pissa", seed, 1.00 + noise, 10 + seed, d_d=0.01)  # SORSA clearly better
        make_run(tmp_path, "lora", seed, 0.30 - noise, 0, d_d=0.01)  # SORSA clearly worse on loss
        make_run(tmp_path, "full", seed, 0.50 + (0.02, -0.02, 0.0)[seed], 0, d_d=0.001)  # a tie
        make_run(tmp_path, "sorsa", seed, 0.55, 29, variant="gamma0", penalty=0.05, d_d=0.001)
    return load_experiment(tmp_path, "exp")


def _row(rows, comparison, statistic):
    (row,) = [r for r in rows if r.comparison == comparison and r.statistic.startswith(statistic)]
    return row


def test_verdicts_for_a_win_a_loss_a_tie_and_a_floor(experiment):
    rows = claim_rows(experiment)
    assert _row(rows, "SORSA < PiSSA", "mean loss").verdict == "**supported**"
    assert _row(rows, "SORSA < LoRA", "mean loss").verdict == "**contradicted**"
    assert _row(rows, "SORSA < Full FT", "mean loss").verdict.startswith("inconclusive")
    assert _row(rows, "SORSA < PiSSA", "ΔD").verdict == "**supported**"
    assert _row(rows, "SORSA < Full FT", "ΔD").verdict.startswith("inconclusive")  # equal: no spread
    accuracy = _row(rows, "SORSA > PiSSA", "synthetic accuracy")
    assert accuracy.verdict == "**supported**" and accuracy.seeds == 3
    assert "(87/120)" in accuracy.a and "(33/120)" in accuracy.b
    assert "McNemar p = 0.000 (54 vs 0 discordant)" in accuracy.statistic
    assert (
        _row(rows, "Full FT > LoRA", "synthetic accuracy").verdict
        == "inconclusive (floor: every answer wrong)"
    )
    assert _row(rows, "SORSA > PiSSA", "synthetic").difference.startswith(
        "+45.0"
    )  # pp: (50 + 45 + 40) / 3, paired by seed
    assert (
        _row(rows, "SORSA < SORSA [variant=gamma0]", "final orthonormal penalty").verdict == "**supported**"
    )


def test_claims_file_is_deterministic_and_in_the_readme(experiment, tmp_path):
    from sorsa_repro.reporting.readme import write_readme
    from sorsa_repro.reporting.reference import load_reference

    out = tmp_path / "out"
    first = write_claims(experiment, out, "a test scale").read_text()
    assert write_claims(experiment, out, "a test scale").read_text() == first
    assert "*a test scale*" in first and "| 4 | SORSA > PiSSA |" in first
    readme = write_readme(experiment, load_reference(), out, str(tmp_path)).read_text()
    assert "## The paper's claims at this scale (exp)" in readme


def test_an_accuracy_edge_of_a_few_problems_is_not_a_verdict(tmp_path):
    """One more right answer per seed gives three equal paired differences, a zero-width t interval that
    excludes 0; on 3 discordant problems the paired test (McNemar p = 0.25) says it could be chance."""
    for seed in range(3):
        make_run(tmp_path, "sorsa", seed, 0.5, 2)
        make_run(tmp_path, "pissa", seed, 0.5, 1)
    row = _row(claim_rows(load_experiment(tmp_path, "exp")), "SORSA > PiSSA", "synthetic accuracy")
    assert row.difference == "+2.5 [+2.5, +2.5] pp"
    assert row.verdict == "inconclusive (paired test on the same problems: McNemar p = 0.25)"
