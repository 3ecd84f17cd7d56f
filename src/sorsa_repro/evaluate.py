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


def model_override(arg: str) -> str:
    """``model=<x>`` for a model that is not a conf/model option becomes ``+model.name=<x>``.

    Hydra reads ``model=`` as a choice from the conf/model group (the training's), and would reject a
    folder or a hub id there.
    """
    key, _, value = arg.partition("=")
    if key != "model" or not value or "," in value or (CONF_DIR / "model" / f"{value}.yaml").is_file():
        return arg
    return f"+model.name={value}"


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from sorsa_repro.console import configure_console, hydra_verbose
    from sorsa_repro.evaluation.run import evaluate  # after cpu_threads.configure(): it imports torch
    from sorsa_repro.evaluation.summary import score_table

    configure_console(hydra_verbose())
    print(score_table(evaluate(OmegaConf.to_container(cfg, resolve=True))), flush=True)


def main() -> None:
    from sorsa_repro import cpu_threads
    from sorsa_repro.signals import exit_on_sigterm

    cpu_threads.configure()
    exit_on_sigterm()
    sys.argv = [sys.argv[0], *(model_override(a) for a in sys.argv[1:])]
    _main()


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this module
    main()
