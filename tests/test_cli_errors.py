"""A command that cannot run ends in one line, printed once, exit code 2, with the closest valid key or option
(sorsa_repro/cli_errors.py); the traceback only under SORSA_VERBOSE=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sorsa_repro.cli_errors import known_key_tree, one_line, unknown_key_message

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    environ = {**os.environ, "SORSA_VERBOSE": "0", **(env or {})}
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout
    )


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


# ---- Hydra's composition errors: before anything imports torch


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # the usual typo: no '+', a key one letter off. Hydra's own advice was to add '+'
        (
            ["train.max_step=4"],
            "sorsa-train: error: unknown config key train.max_step (did you mean train.max_steps?)",
        ),
        (["method=sorsaa"], "sorsa-train: error: method=sorsaa: no such option in conf/method/ (did you mean method=sorsa?)"),
        (["experiment=minii"], "sorsa-train: error: experiment=minii: no such option in conf/experiment/ (did you mean experiment=mini?)"),
        (
            ["evaluate.benchmark=[gsm8k]"],
            "sorsa-train: error: unknown config key evaluate.benchmark (did you mean evaluate.benchmarks?)",
        ),
        (["trainer.device=2"], "sorsa-train: error: unknown config key trainer.device (did you mean trainer.devices?)"),
    ],
)  # fmt: skip
def test_a_mistyped_training_command_ends_in_one_line_with_the_closest_valid_choice(tmp_path, args, expected):
    proc = run("-m", "sorsa_repro.train", "experiment=mini", *args, f"results_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = lines(proc)  # one line, printed once: no traceback, no Hydra advice
    assert line.startswith(expected), line
    assert list(tmp_path.iterdir()) == []


def test_sorsa_evaluate_without_arguments_prints_its_usage_and_exits_2():
    proc = run("-m", "sorsa_repro.evaluate")
    assert proc.returncode == 2
    usage, error = lines(proc)
    assert usage.startswith("usage: sorsa-evaluate run=<run folder> | model=")
    assert error == "sorsa-evaluate: error: give run=<run folder> or model=<...> to evaluate"


def test_the_help_example_max_new_tokens_per_benchmark_composes():
    """``sorsa-evaluate --help`` shows ``max_new_tokens.gsm8k=512``: it failed ("Key 'gsm8k' is not in struct")."""
    help_text = run("-m", "sorsa_repro.evaluate", "--help").stdout
    assert "max_new_tokens.gsm8k=512" in help_text
    proc = run(
        "-m", "sorsa_repro.evaluate", "model=llama2_7b", "benchmarks=[gsm8k,math500]",
        "max_new_tokens.gsm8k=512", "limit.math500=20", "--cfg", "job",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_new_tokens:\n  gsm8k: 512" in proc.stdout and "limit:\n  math500: 20" in proc.stdout


def test_a_mistyped_evaluation_option_ends_in_one_line(tmp_path):
    proc = run("-m", "sorsa_repro.evaluate", "model=smollm2-135m-instruct", "benchmark=[gsm8k]")
    assert proc.returncode == 2
    assert lines(proc) == [
        "sorsa-evaluate: error: unknown config key benchmark (did you mean benchmarks?): no file under conf/ "
        "defines it"
    ]


# ---- errors of the composed config: the run never started


@pytest.mark.slow
def test_a_validation_error_is_one_line_and_no_run_is_logged_as_failed(tmp_path):
    proc = run("-m", "sorsa_repro.train", "experiment=mini", "+train.max_step=4", f"results_dir={tmp_path}")
    assert proc.returncode == 2
    assert lines(proc) == [
        "sorsa-train: error: unknown config key train.max_step (did you mean train.max_steps?): no file under "
        "conf/ defines it"
    ]  # before: the traceback twice (37 lines) and "run ... failed" for a run that never started
    verbose = run(
        "-m", "sorsa_repro.train", "experiment=mini", "train.precision=fp64", f"results_dir={tmp_path}",
        env={"SORSA_VERBOSE": "1"},
    )  # fmt: skip
    assert verbose.returncode == 2
    assert verbose.stderr.count("Traceback (most recent call last)") == 1
    error = "sorsa-train: error: train.precision='fp64'; use one of ['fp32', 'bf16-mixed', 'reference', 'bf16-true']"
    assert verbose.stderr.splitlines().count(error) == 1  # (torch's own verbose lines may follow at exit)
    assert "failed" not in verbose.stderr
    assert not (tmp_path / "mini").exists()


@pytest.mark.slow
def test_a_missing_run_folder_for_sorsa_evaluate_is_one_line(tmp_path):
    proc = run("-m", "sorsa_repro.evaluate", f"run={tmp_path / 'nope'}", "benchmarks=[synthetic]")
    assert proc.returncode == 2
    assert lines(proc) == [f"sorsa-evaluate: error: run folder {tmp_path / 'nope'} does not exist"]


# ---- the messages themselves


def test_unknown_key_messages_name_the_closest_key_at_any_depth():
    tree = known_key_tree("train")
    assert unknown_key_message("train.max_step", tree).startswith(
        "unknown config key train.max_step (did you mean train.max_steps?)"
    )
    assert unknown_key_message("trian.max_steps", tree).startswith(
        "unknown config key trian.max_steps (did you mean train.max_steps?)"
    )
    assert unknown_key_message("method.rnak", tree).startswith(
        "unknown config key method.rnak (did you mean method.rank?)"
    )
    assert "(did you mean" not in unknown_key_message("train.zzzzzz", tree)
    # below a key that holds one value: what to do instead
    assert "set evaluate.limit whole" in unknown_key_message("evaluate.limit.gsm8k", tree)
    assert unknown_key_message("max_new_token", known_key_tree("eval")).startswith(
        "unknown config key max_new_token (did you mean max_new_tokens?)"
    )


def test_one_line_drops_omegaconf_location_lines_and_keeps_the_type_of_unexpected_errors():
    from omegaconf.errors import MissingMandatoryValue

    err = MissingMandatoryValue(
        "Missing mandatory value: method.config\n    full_key: method.config\n    object_type=dict"
    )
    assert one_line(err) == "Missing mandatory value: method.config"
    assert one_line(ValueError("a\nb")) == "a b"
    assert one_line(RuntimeError("boom")) == "RuntimeError: boom"
