"""Reporting: aggregation over seeds, protocol check, tables, figures, README, W&B report."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sorsa_repro.methods.config import METHODS
from sorsa_repro.reporting import cli, wandb_report
from sorsa_repro.reporting.aggregate import METHOD_ORDER, load_experiment, summarize
from sorsa_repro.reporting.figures import seed_curves
from sorsa_repro.reporting.protocol import ProtocolMismatchError
from sorsa_repro.reporting.reference import load_reference
from sorsa_repro.reporting.runs import collect_runs
from sorsa_repro.reporting.table_format import latex_escape, to_latex, to_markdown
from sorsa_repro.reporting.tables import accuracy_table
from sorsa_repro.results import atomic_write_json, atomic_write_text

# the notes (missing seeds, failed runs) are warnings too; the tests that care assert them with pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = {"train": {"model": "tiny-llama", "data": "synthetic", "n_train_examples": 64, "max_length": 128}}


def make_run(
    root: Path,
    method: str,
    rank: int,
    seed: int,
    scores=None,
    *,
    experiment="exp",
    status="finished",
    params=1000,
    protocol=None,
    eval_extra=None,
    versions=None,
    run_extra=None,
    steps=6,
    ortho=None,
    train_extra=None,
):
    """A run folder as training + evaluation write it; scores: {bench: {grader: strict | (strict, flex)}}."""
    suffix = "".join(f"-{k}{v}" for k, v in (run_extra or {}).items())
    path = root / experiment / f"{method}-r{rank}-s{seed}{suffix}"
    evals = {}
    for bench, by_grader in (scores or {}).items():
        graded = {}
        for grader, acc in by_grader.items():
            strict, flexible = acc if isinstance(acc, tuple) else (acc, None)
            version = (versions or {}).get(grader, "1.0")
            graded[grader] = {"version": version, "strict": strict, "flexible": flexible, "n_strict": 1}
        evals[bench] = {
            "n": 20,
            "limit": 20,
            "max_new_tokens": 64,
            "backend": "hf",
            "prompt_version": "v1",
            "wall_time_s": 2.0,
            "tokens_per_s": 100.0,
            "scores": graded,
            **(eval_extra or {}),
        }
    train = {
        "status": status,
        "steps": steps,
        "final_loss": 1.0,
        "trainable_params": params,
        "wall_time_s": 10.0,
        **(train_extra or {}),
    }
    if status == "failed":
        train["error"] = "Traceback ...\nRuntimeError: out of memory"
    result = {
        "schema": 1,
        "run": {"experiment": experiment, "method": method, "rank": rank, "seed": seed, **(run_extra or {})},
        "train": train,
        "protocol": protocol or PROTOCOL,
        "eval": evals,
        "provenance": {
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
            "command": f"sorsa-train seed={seed}",
        },
    }
    atomic_write_json(path / "result.json", result)
    atomic_write_text(path / "config.yaml", yaml.safe_dump({"scale": "mini", "method": {"name": method}}))
    step = pd.Series(range(steps))
    metrics = pd.DataFrame(
        {
            "step": step,
            "loss": 3.0 - 0.1 * step - 0.01 * seed,
            "lr": 1e-4,
            "grad_norm": 1.0,
            "tokens_per_s": 50.0,
        }
    )
    metrics["ortho_penalty"] = ortho(step, seed) if ortho else None
    metrics.to_csv(path / "metrics.csv", index=False)
    return path


def test_the_table_order_names_only_methods_that_exist():
    # display names come from the method registry (tests/test_registry.py); the fixed order is a list of its own
    assert set(METHOD_ORDER) <= set(METHODS)


def test_mean_and_sample_std_over_seeds(tmp_path):
    for seed, acc in enumerate([0.50, 0.60, 0.70]):
        make_run(tmp_path, "sorsa", 8, seed, {"gsm8k": {"metamath": (acc, acc + 0.1)}})
    make_run(tmp_path, "lora", 8, 0, {"gsm8k": {"metamath": 0.40}})
    # a sweep variant of SORSA (extra key in the run block) is its own group, never averaged in
    make_run(tmp_path, "sorsa", 8, 0, {"gsm8k": {"metamath": 0.10}}, run_extra={"ortho_mode": "decoupled"})
    with pytest.warns(UserWarning, match="1 of 3 seeds"):  # the one-seed groups are reported, not hidden
        s = summarize(collect_runs(tmp_path / "exp"), "exp")
    st = s.stats.set_index(["method", "variant", "mode"])
    sorsa = st.loc[("sorsa", "", "strict")]
    assert (sorsa["mean"], sorsa["n"]) == (pytest.approx(60.0), 3)
    assert sorsa["std"] == pytest.approx(10.0)  # sample std, ddof=1 (population std would be 8.165)
    assert st.loc[("sorsa", "", "flexible"), "mean"] == pytest.approx(70.0)
    assert math.isnan(st.loc[("lora", "", "strict"), "std"])  # one seed: no std
    assert st.loc[("sorsa", "ortho_mode=decoupled", "strict"), "mean"] == pytest.approx(10.0)
    assert list(s.groups["label"]) == ["LoRA r=8", "SORSA r=8", "SORSA r=8 [ortho_mode=decoupled]"]


def test_different_protocols_are_refused_naming_runs_and_keys(tmp_path):
    make_run(tmp_path, "sorsa", 8, 0, {"gsm8k": {"metamath": 0.5}})
    make_run(tmp_path, "sorsa", 8, 1, {"gsm8k": {"metamath": 0.5}}, eval_extra={"limit": 10})
    make_run(tmp_path, "lora", 8, 0, {"gsm8k": {"metamath": 0.5}}, versions={"metamath": "2.0"})
    with pytest.raises(ProtocolMismatchError) as err:
        load_experiment(tmp_path, "exp")
    msg = str(err.value)
    assert "eval.gsm8k.limit: 10 in sorsa-r8-s1; 20 in lora-r8-s0, sorsa-r8-s0" in msg
    assert 'eval.gsm8k.scores.metamath.version: "1.0" in sorsa-r8-s0, sorsa-r8-s1; "2.0" in lora-r8-s0' in msg
    # a training-protocol difference too, and the CLI turns it into a message and exit code 1
    make_run(
        tmp_path,
        "pissa",
        8,
        0,
        {"gsm8k": {"metamath": 0.5}},
        protocol={"train": {**PROTOCOL["train"], "max_length": 512}},
    )
    with pytest.raises(
        ProtocolMismatchError, match=r"protocol.train.max_length: 128 in .*; 512 in pissa-r8-s0"
    ):
        load_experiment(tmp_path, "exp")
    assert (
        cli.main(["tables", "experiment=exp", f"results_dir={tmp_path}", f"out_dir={tmp_path / 'out'}"]) == 1
    )


def test_missing_seeds_and_failed_runs_are_reported(tmp_path):
    for seed in (0, 1, 2):
        make_run(tmp_path, "sorsa", 8, seed, {"gsm8k": {"metamath": 0.5}})
    make_run(tmp_path, "lora", 8, 0, {"gsm8k": {"metamath": 0.4}})
    make_run(tmp_path, "lora", 8, 1, status="failed")
    make_run(tmp_path, "pissa", 8, 0)  # trained, never evaluated
    with pytest.warns(UserWarning, match=r"LoRA r=8: 1 of 3 seeds; missing seed\(s\) 1, 2"):
        s = load_experiment(tmp_path, "exp")
    assert "lora-r8-s1: training failed (RuntimeError: out of memory); not included" in s.notes
    assert "pissa-r8-s0: no eval results; in the loss columns only" in s.notes
    with pytest.warns(UserWarning, match=r"SORSA r=8: 3 of 4 seeds; missing seed\(s\) 3"):
        load_experiment(tmp_path, "exp", expected_seeds=[0, 1, 2, 3])
    out = tmp_path / "out"
    assert cli.main(["tables", "experiment=exp", f"results_dir={tmp_path}", f"out_dir={out}"]) == 0
    table = (out / "exp" / "main_table.md").read_text()
    assert "- LoRA r=8: 1 of 3 seeds; missing seed(s) 1, 2\n" in table
    assert "lora-r8-s1: training failed" in (out / "exp" / "main_table.tex").read_text()
    assert (
        "| lora-r8-s1  | training failed (RuntimeError: out of memory) |"
        in (out / "exp" / "README.md").read_text()
    )


def _fixed_summary(tmp_path):
    for seed, (mm, mv) in enumerate([(0.40, 0.45), (0.50, 0.55)]):
        make_run(tmp_path, "lora", 8, seed, {"gsm8k": {"metamath": mm, "math_verify": mv}}, params=1_234_567,
                 train_extra={"lr": 6e-5, "lr_multiplier": 3.0, "heldout_loss": 0.9 + seed / 10})  # fmt: skip
    for seed, (mm, mv) in enumerate([(0.50, 0.50), (0.70, 0.60)]):
        make_run(tmp_path, "sorsa", 8, seed, {"gsm8k": {"metamath": mm, "math_verify": mv}}, params=1_200_000,
                 train_extra={"lr": 3e-5, "lr_multiplier": 1.0, "heldout_loss": 0.8})  # fmt: skip
    make_run(tmp_path, "base", 8, 0, {"gsm8k": {"metamath": 0.1, "math_verify": 0.1}}, params=0,
             train_extra={"heldout_loss": 1.25})  # fmt: skip
    return load_experiment(tmp_path, "exp")


EXPECTED_MD = """\
**exp: accuracy (%), strict answer extraction.** Mean ± sample standard deviation (ddof=1) over seeds; \
– where a group has one seed (no std) or no result. lr: the learning rate, as a multiple of the method's \
paper rate; held-out loss: at the last step, on rows of the training source never trained on; the base \
model (untrained) is the floor. Graders: math_verify 1.0, metamath 1.0. No paper numbers: this \
experiment's base model or data differ from every row of arXiv 2409.00055, Table 1, so they are not \
comparable; the paper's numbers are in paper_tables/reference.yaml.

