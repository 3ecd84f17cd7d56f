"""Train one run: ``python -m sorsa_repro.train experiment=mini method=sorsa seed=0`` (or ``sorsa-train``).

Multirun sweeps (``-m``, or a sweep file in conf/sweep/) train and then evaluate every job; a job
that fails records its error in its run folder and the sweep goes on.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger("sorsa_repro.train")


def run_job(cfg: DictConfig) -> Path | None:
    """Train, then evaluate when ``evaluate.benchmarks`` is set. Errors are written to the run folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sorsa_repro.results import atomic_write_text, update_result
    from sorsa_repro.training.distributed import is_global_zero, release_process_group
    from sorsa_repro.training.task import run_training

    run_dir = Path(cfg.run_dir)
    try:
        run_training(cfg)
        release_process_group()  # multi-GPU training is over; evaluation is one process on one GPU
        if cfg.evaluate.benchmarks and is_global_zero():
            from sorsa_repro.evaluation.run import evaluate_after_training

            evaluate_after_training(run_dir, cfg)
        return run_dir
    except Exception as err:
        log.exception("run %s failed", run_dir)
        if run_dir.exists():
            atomic_write_text(run_dir / "error.txt", traceback.format_exc())
            update_result(run_dir, {"train": {"status": "failed", "error": f"{type(err).__name__}: {err}"}})
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if not multirun:
            raise
        return None  # one failed job must not end the sweep


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    main()
