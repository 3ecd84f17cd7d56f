"""Sweeps: expansion, validation before the first job, skip-on-rerun, the SLURM preset, replicate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sorsa_repro.replicate import main as replicate_main
from sorsa_repro.replicate import stages as replicate_stages
from sorsa_repro.training.sweep import sweep_jobs

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = [
    "experiment=mini",
    "model=tiny_random",
    "data.limit=16",
    "data.max_length=128",
    "train.batch_size=2",
    "train.global_batch_size=4",
    "train.max_steps=2",
    "train.spectral_every=0",
]


def compose_sweep(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    cfg.hydra.overrides.task = list(overrides)
    return cfg


def train(*args, cwd=ROOT):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sorsa_repro.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_sweep_files_expand_to_the_declared_jobs():
    jobs = sweep_jobs(compose_sweep("+sweep=paper_table", "experiment=mini"))
    assert len(jobs) == 15  # (the base model + 4 methods) x 3 seeds; the base model's 3 jobs share one run
    assert {j[0] for j in jobs} == {
        "method=base",
        "method=full",
        "method=lora",
        "method=pissa",
        "method=sorsa",
    }
    assert len(sweep_jobs(compose_sweep("+sweep=paper_table", "experiment=mini", "seed=0"))) == 5
    claims = sweep_jobs(compose_sweep("+sweep=claims", "experiment=mini"))
    assert len(claims) == 18 and {j[0] for j in claims} >= {"+arm=base", "+arm=sorsa_gamma0"}
    study = sweep_jobs(compose_sweep("+sweep=lr_study", "experiment=mini_lr"))
    assert (
        len(study) == 6 * 6 * 3
    )  # arms x learning-rate multipliers (0.3, 1, 3, 10, 30, 100) x seeds 100-102
    assert {j[2] for j in study} == {"seed=100", "seed=101", "seed=102"}
    small = compose_sweep("+sweep=lr_study", "experiment=small_lr", "seed=100")
    small.hydra.overrides.task.extend(small_lr_grid())  # as Hydra's multirun receives the command line
    small = sweep_jobs(small)
    assert len(small) == 6 * 4  # arms x small's grid (x1, x3, x10, x30) x one seed
    assert len(sweep_jobs(compose_sweep("+sweep=ranks", "experiment=mini"))) == 15
    methods = sweep_jobs(compose_sweep("+sweep=methods", "experiment=mini_methods"))
    assert len(methods) == 17 * 3  # sixteen methods and the base model x seeds 0-2
    assert {j[0] for j in methods} >= {"method=kasa", "method=soma", "method=salt", "method=sst"}
    ortho = sweep_jobs(compose_sweep("+sweep=ortho_modes", "experiment=mini"))
    assert sorted(j[1] for j in ortho) == [
        "+ortho=decoupled",
        "+ortho=loss",
        "+ortho=none",
        "+ortho=reference",
    ]


def test_methods_study_is_its_own_experiment_at_the_scale_protocol():
    """make methods-study: mini's or small's protocol and rates, runs and report apart from the claims'."""
    for scale, seeds in (("mini", "0,1,2"), ("small", "0")):
        exp, steps = replicate_stages(
            f"{scale}_methods", None, [], {"results": "r", "out": "o", "reference": "f"}, False
        )
        assert (
            exp == f"{scale}_methods" and "+sweep=methods" in steps[0][1] and f"seed={seeds}" in steps[0][1]
        )
        study = compose_sweep("experiment=" + exp, "method=kasa")
        claims = compose_sweep(f"experiment={scale}", "method=kasa")
        assert study.experiment_name == exp
        for key in ("data", "method", "evaluate"):
            assert study[key] == claims[key]
        assert study.train.lr_multiplier == claims.train.lr_multiplier


def small_lr_grid():
    """The overrides that replicate's small_lr stage adds to the study sweep: its own grid."""
    _, steps = replicate_stages("small_lr", None, [], {"results": "r", "out": "o", "reference": "f"}, False)
    return [a for a in steps[0][1] if a.startswith("train.lr_multiplier=")]


