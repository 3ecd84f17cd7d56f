"""What a user meets at the command line: --help of each entry point, unknown keys, console output, the
closing summaries, evaluation of a model with an adapter."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sorsa_repro.cli_args import KeyValueCli
from sorsa_repro.evaluation.summary import score_table
from sorsa_repro.training.known_keys import check_known_keys

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def run(*cmd: str, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *cmd], cwd=cwd or ROOT, env={**os.environ, **(env or {})}, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


# ---- --help and missing arguments


@pytest.mark.parametrize(
    ("module", "expected", "absent"),
    [
        (
            "sorsa_repro.train",
            ["sorsa-train experiment=mini", "data=custom", "peft, pissa, salt, soma, sorsa, sst, svfit"],
            [],
        ),
        # evaluation takes no training groups: its help must not offer them
        ("sorsa_repro.evaluate", ["adapter=", "benchmarks:", "Wilson"], ["arm:", "sweep:", "trainer:"]),
        ("sorsa_repro.replicate", ["scale", "update_reference", "Hydra overrides"], ["=== sweep"]),
        ("sorsa_repro.reporting.cli", ["verdict", "experiment", "reference_runs"], []),
        ("sorsa_repro.reporting.wandb_report", ["entity", "project", "loss_key"], []),
    ],
)
def test_every_entry_point_has_a_help_that_exits_zero_and_runs_nothing(tmp_path, module, expected, absent):
    proc = run("-m", module, "--help", cwd=tmp_path)  # from outside the checkout
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout[:3000])
    for text in absent:
        assert text not in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written: no outputs/, results/ or report


@pytest.mark.parametrize("script", ["sorsa-train", "sorsa-evaluate", "sorsa-report"])
def test_console_scripts_work_from_outside_the_checkout(tmp_path, script):
    """The installed entry points (pyproject [project.scripts]) find their configs from any directory."""
    path = Path(sys.executable).parent / script
    if not path.exists():
        pytest.fail(f"{path} is missing: install the package (make install)")
    proc = subprocess.run([str(path), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert script in proc.stdout and "Primary config module" not in proc.stderr + proc.stdout


def test_key_value_cli_rejects_unknown_and_malformed_arguments(capsys):
    cli = KeyValueCli("prog", "does things", {"experiment": "the experiment"}, commands={"go": "go"})
    assert cli.parse(["go", "experiment=mini"]) == ("go", {"experiment": "mini"}, [])
    for argv in (["go", "experimnt=mini"], ["go", "experiment"], ["stop"], []):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse(argv)
        assert exit_info.value.code == 2
        assert "usage: prog {go} [key=value ...]" in capsys.readouterr().err
    passing = KeyValueCli("prog", "", {"scale": ""}, passthrough="Hydra overrides")
    assert passing.parse(["scale=mini", "trainer=gpu", "+x=1"]) == (
        None,
        {"scale": "mini"},
        ["trainer=gpu", "+x=1"],
    )


def test_make_eval_without_a_run_says_what_to_give():
    proc = subprocess.run(["make", "-s", "eval"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "RUN=<run folder>" in proc.stdout + proc.stderr


# ---- unknown keys


def compose_train(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+train.max_step=4", "unknown config key train.max_step (did you mean train.max_steps?)"),
        ("+data.fieldz=1", "unknown config key data.fieldz (did you mean data.fields?)"),
        ("+trainer.device=2", "unknown config key trainer.device (did you mean trainer.devices?)"),
        ("+experiment_nam=x", "unknown config key experiment_nam (did you mean experiment_name?)"),
    ],
)
def test_a_misspelled_key_fails_with_the_closest_known_one(override, message):
    with pytest.raises(ValueError) as err:
        check_known_keys(compose_train("experiment=mini", override))
    assert message in str(err.value)


@pytest.mark.parametrize("experiment", ["smoke", "mini", "small", "paper_llama2_7b", "paper_gemma_7b"])
@pytest.mark.parametrize(
    "extra", [[], ["+sweep=claims"], ["trainer=ddp", "logger=wandb", "data=custom", "data.path=x.jsonl"]]
)
def test_every_shipped_config_passes_the_key_check(experiment, extra):
    check_known_keys(compose_train(f"experiment={experiment}", *extra))


# ---- console output and closing summaries


def test_score_table_gives_accuracy_counts_and_wilson_intervals():
    evals = {"gsm8k": {"n": 10, "scores": {"numeric": {"n_strict": 0, "n_flexible": 10}}}}
    assert score_table(evals).splitlines() == [
        "| benchmark | grader | extraction | accuracy | k/n | 95% CI (Wilson) |",
        "|:--|:--|:--|--:|--:|--:|",
        "| gsm8k | numeric | strict | 0.00% | 0/10 | [0.0, 27.8] |",
        "| gsm8k | numeric | flexible | 100.00% | 10/10 | [72.2, 100.0] |",
    ]


def test_lightning_logs_once_and_only_warnings_unless_verbose(monkeypatch):
    from sorsa_repro.console import VERBOSE_ENV, configure_console

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    for name in ("VLLM_LOGGING_LEVEL", "PYTHONWARNINGS", "TORCH_CPP_LOG_LEVEL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    configure_console(lightning=True)
    lightning = logging.getLogger("lightning.pytorch")
    assert lightning.handlers == [] and lightning.propagate  # printed by the root handler only: once
    assert lightning.getEffectiveLevel() == logging.WARNING and os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    monkeypatch.setenv(VERBOSE_ENV, "1")
    configure_console()
    assert lightning.getEffectiveLevel() == logging.INFO and os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
    monkeypatch.delenv(VERBOSE_ENV)
    configure_console()


@pytest.mark.slow
def test_a_training_run_prints_each_message_once_and_ends_on_its_summary(tmp_path):
    args = ["experiment=mini", "model=tiny_random", "method=lora", "method.rank=4", "data.limit=8",
            "data.max_length=96", "train.batch_size=2", "train.global_batch_size=4", "train.max_steps=2",
            "train.spectral_every=0", "evaluate.benchmarks=[synthetic]", "evaluate.limit=2",
            "evaluate.max_new_tokens=4", "evaluate.backend=hf", f"results_dir={tmp_path}"]  # fmt: skip
    proc = run("-m", "sorsa_repro.train", *args, env={"SORSA_VERBOSE": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    messages = [line.split(" - ", 1)[-1] for line in lines if " - " in line]
    assert len(messages) == len(set(messages)), messages  # no message printed twice
    assert not any("litlogger" in line or "LeafSpec" in line or "GPU available" in line for line in lines)
    (run_dir,) = (tmp_path / "mini").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    out = proc.stdout.strip().splitlines()
    first = next(i for i, line in enumerate(out) if line.startswith("run "))
    assert out[first] == (
        f"run {run_dir}: 2 steps, final loss {result['train']['final_loss']:.4f}, "
        f"training {result['train']['wall_time_s']:.0f} s"
    )
    assert (
        all(line.startswith("|") for line in out[first + 1 :]) and len(out) - first == 5
    )  # it ends the output
    assert out[-1].startswith("| synthetic | numeric | flexible |") and "/2 |" in out[-1]


# ---- evaluation of a base model with an adapter


@pytest.mark.slow
def test_evaluating_a_model_with_an_adapter_equals_evaluating_the_merged_run(tmp_path, single_torch_thread):
    from sorsa_repro.evaluation.run import evaluate
    from sorsa_repro.methods import apply_method, merge_model, save_adapter
    from sorsa_repro.models import TINY_MODEL, load_base_model

    model, tokenizer = load_base_model(TINY_MODEL)
    adapted = apply_method(model, {"name": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj"]})
    for name, param in adapted.named_parameters():
        if "lora_B" in name:  # a trained adapter: not the identity
            param.data.normal_(0, 0.05)
    save_adapter(adapted, tmp_path / "adapter")
    merged = merge_model(adapted)
    common = {
        "model": TINY_MODEL,
        "benchmarks": ["synthetic"],
        "limit": 3,
        "max_new_tokens": 6,
        "backend": "hf",
    }
    direct = evaluate({**common, "out_dir": str(tmp_path / "direct")}, model=merged, tokenizer=tokenizer)
    via = evaluate({**common, "adapter": str(tmp_path / "adapter"), "out_dir": str(tmp_path / "via")})

    def completions(folder):
        lines = (tmp_path / folder / "predictions" / "synthetic.jsonl").read_text().splitlines()
        return [json.loads(line)["completion"] for line in lines]

    assert completions("via") == completions("direct")
    assert via["synthetic"]["scores"] == direct["synthetic"]["scores"]
    assert via["synthetic"]["model"] == f"{TINY_MODEL} + adapter {tmp_path / 'adapter'}"
    with pytest.raises(ValueError, match="adapter= goes with model="):
        evaluate({"run": str(tmp_path), "adapter": str(tmp_path / "adapter"), "benchmarks": ["synthetic"]})
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        evaluate({**common, "adapter": str(tmp_path), "out_dir": str(tmp_path / "x")})


# ---- W&B: online when logged in, as W&B users expect


def test_wandb_logs_online_when_credentials_exist_and_offline_only_when_asked_or_without(tmp_path):
    from sorsa_repro.wandb_mode import logger_mode

    no_netrc = {"NETRC": str(tmp_path / "none")}
    assert logger_mode(None, {**no_netrc, "WANDB_API_KEY": "k"}) == ("online", "W&B credentials found")
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    assert logger_mode(None, {"NETRC": str(tmp_path / "netrc")})[0] == "online"  # after `wandb login`
    mode, why = logger_mode(None, no_netrc)
    assert mode == "offline" and "no W&B API key" in why
    assert logger_mode(None, {**no_netrc, "WANDB_API_KEY": "k", "WANDB_MODE": "offline"})[0] == "offline"
    assert logger_mode("disabled", {**no_netrc, "WANDB_API_KEY": "k"}) == ("disabled", "logger.mode")