| Method                 | r | Params | Seeds |         lr |   Held-out loss | GSM8K metamath | GSM8K math_verify |
|:-----------------------|--:|-------:|------:|-----------:|----------------:|---------------:|------------------:|
| Base model (untrained) | – |      0 |     1 |          – |      1.2500 ± – |      10.00 ± – |         10.00 ± – |
| LoRA                   | 8 |   1.2M |     2 | x3 = 6e-05 | 0.9500 ± 0.0707 |   45.00 ± 7.07 |      50.00 ± 7.07 |
| SORSA                  | 8 |   1.2M |     2 | x1 = 3e-05 | 0.8000 ± 0.0000 |  60.00 ± 14.14 |      55.00 ± 7.07 |
"""

EXPECTED_TEX = r"""\begin{table}[htbp]
  \centering
  \caption{exp: accuracy (\%), strict answer extraction. Mean $\pm$ sample standard deviation (ddof=1) over seeds; -- where a group has one seed (no std) or no result. lr: the learning rate, as a multiple of the method's paper rate; held-out loss: at the last step, on rows of the training source never trained on; the base model (untrained) is the floor. Graders: math\_verify 1.0, metamath 1.0. No paper numbers: this experiment's base model or data differ from every row of arXiv 2409.00055, Table 1, so they are not comparable; the paper's numbers are in paper\_tables/reference.yaml.}
  \label{tab:exp-strict}
  \begin{tabular}{lrrrrrrr}
    \toprule
    Method                 &  r & Params & Seeds &         lr &       Held-out loss &    GSM8K metamath & GSM8K math\_verify \\
    \midrule
    Base model (untrained) & -- &      0 &     1 &         -- &     1.2500 $\pm$ -- &    10.00 $\pm$ -- &     10.00 $\pm$ -- \\
    LoRA                   &  8 &   1.2M &     2 & x3 = 6e-05 & 0.9500 $\pm$ 0.0707 &  45.00 $\pm$ 7.07 &   50.00 $\pm$ 7.07 \\
    SORSA                  &  8 &   1.2M &     2 & x1 = 3e-05 & 0.8000 $\pm$ 0.0000 & 60.00 $\pm$ 14.14 &   55.00 $\pm$ 7.07 \\
    \bottomrule
  \end{tabular}
\end{table}
"""


def test_markdown_and_latex_match_expected_text(tmp_path):
    table = accuracy_table(_fixed_summary(tmp_path), "strict", load_reference())
    assert to_markdown(table) == EXPECTED_MD
    assert to_latex(table) == EXPECTED_TEX
    assert (
        latex_escape("a_b & 50% {x} #1 ~ ^") == r"a\_b \& 50\% \{x\} \#1 \textasciitilde{} \textasciicircum{}"
    )


def test_full_fine_tuning_shows_no_rank(tmp_path):
    """A full FT run's config carries the experiment's rank (r=16 in mini), but full FT has none."""
    for method in ("full", "lora"):
        make_run(tmp_path, method, 16, 0, {"gsm8k": {"metamath": 0.5}})
    table = accuracy_table(summarize(collect_runs(tmp_path / "exp"), "exp"), "strict", load_reference())
    assert [row[:2] for row in table.rows] == [["Full FT", None], ["LoRA", 16]]
    assert "| Full FT |  – |" in to_markdown(table)


PAPER_PROTOCOL = {"train": {"model": "meta-llama/Llama-2-7b-hf", "data": "metamathqa", "examples": 100000}}


def test_paper_numbers_only_for_the_paper_experiment(tmp_path):
    scores = {"gsm8k": {"metamath": 0.55}, "math": {"metamath": 0.1}}
    full = {"n": 1319, "limit": None}  # the whole GSM8K test set; MATH below on 20 problems only
    for seed, acc in enumerate([0.55, 0.57]):
        make_run(tmp_path, "sorsa", 128, seed, {"gsm8k": {"metamath": acc}, "math": scores["math"]},
                 experiment="paper_llama2_7b", protocol=PAPER_PROTOCOL, eval_extra=full)  # fmt: skip
    make_run(
        tmp_path,
        "sorsa",
        64,
        0,
        scores,
        experiment="paper_llama2_7b",
        protocol=PAPER_PROTOCOL,
        eval_extra=full,
    )
    reference = load_reference()
    summary = load_experiment(tmp_path, "paper_llama2_7b")
    for run in summary.runs:  # MATH on a subset: not the paper's setting
        run.result["eval"]["math"]["n"] = 20
    table = accuracy_table(summary, "strict", reference)
    paper = table.header.index("GSM8K paper")
    assert table.header[paper + 1] == "Δ GSM8K" and "MATH paper" not in table.header
    r64, r128 = table.rows  # sorted by rank
    assert (r128[1], r128[paper], r128[paper + 1].value) == (128, 56.03, pytest.approx(56.00 - 56.03))
    assert (r64[1], r64[paper], r64[paper + 1]) == (
        64,
        None,
        None,
    )  # the paper's rank is 128: no number at 64
    assert "| SORSA  | 128 |" in to_markdown(table) and "$-0.03$" in to_latex(table)
    assert "Full FT, LoRA, PiSSA" in table.notes[0] and "PiSSA paper's numbers" in table.caption
    assert "MATH: 20 of 5000 problems" in table.caption


def test_paper_difference_needs_the_papers_training_setting(tmp_path):
    small = {"train": {**PAPER_PROTOCOL["train"], "examples": 1000}}
    make_run(tmp_path, "sorsa", 128, 0, {"gsm8k": {"metamath": 0.5}}, experiment="paper_llama2_7b",
             protocol=small, eval_extra={"n": 1319, "limit": None})  # fmt: skip
    table = accuracy_table(load_experiment(tmp_path, "paper_llama2_7b"), "strict", load_reference())
    assert "GSM8K paper" not in table.header
    assert "GSM8K: examples 1000 (paper 100000)" in table.caption


def test_seed_curves_mean_and_min_max_band(tmp_path):
    make_run(tmp_path, "sorsa", 8, 0, {"gsm8k": {"metamath": 0.5}}, ortho=lambda step, seed: 0.1 * step)
    make_run(tmp_path, "sorsa", 8, 1, {"gsm8k": {"metamath": 0.5}}, ortho=lambda step, seed: 0.3 * step)
    make_run(tmp_path, "lora", 8, 0, {"gsm8k": {"metamath": 0.5}})
    runs = collect_runs(tmp_path / "exp")
    curve = seed_curves(runs, "ortho_penalty", span=1)  # span 1: no smoothing
    assert list(curve) == [("sorsa", 8, "")]  # LoRA logs no penalty
    c = curve[("sorsa", 8, "")]
    assert c.loc[5].tolist() == pytest.approx([1.0, 0.5, 1.5, 2])
    ema = seed_curves(runs, "loss", span=3)[("lora", 8, "")]["mean"]
    assert ema.tolist() == pytest.approx(
        pd.Series(3.0 - 0.1 * pd.Series(range(6))).ewm(span=3).mean().tolist()
    )


def test_regenerated_tables_and_figures_are_byte_identical(tmp_path):
    def ortho(step, seed):
        return 1e-3 * step * (seed + 1)

    for rank in (4, 8):
        for seed in (0, 1):
            acc = {
                "gsm8k": {"metamath": (0.3 + 0.01 * rank + 0.02 * seed, 0.5)},
                "math": {"math_verify": 0.1},
            }
            make_run(tmp_path, "sorsa", rank, seed, acc, ortho=ortho)
            make_run(tmp_path, "lora", rank, seed, acc)
    out = tmp_path / "out"
    argv = ["all", "experiment=exp", f"results_dir={tmp_path}", f"out_dir={out}"]
    assert cli.main(argv) == 0
    files = sorted(p for p in (out / "exp").iterdir())
    names = {p.name for p in files}
    for stem in ("loss", "ortho_penalty", "accuracy_vs_rank", "accuracy_per_method", "cost_per_method"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    assert {"main_table.md", "main_table.tex", "rank_table.md", "rank_table.tex", "README.md"} <= names
    first = {p.name: p.read_bytes() for p in files}
    # regenerate in a fresh process: no timestamps, versions or state may leak into the files
    subprocess.run(
        [sys.executable, "-m", "sorsa_repro.reporting.cli", *argv], check=True, capture_output=True
    )
    assert {p.name: p.read_bytes() for p in sorted((out / "exp").iterdir())} == first
    assert b"CreationDate" not in first["loss.pdf"] and b"Software" not in first["loss.png"]
    readme = first["README.md"].decode()
    assert "![loss](loss.png)" in readme and "r=4 |" in first["rank_table.md"].decode()
    assert "`sorsa-train seed=0`; `sorsa-train seed=1`" in readme and "| scale" in readme


def test_runs_without_evaluation_still_fill_the_main_table(tmp_path, capsys):
    """A training-only experiment (a learning-rate study, evaluate.benchmarks=[]): the main table holds each
    method's loss, held-out loss, parameters, time, throughput and memory, not a bare header."""
    for method, seed, heldout in (("lora", 0, 0.9), ("lora", 1, 1.1), ("sorsa", 0, 0.8)):
        extra = {"heldout_loss": heldout, "peak_memory_mb": 2000.0 + seed, "lr": 2e-4, "lr_multiplier": 10.0,
                 "init_time_s": 0.5 + seed}  # fmt: skip
        make_run(tmp_path, method, 8, seed, None, train_extra=extra)
    out = tmp_path / "reports"
    assert cli.main(["all", "experiment=exp", f"results_dir={tmp_path}", f"out_dir={out}"]) == 0
    table = (out / "exp" / "main_table.md").read_text()
    assert "| LoRA   | 8 |   1.0K |     2 | x10 = 0.0002 | 1.0000 ± 0.1414 |" in table
    assert "**exp: training, per method.**" in table
    assert (
        "| LoRA   | 8 |     2 | 1.0000 ± 0.0000 | 1.0000 ± 0.1414 | 1.00 ± 0.71 |     10 ± 0 |   50 ± 0 | 2000 ± 1 |"
        in table
    )
    assert "2000 ± 1" in table and "| SORSA  | 8 |     1 |" in table
    # the report's folder is named absolutely, wherever the command ran from
    assert f"report: {(out / 'exp' / 'README.md').resolve()}" in capsys.readouterr().out
    assert (out / "exp" / "cost_per_method.png").exists() and not (
        out / "exp" / "accuracy_per_method.png"
    ).exists()


def test_a_curve_of_one_point_is_drawn_with_a_marker(tmp_path):
    from sorsa_repro.reporting.figures import _curve_figure

    one = pd.DataFrame({"mean": [0.5], "min": [0.4], "max": [0.6], "n": [2]}, index=[16])
    many = pd.DataFrame({"mean": [1.0] * 8, "min": [1.0] * 8, "max": [1.0] * 8, "n": [2] * 8}, index=range(8))
    fig = _curve_figure(
        {("a", 8, ""): one, ("b", 8, ""): many}, {("a", 8, ""): "C0", ("b", 8, ""): "C1"}, "y", "t"
    )
    markers = [line.get_marker() for line in fig.axes[0].get_lines()]
    assert markers == ["o", "None"]


def test_analysis_hook_runs_the_spectral_figures(tmp_path):
    make_run(tmp_path, "sorsa", 8, 0, {"gsm8k": {"metamath": 0.5}})  # no spectral.csv: no figures
    argv = ["analysis", "experiment=exp", f"results_dir={tmp_path}", f"out_dir={tmp_path / 'out'}"]
    assert cli.main(argv) == 0
    assert (tmp_path / "out" / "exp" / "README.md").exists()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_wandb_offline_prints_what_it_needs(tmp_path, monkeypatch, capsys, no_network):
    make_run(tmp_path, "sorsa", 8, 0, {"gsm8k": {"metamath": 0.5}})
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    argv = ["experiment=exp", f"results_dir={tmp_path}", "out_dir=paper_tables"]
    assert wandb_report.main(argv) == 0
    out = capsys.readouterr().out
    assert "not built: offline (no W&B API key" in out
    assert "export WANDB_API_KEY=<key>" in out and "wandb sync" in out
    assert "paper_tables/exp/README.md" in out
    # a key does not help when the mode says offline
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_report.main(argv) == 0
    assert "offline (WANDB_MODE=offline)" in capsys.readouterr().out


def test_wandb_report_blocks_are_built_without_network(tmp_path, no_network):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    for method in ("lora", "sorsa"):
        make_run(tmp_path, method, 8, 0, {"gsm8k": {"metamath": 0.5}})
    args = wandb_report.WandbArgs(experiment="exp", entity="me", project="sorsa")
    report = wandb_report.build_report(load_experiment(tmp_path, "exp"), args, load_reference())
    assert (report.entity, report.project) == ("me", "sorsa")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 4  # all methods, one per method, config differences
    assert grids[0].runsets[0].groupby == ["config.method.name"]
    assert [p.y for p in grids[0].panels] == [["train/loss"], ["train/heldout_loss"], ["train/ortho_penalty"]]
    assert "'sorsa'" in grids[2].runsets[0].filters and "'exp'" in grids[2].runsets[0].filters
    assert isinstance(grids[3].panels[0], wr.RunComparer)
    table, claims = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert "| SORSA  | 8 |   1.0K |     1 |      50.00 ± – |" in table.text
    assert (
        "## The paper's claims at this scale (exp)" in claims.text and "| 1 | SORSA < LoRA |" in claims.text
    )


# ---------------------------------------------------------------------------------------------- verdict


def _same_run(
    ref_root: Path, our_root: Path, name: str, loss_scale: float = 1.0, n_correct: int | None = None
):
    """Copy a reference run folder into ``our_root``, optionally with scaled losses or another count."""
    import json
    import shutil

    ours = our_root / "exp" / name
    shutil.copytree(ref_root / "exp" / name, ours)
    metrics = pd.read_csv(ours / "metrics.csv")
    metrics.loc[metrics["step"] == 3, "loss"] *= loss_scale
    metrics.to_csv(ours / "metrics.csv", index=False)
    if n_correct is not None:
        result = json.loads((ours / "result.json").read_text())
        result["eval"]["gsm8k"]["scores"]["metamath"]["n_strict"] = n_correct
        atomic_write_json(ours / "result.json", result)
    return ours


def test_reproducibility_verdict(tmp_path):
    from sorsa_repro.reporting.reproducibility import LOSS_RTOL, accuracy_tolerance, reproducibility_verdict

    ref, ours = tmp_path / "ref", tmp_path / "ours"
    for method in ("lora", "sorsa"):
        make_run(ref, method, 8, 0, {"gsm8k": {"metamath": 0.5}})
    assert accuracy_tolerance(20) == 1 and accuracy_tolerance(300) == 6
    _same_run(ref, ours, "lora-r8-s0", loss_scale=1 + LOSS_RTOL / 2, n_correct=2)  # within both bounds
    _same_run(ref, ours, "sorsa-r8-s0")
    verdict = reproducibility_verdict(ours, ref, "exp")
    assert verdict.verdict == "REPRODUCED" and [c.verdict for c in verdict.runs] == ["reproduced"] * 2

    _same_run(ref, tmp_path / "loss", "lora-r8-s0", loss_scale=1.01)  # a clear difference at step 3
    _same_run(ref, tmp_path / "loss", "sorsa-r8-s0", n_correct=4)  # 3 more correct: beyond 1 problem
    verdict = reproducibility_verdict(tmp_path / "loss", ref, "exp")
    assert verdict.verdict == "DIFFERS"
    lora, sorsa = verdict.runs
    assert lora.verdict == "differs" and lora.at_step == 3 and lora.max_loss_rel_diff == pytest.approx(0.01)
    assert sorsa.reasons == ["gsm8k/metamath: 4 of 20 correct here, 1 in the reference"]

    _same_run(ref, tmp_path / "part", "sorsa-r8-s0")
    partial = reproducibility_verdict(tmp_path / "part", ref, "exp")
    assert partial.verdict == "DIFFERS" and [c.verdict for c in partial.runs] == ["missing", "reproduced"]
    assert reproducibility_verdict(ours, tmp_path / "none", "exp").verdict == "NO REFERENCE"


def test_verdict_command_writes_the_readme_section(tmp_path, capsys):
    ref = tmp_path / "ref"
    make_run(ref, "lora", 8, 0, {"gsm8k": {"metamath": 0.5}})
    _same_run(ref, tmp_path / "ours", "lora-r8-s0")
    args = [f"results_dir={tmp_path / 'ours'}", f"out_dir={tmp_path / 'out'}", f"reference_runs={ref}"]
    assert cli.main(["verdict", "experiment=exp", *args]) == 0
    readme = (tmp_path / "out" / "exp" / "README.md").read_text()
    assert "## Reproducibility against the committed reference" in readme and "**REPRODUCED**" in readme
    assert "**REPRODUCED**" in capsys.readouterr().out


def test_protocol_table_cites_the_references_and_is_current():
    from sorsa_repro.reporting.protocol_table import composed_configs, document, protocol_table

    table = protocol_table(composed_configs("paper_llama2_7b"))
    assert "coefficient 0.208333 after clipping" in table and "sorsa-v1: 0 stop strings" in table
    assert "trainer.py:2625-2674" in table and "eval_gsm8k.py:89-90" in table
    committed = ROOT / "paper_tables" / "paper_llama2_7b" / "protocol.md"
    assert committed.read_text() == document("paper_llama2_7b"), (
        "regenerate with the command in its first line"
    )