@pytest.mark.parametrize(
    "ortho,mode,gamma,run_name",
    [
        ("reference", "reference", 4e-4, "sorsa-r16-s0"),
        ("decoupled", "decoupled", 4e-4, "sorsa-decoupled-r16-s0"),
        ("loss", "loss", 4e-4, "sorsa-loss-r16-s0"),
        ("none", "reference", 0.0, "sorsa-gamma0-r16-s0"),
    ],
)
def test_ortho_variants_get_their_own_run_folders(ortho, mode, gamma, run_name):
    cfg = compose_sweep("experiment=mini", "method=sorsa", f"+ortho={ortho}")
    assert (cfg.method.ortho_mode, cfg.method.gamma, cfg.run_name.rsplit("-", 1)[0]) == (
        mode,
        gamma,
        run_name,
    )


def test_slurm_launcher_preset_composes():
    cfg = compose_sweep("+sweep=paper_table", "experiment=paper_llama2_7b", "hydra/launcher=slurm")
    assert "submitit" in cfg.hydra.launcher._target_.lower() and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.slow
def test_invalid_sweep_fails_before_its_first_job(tmp_path):
    proc = train("+sweep=ranks", "method=sorsa,bogus", "method.rank=8,200", f"results_dir={tmp_path}", *TINY)
    assert proc.returncode != 0
    assert "3 of 4 sweep jobs are invalid; nothing was run" in proc.stderr
    assert (
        "method=bogus: no such option in conf/method/" in proc.stderr and "rank 200 is larger" in proc.stderr
    )
    assert not (tmp_path / "mini").exists()


@pytest.mark.slow
def test_sweep_trains_evaluates_reports_and_skips_finished_jobs(tmp_path):
    args = [
        "+sweep=paper_table",
        "method=lora,sorsa",
        "seed=0",
        f"results_dir={tmp_path}",
        *TINY,
        "method.rank=4",
        "evaluate.benchmarks=[synthetic]",
        "evaluate.limit=3",
        "evaluate.max_new_tokens=8",
        "evaluate.backend=hf",
    ]
    proc = train(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "mini").iterdir() if p.is_dir())
    assert [r.rsplit("-", 1)[0] for r in runs] == ["lora-r4-s0", "sorsa-r4-s0"]
    for run in runs:
        result = json.loads((tmp_path / "mini" / run / "result.json").read_text())
        assert result["train"]["status"] == "finished"
        assert result["eval"]["synthetic"]["n"] == 3
        assert (tmp_path / "mini" / run / "predictions" / "synthetic.jsonl").exists()
    stamps = {run: (tmp_path / "mini" / run / "metrics.csv").stat().st_mtime_ns for run in runs}
    results = {run: (tmp_path / "mini" / run / "result.json").read_bytes() for run in runs}
    for run in runs:  # as in a clean clone of committed runs: the merged export is git-ignored
        shutil.rmtree(tmp_path / "mini" / run / "merged")
    again = train(*args)  # the same sweep again: both jobs are finished, nothing is retrained or re-evaluated
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished training" in again.stderr + again.stdout
    assert "already evaluated with these settings" in again.stderr + again.stdout
    assert stamps == {run: (tmp_path / "mini" / run / "metrics.csv").stat().st_mtime_ns for run in runs}
    assert results == {run: (tmp_path / "mini" / run / "result.json").read_bytes() for run in runs}


def test_replicate_rejects_an_unknown_scale(capsys):
    with pytest.raises(SystemExit) as exit_info:
        replicate_main(["scale=huge"])
    assert exit_info.value.code == 2
    assert "scale='huge'" in capsys.readouterr().err


def test_replicate_never_writes_the_committed_reference(capsys):
    assert replicate_main(["scale=mini", "results_dir=reference_runs"]) == 2
    assert "committed reference" in capsys.readouterr().err
    assert replicate_main(["scale=mini", "out_dir=paper_tables"]) == 2
    assert replicate_main(["scale=mini", f"out_dir={ROOT / 'paper_tables' / 'mini'}"]) == 2


