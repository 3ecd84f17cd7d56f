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

    Outside a multirun every error is raised: one before the run started (validation, data, the run folder)
    marked ``cli_errors.NOT_STARTED`` and not logged (the command prints it as one line), a later one logged
    with its traceback and marked ``cli_errors.LOGGED``. In a multirun an Exception is logged and reported (the
    sweep goes on), while Ctrl-C and SIGTERM end the sweep.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sorsa_repro.cli_errors import LOGGED, NOT_STARTED, mark, one_line
    from sorsa_repro.training.derived import apply_derived_settings
    from sorsa_repro.training.distributed import is_global_zero, release_process_group
    from sorsa_repro.training.task import claim_run_folder, prepare_training, train_in_folder

    configure_console(hydra_verbose(), lightning=True)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    try:
        for note in apply_derived_settings(cfg, overrides):
            log.info(note)
        run_dir = Path(cfg.run_dir)
        if finished_training_only(cfg, run_dir):  # e.g. a study's base-model job after its first
            log.info("%s already finished training (config %s): nothing to do", run_dir, cfg.run_name)
            return {"run_dir": str(run_dir), "status": "ok", "error": None}
        prepared = prepare_training(cfg)  # validation and data: nothing is written when they fail
    except Exception as err:
        if not multirun:
            discard_hydra_output()  # a rejected command leaves nothing behind
            mark(err, NOT_STARTED)
            raise
        where = _safe_run_dir(cfg)
        log.error("run %s not started: %s", where, one_line(err))
        return {"run_dir": where, "status": "failed", "error": f"not started: {one_line(err)}"}
    if is_global_zero() and (note := data_note(cfg, prepared)):
        log.info(note)
    try:
        with claim_run_folder(run_dir), _log_to(run_dir / LOG_FILE, is_global_zero()):
            train_in_folder(prepared)
            if is_global_zero():
                from sorsa_repro.model_cards import write_model_cards

                write_model_cards(run_dir)  # (again with the scores after the evaluation)
            release_process_group()  # multi-GPU training is over; evaluation is one process on one GPU
            if cfg.evaluate.benchmarks and is_global_zero():
                from sorsa_repro.evaluation.run import evaluate_after_training

                evaluate_after_training(run_dir, cfg)
            if is_global_zero():
                after_evaluation(run_dir, cfg)
        if is_global_zero():
            print(run_summary(run_dir), flush=True)
        return {"run_dir": str(run_dir), "status": "ok", "error": None}
    except Exception as err:
        log.exception("run %s failed", run_dir)
        from sorsa_repro.wandb_eval import close_active_run

        close_active_run()
        if not multirun:
            discard_hydra_output()  # only when the run wrote nothing of its own there
            mark(err, LOGGED)
            raise
        return {"run_dir": str(run_dir), "status": "failed", "error": f"{type(err).__name__}: {err}"}


def finished_training_only(cfg: DictConfig, run_dir: Path) -> bool:
    """A job without evaluation whose run folder holds this very config's finished training: nothing to load,
    validate or write (the same config hash means the same run)."""
    from sorsa_repro.results import UnreadableResultError, load_result
    from sorsa_repro.training.identity import config_hash

    if cfg.evaluate.benchmarks:
        return False
    try:
        result = load_result(run_dir)
    except UnreadableResultError:
        return False  # the normal path names the file
    return (
        result.get("config_hash") == config_hash(cfg) and result.get("train", {}).get("status") == "finished"
    )


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


def _safe_run_dir(cfg: DictConfig) -> str:
    try:
        return str(cfg.run_dir)
    except Exception:  # the folder name itself did not resolve (e.g. method=peft without method.config)
        return f"{cfg.get('results_dir', 'results')}/{cfg.get('experiment_name', '?')}/<unresolved>"


def data_note(cfg: DictConfig, prepared) -> str | None:
    """How many training examples the run uses, and why: ``data.limit`` (often the experiment's) cuts them.
    None when the prepared run holds no data module."""
    from sorsa_repro.data.rows import source_rows

    used = getattr(getattr(prepared, "data", None), "num_train_examples", None)
    if used is None:
        return None
    name, limit = str(cfg.data.name), cfg.data.limit
    if name == "synthetic":
        return f"data: {used} generated problems" + (
            f" (data.limit={limit}{_limit_origin()})" if limit else ""
        )
    if limit is None:
        return f"data: all {used} examples of {name}"
    total = source_rows(name, cfg.data.get("data_dir"))
    of = f" of its {total} rows" if total is not None else ""
    return (
        f"data: the first {used} examples of {name}{of} (data.limit={limit}{_limit_origin()}; "
        "data.limit=null trains on all of them)"
    )


def _limit_origin() -> str:
    """Where data.limit came from, when Hydra knows: the command line or the experiment file."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    hydra_cfg = HydraConfig.get()
    if any(o.split("=", 1)[0].lstrip("+") == "data.limit" for o in hydra_cfg.overrides.task):
        return ", given on the command line"
    experiment = hydra_cfg.runtime.choices.get("experiment")
    return f", set by experiment={experiment}" if experiment not in (None, "null") else ""


def after_evaluation(run_dir: str | Path, cfg: DictConfig | None = None) -> None:
    """After training and evaluation (or a later ``sorsa-evaluate run=``): the exports' model cards, with the
    scores when evaluated, and the W&B run's scores, that run finished here, before the summary prints.
    ``cfg``: the run's config (default: its config.yaml)."""
    from omegaconf import OmegaConf

    from sorsa_repro.model_cards import write_model_cards
    from sorsa_repro.results import run_folder_lock
    from sorsa_repro.wandb_eval import finish_wandb_run

    run_dir = Path(run_dir)
    if cfg is None:
        saved = run_dir / "config.yaml"
        cfg = OmegaConf.load(saved) if saved.is_file() else None
    with run_folder_lock(run_dir):  # (already held by a training job: the lock is re-entrant)
        write_model_cards(run_dir)
    if cfg is not None:
        finish_wandb_run(cfg, run_dir)


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
    from sorsa_repro.cli_errors import as_exit

    try:
        return run_job(cfg)
    except Exception as err:  # printed once: a usage error as one line, a failure as its logged traceback
        exit_ = as_exit(err)
        if exit_ is err:
            raise
        raise exit_ from err


def main() -> None:
    from sorsa_repro import cpu_threads
    from sorsa_repro.cli_errors import run_entry_point

    cpu_threads.configure()  # before torch is imported: OpenMP reads the settings once
    exit_on_sigterm()
    run_entry_point("sorsa-train", "train", _main)


if __name__ == "__main__":
    main()
