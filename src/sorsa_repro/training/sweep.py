"""Checks a whole sweep before its first job runs (a Hydra callback, set in conf/train.yaml)."""

from __future__ import annotations

import logging

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper will expand them."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def validate_sweep(config: DictConfig, config_name: str = "train") -> int:
    """Compose and validate every job's config; raise one ValueError listing all bad jobs."""
    from sorsa_repro.training.task import validate_config

    jobs = sweep_jobs(config)
    problems = []
    for job in jobs:
        try:
            validate_config(compose(config_name=config_name, overrides=job))
        except Exception as err:  # unknown config option, impossible rank, ...
            problems.append(f"  {' '.join(job)}\n    -> {type(err).__name__}: {str(err).splitlines()[0]}")
    if problems:
        raise ValueError(
            f"{len(problems)} of {len(jobs)} sweep jobs are invalid; nothing was run:\n" + "\n".join(problems)
        )
    return len(jobs)


class ValidateSweep(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            count = validate_sweep(config, kwargs.get("config_name") or "train")
        except ValueError as err:
            # Hydra turns a callback's Exception into a warning and goes on; SystemExit stops the sweep
            raise SystemExit(f"error: {err}") from None
        log.info("sweep: %d jobs validated", count)
