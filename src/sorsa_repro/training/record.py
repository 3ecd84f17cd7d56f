"""What a training run records in its result.json: who it is, what it trained under, and how each attempt went."""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig

from sorsa_repro.provenance import provenance
from sorsa_repro.results import load_result, update_result
from sorsa_repro.training.identity import run_seed

log = logging.getLogger(__name__)


def run_block(cfg: DictConfig) -> dict:
    block = {
        "experiment": cfg.experiment_name,
        "method": cfg.method.name,
        "rank": cfg.method.rank,
        "seed": run_seed(cfg),
    }
    if cfg.variant:
        block["variant"] = str(cfg.variant).lstrip("-")
    if cfg.method.name == "peft":  # which adapter config: a variant of its own in the tables
        from sorsa_repro.methods.peft_methods import peft_config_file

        file = peft_config_file(cfg.method.config)
        block["peft_config"] = file.parent.name if file.name == "adapter_config.json" else file.stem
    return block


def start_record(cfg: DictConfig, prepared, settings: dict, dtype: str, world: int) -> dict:
    """The blocks written before the fit: the budget and settings (``settings``: parameter counts, init
    time, lr, regularizer), the protocol runs must share to be compared, and provenance. The running
    attempt's entry gets its init time now (a killed attempt keeps it); ``init_time_s`` sums all attempts'."""
    attempts = current_attempts(prepared.run_dir)
    if attempts and attempts[-1].get("status") == "running" and "init_time_s" in settings:
        attempts[-1]["init_time_s"] = settings["init_time_s"]
    totals = attempt_totals(attempts) if attempts else {}
    return {
        "train": {"total_steps": prepared.total_steps, **settings, **totals},
        "protocol": {"train": protocol_block(cfg, prepared.data, prepared.total_steps, world)},
        "provenance": {
            **provenance(),
            "command": " ".join(["python -m sorsa_repro.train", *sys.argv[1:]]),
            "model": {"name": cfg.model.name, "dtype": dtype},
            "data": prepared.data.identity(),
        },
    }


def protocol_block(cfg: DictConfig, data, total_steps: int, world: int) -> dict:
    """What must match for runs to be compared: model, data, budget, batch, precision."""
    ident = data.identity()
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "examples": ident.get("rows"),
        "data_sha256": ident.get("content_sha256") or ident.get("sha256"),
        "max_length": cfg.data.max_length,
        "truncation": cfg.data.truncation,
        "tokenization": cfg.data.get("tokenization", "separate"),
        "steps": total_steps,
        "sequences_per_step": cfg.train.batch_size * cfg.train.accumulate * world,
        "precision": cfg.train.precision,
        "warmup_ratio": cfg.train.warmup_ratio,
        "grad_clip": cfg.train.grad_clip,
    }  # the learning rate is each method's (train.lr, train.lr_multiplier): runs compare across rates


def fit_statistics(run_dir: Path, attempt: dict, memory_scope: str) -> dict:
    """The train block after a fit: this attempt's entry (``open_attempt``) filled in; steps and loss from
    metrics.csv, so an attempt that had nothing left to train (a kill during the export) keeps the
    statistics of the one that trained; ``diverged`` when the curve says training blew up."""
    attempts = current_attempts(run_dir)
    attempts[-1] = {**attempts[-1], **attempt, "wall_time_s": attempt["fit_time_s"]}
    rows = metric_rows(run_dir / "metrics.csv")
    last = rows[-1] if rows else {}
    reason = divergence(rows)
    heldout = [r for r in rows if r.get("heldout_loss") not in (None, "")]
    return {
        "steps": attempt["end_step"],
        "final_loss": float(last["loss"]) if last.get("loss") not in (None, "") else None,
        # the held-out loss at the last step (training/heldout.py), and at which steps it was measured
        "heldout_loss": float(heldout[-1]["heldout_loss"]) if heldout else None,
        "heldout_steps": [int(r["step"]) for r in heldout],
        **attempt_totals(attempts),
        "peak_memory_scope": memory_scope,
        "diverged": reason is not None,
        "divergence": reason,
    }


def with_export_time(train: dict, wall_time_s: float) -> dict:
    """The train block's attempts and totals once the last attempt's export is written: it finished."""
    attempts = train["attempts"]
    attempts[-1].update(wall_time_s=round(wall_time_s, 2), status="finished")
    return attempt_totals(attempts)


# ---- every attempt, the interrupted and killed ones too


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_attempts(run_dir: Path) -> list[dict]:
    return [dict(a) for a in load_result(run_dir).get("train", {}).get("attempts", [])]


def attempt_totals(attempts: list[dict]) -> dict:
    """The train block's sums over all attempts (finished, interrupted, failed, killed): wall time, fit time,
    init time, the highest peak memory, and whether any attempt continued from a checkpoint."""

    def total(key):
        values = [a[key] for a in attempts if a.get(key) is not None]
        return round(sum(values), 2) if values else None

    peaks = [a["peak_memory_mb"] for a in attempts if a.get("peak_memory_mb") is not None]
    return {
        "attempts": attempts,
        # continued from a checkpoint: an attempt that started after step 0 and trained
        "resumed": any(0 < (a.get("start_step") or 0) < (a.get("end_step") or 0) for a in attempts),
        "wall_time_s": total("wall_time_s"),
        "fit_time_s": total("fit_time_s"),
        "init_time_s": total("init_time_s"),  # every attempt builds the model again
        "heldout_time_s": total("heldout_time_s"),
        "peak_memory_mb": max(peaks) if peaks else None,
    }


