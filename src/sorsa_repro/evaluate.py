"""Evaluation entry point: ``python -m sorsa_repro.evaluate run=<run folder>`` or ``sorsa-evaluate``.

Examples::

    python -m sorsa_repro.evaluate run=results/mini/sorsa-r8-s0 benchmarks=[synthetic]
    python -m sorsa_repro.evaluate model=smollm2-135m-instruct benchmarks=[gsm8k] limit=200 backend=hf
    python -m sorsa_repro.evaluate model=llama2_7b benchmarks=[gsm8k,math500] max_new_tokens.gsm8k=512

``model=`` takes an option of the conf/model group (as training does: ``smollm2_135m``, ``llama2_7b``,
whose dtype then applies), a local folder, a hub id or ``smollm2-135m-instruct``.
Options: conf/eval.yaml (their defaults and meaning; ``sorsa_repro.evaluation.config.EvalConfig`` checks them).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from sorsa_repro.layout import CONF_DIR

USAGE = (
    "usage: sorsa-evaluate run=<run folder> | model=<conf/model option, folder, hub id or smollm2-135m-instruct> "
    "[adapter=<folder>] [benchmarks=[gsm8k,math]] [limit=N] [backend=hf|vllm] [key=value ...]  "
    "(--help: every option)"
)
# options that are null by default (or one int): a key per benchmark (max_new_tokens.gsm8k=512) adds to them
PER_BENCHMARK_KEYS = ("max_new_tokens", "limit")


def model_override(arg: str) -> str:
    """``model=<x>`` for a model that is not a conf/model option becomes ``+model.name=<x>``.

    Hydra reads ``model=`` as a choice from the conf/model group (the training's), and would reject a
    folder or a hub id there.
    """
    key, _, value = arg.partition("=")
    if key != "model" or not value or "," in value or (CONF_DIR / "model" / f"{value}.yaml").is_file():
        return arg
    return f"+model.name={value}"


def per_benchmark_override(arg: str) -> str:
    """``max_new_tokens.gsm8k=512`` (or ``limit.math=100``) becomes ``+max_new_tokens.gsm8k=512``: the option is
    null in conf/eval.yaml, and Hydra adds a key below a null value only with ``+``."""
    key = arg.partition("=")[0]
    return f"+{arg}" if key.partition(".")[0] in PER_BENCHMARK_KEYS and "." in key else arg


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    import traceback

    from sorsa_repro.cli_errors import UsageExit, one_line
    from sorsa_repro.console import configure_console, hydra_verbose
    from sorsa_repro.evaluation.run import check_evaluation, evaluate  # after cpu_threads: imports torch
    from sorsa_repro.evaluation.summary import score_table

    configure_console(hydra_verbose())
    try:  # what fails before a model loads is a usage error: one line (sorsa_repro.cli_errors)
        eval_cfg = check_evaluation(OmegaConf.to_container(cfg, resolve=True))
    except Exception as err:
        raise UsageExit(one_line(err), err) from err
    try:
        scores = evaluate(eval_cfg)
    except Exception:  # a failure after the start: its traceback, once
        traceback.print_exc()
        raise SystemExit(1) from None
    if eval_cfg.run is not None:
        from sorsa_repro.train import after_evaluation

        after_evaluation(eval_cfg.run)  # its model cards and its W&B run get the new scores
    print(score_table(scores), flush=True)


def main() -> None:
    from sorsa_repro import cpu_threads
    from sorsa_repro.cli_errors import USAGE_EXIT_CODE, report, run_entry_point
    from sorsa_repro.signals import exit_on_sigterm

    if len(sys.argv) == 1:
        report("sorsa-evaluate", "give run=<run folder> or model=<...> to evaluate", usage=USAGE)
        raise SystemExit(USAGE_EXIT_CODE)
    cpu_threads.configure()
    exit_on_sigterm()
    sys.argv = [sys.argv[0], *(per_benchmark_override(model_override(a)) for a in sys.argv[1:])]
    run_entry_point("sorsa-evaluate", "eval", _main)


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this module
    main()
