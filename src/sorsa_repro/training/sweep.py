"""A Hydra callback (set in conf/train.yaml) around every multirun sweep, and before a single run.

Before the first job: compose and validate every job's config (unknown method, impossible rank, bad
evaluation options, missing data, a run folder holding another config) and reject jobs that would share a
run folder; nothing runs unless all jobs are valid. After the last job: read each job's run folder, print
one line per job and exit non-zero, listing the failed jobs, when any job did not finish. Statuses are read
from the run folders, so this works for jobs launched on other machines (SLURM) too. A single run (no
``-m``) is validated the same way before Hydra creates its output folder: a rejected command writes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sorsa_repro.results import UnreadableResultError, load_result
from sorsa_repro.training.identity import untrained
from sorsa_repro.training.launcher import check_launcher

log = logging.getLogger(__name__)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper will expand them."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def validate_sweep(config: DictConfig, config_name: str = "train") -> list[tuple[list[str], DictConfig]]:
    """Compose and validate every job's config; raise one ValueError listing all bad jobs."""
    from sorsa_repro.cli_errors import describe
    from sorsa_repro.training.derived import apply_derived_settings
    from sorsa_repro.training.task import validate_config

    all_jobs = sweep_jobs(config)
    jobs, problems, folders = [], [], {}
    for job in all_jobs:
        try:
            cfg = compose(config_name=config_name, overrides=job)
            apply_derived_settings(cfg, job)  # as the job itself will (train.run_job)
            validate_config(cfg)
            check_launcher(config, cfg)
        except Exception as err:  # unknown config option, impossible rank, missing data, ...
            problems.append(f"  {' '.join(job)}\n    -> {describe(err, 'train')}")
            continue
        jobs.append((job, cfg))
        if not untrained(cfg):  # the base model's jobs are one run on purpose: later ones find it finished
            folders.setdefault(str(cfg.run_dir), []).append(" ".join(job))
    if problems:
        raise ValueError(
            f"{len(problems)} of {len(all_jobs)} sweep jobs are invalid; nothing was run:\n"
            + "\n".join(problems)
        )
    shared = [f"  {folder}: {' | '.join(users)}" for folder, users in folders.items() if len(users) > 1]
    if shared:
        raise ValueError(
            "sweep jobs would share a run folder (the same config twice); nothing was run:\n"
            + "\n".join(shared)
        )
    return jobs


def job_outcome(cfg: DictConfig) -> str:
    """ "ok", or what went wrong, from the job's run folder."""
    try:
        result = load_result(cfg.run_dir)
    except UnreadableResultError as err:
        return str(err)
    train = result.get("train", {})
    if train.get("status") != "finished":
        why = train.get("error") or "see the sweep's log"
        return f"training {train.get('status', 'not started')}: {why}"
    evaluation = result.get("evaluation", {})
    if cfg.evaluate.benchmarks and evaluation.get("status") != "finished":
        return (
            f"evaluation {evaluation.get('status', 'not started')}: {evaluation.get('error') or ''}".strip()
        )
    return "ok"


# a single run: the deepest folder at or above results_dir that existed before Hydra made its output folder in
# it; a run rejected after that (train.discard_hydra_output) removes what Hydra made below it
EXISTED_BEFORE: dict[str, Path] = {}


def deepest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    return next(p for p in (path, *path.parents) if p.exists())


class ValidateSweep(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        """A single run: validate its config before Hydra creates its output folder
        (``<results_dir>/.hydra/...``), so that a rejected command writes nothing at all."""
        from sorsa_repro.console import configure_console
        from sorsa_repro.training.task import validate_config

        configure_console(bool(config.hydra.get("verbose")))
        try:
            validate_config(config)
        except Exception as err:  # Hydra turns a callback's Exception into a warning; SystemExit stops
            from sorsa_repro.cli_errors import UsageExit, one_line

            raise UsageExit(one_line(err), err) from None  # one line, exit code 2 (run_entry_point)
        EXISTED_BEFORE["results_dir"] = deepest_existing(Path(str(config.results_dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            self.jobs = validate_sweep(config, kwargs.get("config_name") or "train")
        except ValueError as err:
            # Hydra turns a callback's Exception into a warning and goes on; SystemExit stops the sweep
            print(f"sorsa-train: error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        log.info("sweep: %d jobs validated", len(self.jobs))

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # the job's own error, when it ran in this process (errors before its folder existed are only here)
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and value.get("status") == "failed":
            self.errors = {**getattr(self, "errors", {}), value["run_dir"]: value["error"]}

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        errors = getattr(self, "errors", {})
        outcomes = []
        for job, cfg in self.jobs:
            outcome = job_outcome(cfg)
            if outcome != "ok" and str(cfg.run_dir) in errors:
                outcome = errors[str(cfg.run_dir)]
            outcomes.append((" ".join(job), Path(cfg.run_dir).name, outcome))
        failed = [o for o in outcomes if o[2] != "ok"]
        lines = [f"  {'ok' if why == 'ok' else 'FAILED'}  {name}" for _, name, why in outcomes]
        log.info(
            "sweep: %d of %d jobs finished\n%s", len(outcomes) - len(failed), len(outcomes), "\n".join(lines)
        )
        if failed:
            details = "\n".join(f"  {job}\n    -> {why}" for job, _, why in failed)
            raise SystemExit(f"error: {len(failed)} of {len(outcomes)} sweep jobs failed:\n{details}")
