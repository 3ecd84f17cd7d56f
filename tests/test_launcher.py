"""Scaling configs that agree: the SLURM launcher asks for what the trainer uses, or the sweep stops before
submitting; `--cfg job --resolve` shows a config with every value resolved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sorsa_repro.training.launcher import check_launcher, device_count

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    cfg.hydra.overrides.task = list(overrides)
    return cfg


@pytest.mark.parametrize(
    ("trainer", "nodes", "gpus", "tasks"),
    [
        (["trainer=ddp", "trainer.devices=8"], 1, 8, 8),  # was gpus_per_node 1, tasks_per_node 1
        (["trainer=fsdp", "trainer.devices=4", "trainer.num_nodes=2"], 2, 4, 4),
        (["trainer=gpu"], 1, 1, 1),
        (["trainer=cpu"], 1, 0, 1),
    ],
)
def test_the_slurm_launcher_asks_for_the_trainers_devices(trainer, nodes, gpus, tasks):
    cfg = compose_with_hydra(
        "experiment=paper_llama2_7b", "hydra/launcher=slurm", "train.global_batch_size=128", *trainer
    )
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (nodes, gpus, tasks)
    check_launcher(cfg, cfg)  # agrees


def test_a_launcher_that_disagrees_with_the_trainer_is_refused_before_submitting(tmp_path):
    from sorsa_repro.training.sweep import validate_sweep

    overrides = ["experiment=mini", "model=tiny_random", "method=lora", "hydra/launcher=slurm",
                 "hydra.launcher.gpus_per_node=1", "hydra.launcher.tasks_per_node=1", "trainer=ddp",
                 "trainer.devices=2", "train.global_batch_size=4", f"results_dir={tmp_path}"]  # fmt: skip
    cfg = compose_with_hydra(*overrides)
    with pytest.raises(ValueError, match=r"hydra.launcher.gpus_per_node=1 \(the trainer needs 2\)"):
        check_launcher(cfg, cfg)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"), pytest.raises(ValueError) as err:
        validate_sweep(cfg)
    assert "1 of 1 sweep jobs are invalid" in str(err.value) and "tasks_per_node=1" in str(err.value)


def test_device_counts():
    assert [device_count(d) for d in (8, "4", [0, 1], "auto", -1)] == [8, 4, 2, None, None]


@pytest.mark.slow
def test_cfg_job_resolve_shows_every_value_resolved():
    readme = (ROOT / "README.md").read_text()
    assert "--cfg job --resolve" in readme and "--cfg job " not in readme.replace("--cfg job --resolve", "")
    env = {**os.environ, "SORSA_VERBOSE": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "sorsa_repro.train", "experiment=paper_llama2_7b", "method=sorsa", "--cfg", "job",
         "--resolve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "${" not in proc.stdout and "run_name: sorsa-r128-s42-" in proc.stdout
    assert "accumulate: 64" in proc.stdout  # 128 sequences = 2 per micro-batch x 64 on one device
