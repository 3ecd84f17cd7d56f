"""method=peft: the run's rank is its config file's r, whatever the experiment's method.rank; the example
configs in configs/peft/ train and merge."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sorsa_repro.methods import DEFAULT_TARGETS, apply_method, count_parameters, merge_model
from sorsa_repro.methods.peft_methods import peft_rank
from sorsa_repro.training.derived import apply_derived_settings

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
EXAMPLES = ROOT / "configs" / "peft"
SHIPPED = sorted(p.name for p in EXAMPLES.iterdir() if (p / "adapter_config.json").is_file())


def compose_train(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)
    if hydra:
        cfg.hydra.overrides.task = list(overrides)
    return cfg


def test_the_documented_example_configs_exist():
    docs = [ROOT / "README.md", EXAMPLES / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paths = [p for doc in docs for p in re.findall(r"method\.config=([\w./-]+)", doc.read_text())]
    assert "configs/peft/vera_r64" in " ".join(paths)  # the README's example (it named a missing file)
    assert all((ROOT / p).exists() for p in paths), paths


@pytest.mark.parametrize("name", SHIPPED)
def test_a_peft_run_is_named_after_its_config_files_rank_not_the_experiments(name):
    config = EXAMPLES / name
    cfg = compose_train("experiment=mini", "method=peft", f"method.config={config}")
    assert cfg.method.rank == 16  # what the mini experiment sets for the built-in methods
    notes = apply_derived_settings(cfg)
    rank = peft_rank(config)
    assert cfg.method.rank == rank and Path(cfg.run_dir).name.startswith(f"peft-r{rank}-s0-")
    assert notes and f"rank {rank}" in notes[0]
    # two files of different rank never share a folder; a built-in method's folder and hash do not move
    assert apply_derived_settings(cfg) == []  # idempotent
    sorsa = compose_train("experiment=mini", "method=sorsa")
    before = (str(sorsa.run_dir), dict(sorsa.method))
    assert apply_derived_settings(sorsa) == [] and (str(sorsa.run_dir), dict(sorsa.method)) == before


def test_a_peft_sweep_validates_with_the_files_rank(tmp_path):
    from sorsa_repro.training.sweep import validate_sweep

    overrides = ["experiment=mini", "method=peft", f"method.config={EXAMPLES / 'vera_r64'}", "model=tiny_random",
                 f"results_dir={tmp_path}"]  # fmt: skip
    cfg = compose_train(*overrides, hydra=True)
    cfg.hydra.overrides.task = [*overrides, "seed=0,1"]  # as `sorsa-train -m ... seed=0,1` gives it
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):  # the sweep callback composes each job
        jobs = validate_sweep(cfg)
    assert [Path(c.run_dir).name.split("-")[:3] for _, c in jobs] == [
        ["peft", "r64", "s0"],
        ["peft", "r64", "s1"],
    ]


@pytest.mark.slow
def test_a_peft_config_run_at_experiment_mini_records_the_files_rank(tmp_path):
    """The issue's case: experiment=mini method=peft method.config=<LoRA r=8> landed in peft-r16-... with
    run.rank 16 in result.json, which the tables group on."""
    from sorsa_repro.train import run_job

    cfg = compose_train(
        "experiment=mini", "model=tiny_random", "method=peft", f"method.config={EXAMPLES / 'lora_r8'}",
        "data.limit=8", "data.max_length=96", "train.batch_size=2", "train.global_batch_size=4",
        "train.max_steps=1", "train.spectral_every=0", "train.export_merged=false", "evaluate.benchmarks=[]",
        f"results_dir={tmp_path}",
    )  # fmt: skip
    assert run_job(cfg)["status"] == "ok"
    (run_dir,) = (tmp_path / "mini").iterdir()
    assert run_dir.name.startswith("peft-r8-s0-")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["run"]["rank"] == 8 and result["run"]["peft_config"] == "lora_r8"
    assert "rank: 8" in (run_dir / "config.yaml").read_text()
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8


@pytest.mark.parametrize("name", SHIPPED)
def test_every_example_config_trains_and_merges(
    name, tiny_model_factory, tiny_input_ids, single_torch_thread
):
    config = EXAMPLES / name
    model = apply_method(
        tiny_model_factory(),
        {
            "name": "peft",
            "config": str(config),
            "rank": peft_rank(config),
            "target_modules": list(DEFAULT_TARGETS),
        },
    )
    trainable, _ = count_parameters(model)
    assert trainable > 0
    with torch.no_grad():  # a trained adapter: not the identity
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        unmerged = model(tiny_input_ids).logits
        merged = merge_model(copy.deepcopy(model))(tiny_input_ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4)


@pytest.mark.slow
def test_the_trainable_counts_the_examples_readme_states(offline_model_dir):
    """configs/peft/README.md's table, at SmolLM2-135M."""
    from sorsa_repro.models import load_base_model

    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\d,]+) \|$", (EXAMPLES / "README.md").read_text(), re.M)
    assert sorted(name for name, _ in rows) == SHIPPED
    base, _ = load_base_model("smollm2-135m-instruct")
    for name, stated in rows:
        config = EXAMPLES / name
        model = apply_method(
            copy.deepcopy(base),
            {
                "name": "peft",
                "config": str(config),
                "rank": peft_rank(config),
                "target_modules": list(DEFAULT_TARGETS),
            },
        )
        assert count_parameters(model)[0] == int(stated.replace(",", "")), name