def _close_killed(attempt: dict, run_dir: Path) -> dict:
    """An attempt an earlier process left ``running``: it died without a word (kill -9, the OOM killer, a
    node failure), since this process holds the run folder's lock. Its end is estimated from the last write
    it made in the run folder (metrics.csv is appended every optimizer step)."""
    try:
        started = datetime.fromisoformat(attempt["started_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return {**attempt, "status": "killed"}
    written = [
        p.stat().st_mtime
        for p in (run_dir / "metrics.csv", run_dir / "checkpoints" / "last.ckpt", run_dir / "train.log")
        if p.exists()
    ]
    last_write = max([t for t in written if t >= started], default=started)
    rows = metric_rows(run_dir / "metrics.csv")
    steps = [int(r["step"]) for r in rows if r.get("step")]
    return {
        **attempt,
        "status": "killed",
        "end_step": max(steps) if steps else attempt.get("start_step"),
        "wall_time_s": round(last_write - started, 2),
        "wall_time_estimated": "from the run folder's last write: the process was killed",
    }


def open_attempt(run_dir: Path) -> None:
    """Record a new attempt (status ``running``, its start time) at the end of train.attempts, after closing
    one an earlier process left running (``_close_killed``)."""
    attempts = [
        a if a.get("status") != "running" else _close_killed(a, run_dir) for a in current_attempts(run_dir)
    ]
    attempts.append({"status": "running", "started_at": _now()})
    update_result(run_dir, {"train": attempt_totals(attempts)})


def close_attempt(run_dir: Path, err: BaseException, started: float, progress: dict) -> None:
    """Record how this attempt ended when an exception (Ctrl-C, SIGTERM, a failure) ended it: status,
    wall time and what ``progress`` knew (init time, the module for its steps, peak memory)."""
    from sorsa_repro.results import failure_message

    attempts = current_attempts(run_dir)
    if not attempts or attempts[-1].get("status") not in ("running",):
        return
    module = progress.get("module")
    entry = {k: v for k, v in progress.items() if k not in ("module", "memory_scope")}
    if "memory_scope" in progress:  # the peak was reset when this attempt started
        from sorsa_repro.training.resources import peak_memory_mb

        entry["peak_memory_mb"] = peak_memory_mb()
    if module is not None and getattr(module, "start_step", None) is not None:
        entry.update(start_step=module.start_step, end_step=module.last_metrics.get("step"))
    interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
    attempts[-1] = {
        **attempts[-1],
        **entry,
        "status": "interrupted" if interrupted else "failed",
        "error": failure_message(err),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    update_result(run_dir, {"train": attempt_totals(attempts)})


@contextmanager
def attempt_record(run_dir: Path, enabled: bool = True) -> Iterator[dict]:
    """Record this training attempt in train.attempts from its start to its end, however it ends: the
    block fills the yielded dict (``memory_scope`` once the peak memory is reset, ``init_time_s``,
    ``module``) as it learns them."""
    progress: dict = {}
    if not enabled:
        yield progress
        return
    open_attempt(run_dir)
    started = time.perf_counter()
    try:
        yield progress
    except BaseException as err:
        try:
            close_attempt(run_dir, err, started, progress)
        except Exception as record_err:  # noqa: BLE001  (a full disk: the error that ended it goes on)
            log.error("could not record the end of this attempt in %s: %s", run_dir, record_err)
        raise


# ---- divergence

LOSS_RISE = 2.0  # the last steps' mean loss above this many times the first steps' mean ...
LOSS_RISE_NATS = 1.0  # ... and this much higher: training diverged
PENALTY_LIMIT = 10.0  # orthonormal penalty ||U^T U - I||_F (mean): ~0.02 in the references' runs


def divergence(rows: list[dict]) -> str | None:
    """Why the per-step metrics say training diverged (loss far above its start, a non-finite value, an
    exploding orthonormal penalty), or None. Windows of up to 8 steps (a quarter of the run) smooth the
    batch-to-batch noise."""
    losses = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") not in (None, "")]
    bad = [(s, v) for s, v in losses if not math.isfinite(v)]
    if bad:
        return f"non-finite loss {bad[0][1]} at step {bad[0][0]}"
    penalties = [
        (int(r["step"]), float(r["ortho_penalty"])) for r in rows if r.get("ortho_penalty") not in (None, "")
    ]
    bad = [(s, v) for s, v in penalties if not math.isfinite(v) or v > PENALTY_LIMIT]
    if bad:
        return f"orthonormal penalty {bad[0][1]:.3g} at step {bad[0][0]} (above {PENALTY_LIMIT:g}: the factors blew up)"
    if len(losses) < 2:
        return None
    window = max(1, min(8, len(losses) // 4))
    first = sum(v for _, v in losses[:window]) / window
    last = sum(v for _, v in losses[-window:]) / window
    if last > LOSS_RISE * first and last - first > LOSS_RISE_NATS:
        return (
            f"loss rose from {first:.3g} (mean of the first {window} steps) to {last:.3g} (the last {window}): "
            f"more than {LOSS_RISE:g}x its start"
        )
    return None


def write_metrics(path: Path, rows: list[dict]) -> None:
    """metrics.csv with the training module's columns (a run without optimizer steps: the base model's)."""
    from sorsa_repro.results import atomic_write_text
    from sorsa_repro.training.module import METRIC_COLUMNS

    lines = [",".join(METRIC_COLUMNS)]
    lines += [",".join("" if row.get(c) is None else str(row[c]) for c in METRIC_COLUMNS) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def metric_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