def test_sweep_with_a_failed_job_exits_non_zero_and_names_it(tmp_path):
    args = ["+sweep=paper_table", "method=lora,sorsa", "seed=0", f"results_dir={tmp_path}", *TINY,
            "method.rank=4", "evaluate.benchmarks=[]"]  # fmt: skip
    # a job that fails at run time (after validation): here SORSA's, through an injected error
    code = (
        "import sys, sorsa_repro.training.task as t\n"
        "orig = t._fit_and_export\n"
        "def fit(run, before):\n"
        "    if run.method.name == 'sorsa': raise RuntimeError('injected failure')\n"
        "    return orig(run, before)\n"
        "t._fit_and_export = fit\n"
        "from sorsa_repro.train import main\n"
        "sys.argv = ['train', *sys.argv[1:]]\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode != 0
    assert "1 of 2 sweep jobs failed" in proc.stderr and "injected failure" in proc.stderr
    statuses = {p.name.split("-")[0]: json.loads((p / "result.json").read_text())["train"]["status"]
                for p in (tmp_path / "mini").iterdir()}  # fmt: skip
    assert statuses == {"lora": "finished", "sorsa": "failed"}


@pytest.mark.slow
def test_sweep_validation_works_from_an_empty_model_cache(tmp_path):
    """The offline model is materialised by the pre-flight check itself (it once failed on a cold cache)."""
    env = {**os.environ, "SORSA_CACHE_DIR": str(tmp_path / "cache")}
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from sorsa_repro.training.validate import validate_config\n"
        f"with initialize_config_dir(config_dir={CONF!r}, version_base='1.3'):\n"
        "    cfg = compose(config_name='train', overrides=['experiment=mini', 'method=sorsa'])\n"
        "validate_config(cfg)\n"
        "print('valid')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stderr[-3000:]
    assert (tmp_path / "cache" / "models" / "smollm2-135m-instruct" / "config.json").exists()


@pytest.mark.parametrize("experiment", ["mini", "small"])
def test_the_methods_sweep_runs_every_method_and_each_job_validates(experiment, tmp_path):
    from sorsa_repro.methods.config import METHODS
    from sorsa_repro.training.validate import validate_config

    jobs = sweep_jobs(compose_sweep("+sweep=methods", f"experiment={experiment}", "seed=0"))
    assert sorted(j[0].removeprefix("method=") for j in jobs) == sorted(set(METHODS) - {"peft"})
    for job in jobs:  # what the sweep's pre-flight check does for each job: no model weights load
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*job, f"results_dir={tmp_path}"])
        validate_config(cfg)


@pytest.mark.slow
def test_the_methods_sweep_runs_all_sixteen_methods_and_the_base_model_end_to_end(tmp_path):
    """`+sweep=methods` on the tiny model, one seed: every method trains, exports and is evaluated (3 problems)."""
    from sorsa_repro.method_registry import REGISTRY

    args = ["+sweep=methods", "seed=0", f"results_dir={tmp_path}", *TINY, "method.rank=4",
            "evaluate.benchmarks=[synthetic]", "evaluate.limit=2", "evaluate.max_new_tokens=4", "evaluate.backend=hf"]  # fmt: skip
    proc = train(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {p.name.split("-r")[0]: p for p in (tmp_path / "mini").iterdir() if p.is_dir()}
    assert sorted(runs) == sorted(set(REGISTRY) - {"peft"}) and len(runs) == 17
    for method, run in runs.items():
        result = json.loads((run / "result.json").read_text())
        assert result["train"]["status"] == "finished", method
        assert result["eval"]["synthetic"]["n"] == 2, method
        assert (run / "merged" / "config.json").exists(), method
        assert (run / "adapter").exists() == (REGISTRY[method].adapter is not None), method
        assert (run / "adapter_lora").exists() == REGISTRY[method].lora_export, method
