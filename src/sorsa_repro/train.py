"""Train one run: ``python -m sorsa_repro.train experiment=mini method=sorsa seed=0`` (or ``sorsa-train``).

A job validates its config and loads its data before it touches anything (a bad command writes nothing),
then claims its run folder (a lock: one process per folder), trains (or resumes, or skips a finished run)
and evaluates when ``evaluate.benchmarks`` is set. Training and evaluation record their own status in
result.json. Multirun sweeps (``-m``, or a sweep file in conf/sweep/) go on after a failed job and exit
non-zero at the end, listing the failed jobs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig

import sorsa_repro.training  # noqa: F401  (registers ${run_id:} before Hydra composes)
from sorsa_repro.console import configure_console, hydra_verbose
from sorsa_repro.layout import CONF_DIR
from sorsa_repro.signals import exit_on_sigterm

log = logging.getLogger("sorsa_repro.train")
LOG_FILE = "train.log"


def run_job(cfg: DictConfig) -> dict:
    """Train, then evaluate; returns ``{"run_dir", "status": "ok" | "failed", "error"}``.

    Outside a multirun every error is raised; in a multirun an Exception is logged and reported (the
    sweep goes on), while Ctrl-C and SIGTERM end the sweep.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sorsa_repro.training.distributed import is_global_zero, release_process_group
    from sorsa_repro.training.task import claim_run_folder, prepare_training, train_in_folder

    configure_console(hydra_verbose(), lightning=True)
    run_dir = Path(cfg.run_dir)
    try:
        prepared = prepare_training(cfg)  # validation and data: nothing is written when they fail
        with claim_run_folder(run_dir), _log_to(run_dir / LOG_FILE, is_global_zero()):
            train_in_folder(prepared)
            release_process_group()  # multi-GPU training is over; evaluation is one process on one GPU
            if cfg.evaluate.benchmarks and is_global_zero():
                from sorsa_repro.evaluation.run import evaluate_after_training

                evaluate_after_training(run_dir, cfg)
        if is_global_zero():
            print(run_summary(run_dir), flush=True)
        return {"run_dir": str(run_dir), "status": "ok", "error": None}
    except Exception as err:
        log.exception("run %s failed", run_dir)
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            discard_hydra_output()
            raise
        return {"run_dir": str(run_dir), "status": "failed", "error": f"{type(err).__name__}: {err}"}


def discard_hydra_output() -> None:
    """A single run that failed before it wrote anything of its own: remove the folder Hydra made for it
    (``<results_dir>/.hydra/<experiment>/<time>/``: Hydra's copy of the config and the job's log) and the
    folders above it that Hydra made (up to what existed before the command; else up to ``.hydra``). A
    rejected command leaves nothing behind."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    from sorsa_repro.training.sweep import EXISTED_BEFORE

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    if not out.is_dir() or ".hydra" not in out.parts:
        return
    own = {str(hydra_cfg.output_subdir or ""), f"{hydra_cfg.job.name}.log"}
    if any(p.name not in own for p in out.iterdir()):
        return  # something else was written there: keep it
    shutil.rmtree(out, ignore_errors=True)
    stop = EXISTED_BEFORE.get("results_dir")
    for folder in out.parents:
        if folder == stop:
            break
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            break
        if stop is None and folder.name == ".hydra":
            break


def run_summary(run_dir: Path) -> str:
    """What a training command ends on: the run folder, steps, final loss, time, and the scores if evaluated."""
    from sorsa_repro.evaluation.summary import score_table
    from sorsa_repro.results import load_result

    result = load_result(run_dir)
    train = result.get("train", {})
    loss = train.get("final_loss")
    lines = [
        f"run {run_dir}: {train.get('steps')} steps, final loss "
        f"{'–' if loss is None else f'{loss:.4f}'}, training {train.get('wall_time_s') or 0:.0f} s"
    ]
    if result.get("eval"):
        lines.append(score_table(result["eval"]))
    return "\n".join(lines)


@contextmanager
def _log_to(path: Path, enabled: bool = True):
    """Also write this process's log records into the run folder while the block runs."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> dict:
    return run_job(cfg)


def main() -> None:
    from sorsa_repro import cpu_threads

    cpu_threads.configure()  # before torch is imported: OpenMP reads the settings once
    exit_on_sigterm()
    _main()


if __name__ == "__main__":
    main()
