"""The evaluation's scores in the run's W&B run, and that run finished before the command's summary prints.

Training logs its metrics through Lightning's ``WandbLogger``; the evaluation runs after it. With
``logger=wandb`` the run's scores then go to the same W&B run (id ``<experiment>-<run folder name>``): the
summary gets ``eval/<benchmark>/<grader>/<strict|flexible>`` and ``eval/<benchmark>/n`` (the columns of W&B's
runs table, so it compares methods), and a table ``eval/<benchmark>/predictions`` holds every problem's
completion, extracted answers, gold and verdicts. Offline (``WANDB_MODE=offline`` or no login) it all lands in
``<run>/wandb/offline-run-*/`` for ``wandb sync``.
"""

from __future__ import annotations

from pathlib import Path

from sorsa_repro.evaluation.predictions import read_predictions
from sorsa_repro.results import load_result

PREDICTION_COLUMNS = (
    "id",
    "completion",
    "strict_answer",
    "flexible_answer",
    "gold",
    "n_tokens",
    "finish_reason",
)


def score_summary(evals: dict) -> dict:
    """result.json's ``eval`` block as flat W&B summary keys."""
    flat = {}
    for benchmark, entry in evals.items():
        flat[f"eval/{benchmark}/n"] = entry.get("n")
        for grader, score in (entry.get("scores") or {}).items():
            for mode in ("strict", "flexible"):
                flat[f"eval/{benchmark}/{grader}/{mode}"] = score.get(mode)
    return flat


def prediction_rows(path: Path) -> tuple[list[str], list[list]]:
    """(columns, rows) of a predictions file: the answer fields and one verdict column per grader and mode."""
    rows = list(read_predictions(path).values())
    graders = sorted({g for r in rows for g in (r.get("correct") or {})})
    verdicts = [f"{g}/{m}" for g in graders for m in ("strict", "flexible")]
    data = [
        [
            *(r.get(c) for c in PREDICTION_COLUMNS),
            *(bool(r["correct"][g][m]) for g, m in (v.split("/") for v in verdicts)),
        ]
        for r in rows
    ]
    return [*PREDICTION_COLUMNS, *verdicts], data


def close_active_run() -> None:
    """Finish a W&B run a failed job left open (exit code 1), so that the next job of a sweep in this process
    gets its own run instead of Lightning reusing this one."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=1)


def _run_id(cfg, run_dir: Path) -> str:
    return f"{cfg.experiment_name}-{run_dir.name}"  # as training's WandbLogger (training/setup.py)


def finish_wandb_run(cfg, run_dir: str | Path) -> bool:
    """Log the run folder's scores and predictions to its W&B run and finish that run; False when the run
    does not log to W&B (``logger.wandb`` unset, or mode disabled)."""
    logger = cfg.get("logger") or {}
    if not logger.get("wandb"):
        return False
    import wandb

    from sorsa_repro.wandb_mode import logger_mode

    run_dir = Path(run_dir)
    run = wandb.run
    if run is not None and run.id != _run_id(cfg, run_dir):
        run.finish()  # another run's, left open: not this one
        run = None
    if run is None:  # the training did not run in this process (skipped, or a later sorsa-evaluate run=)
        mode, _ = logger_mode(logger.get("mode"))
        if mode == "disabled":
            return False
        run = wandb.init(
            project=logger.get("project"),
            entity=logger.get("entity"),
            group=cfg.experiment_name,
            name=run_dir.name,
            id=_run_id(cfg, run_dir),
            resume="allow",
            mode=mode,
            dir=str(run_dir),
            tags=[cfg.method.name, f"r{cfg.method.rank}", f"seed{cfg.seed}"],
        )
    evals = load_result(run_dir).get("eval") or {}
    if evals:
        summary = score_summary(evals)
        tables = {}
        for benchmark in evals:
            path = run_dir / "predictions" / f"{benchmark}.jsonl"
            if path.is_file():
                columns, data = prediction_rows(path)
                tables[f"eval/{benchmark}/predictions"] = wandb.Table(columns=columns, data=data)
        run.log({**summary, **tables})
        run.summary.update(summary)
    run.finish()
    return True
