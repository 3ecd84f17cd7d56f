"""What a training run records in its result.json: who it is, what it trained under, and how each attempt went."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from omegaconf import DictConfig

from sorsa_repro.provenance import provenance
from sorsa_repro.training.identity import run_seed


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
    time, lr, regularizer), the protocol runs must share to be compared, and provenance."""
    return {
        "train": {"total_steps": prepared.total_steps, **settings},
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


def fit_statistics(run_dir: Path, before: dict, attempt: dict, memory_scope: str) -> dict:
    """The train block after a fit: this attempt appended; steps and loss from metrics.csv, so an attempt
    that had nothing left to train (a kill during the export) keeps the statistics of the one that trained."""
    attempts = [*before.get("attempts", []), {**attempt, "wall_time_s": attempt["fit_time_s"]}]
    rows = metric_rows(run_dir / "metrics.csv")
    last = rows[-1] if rows else {}
    heldout = [r for r in rows if r.get("heldout_loss") not in (None, "")]
    return {
        "steps": attempt["end_step"],
        "final_loss": float(last["loss"]) if last.get("loss") not in (None, "") else None,
        # the held-out loss at the last step (training/heldout.py), and at which steps it was measured
        "heldout_loss": float(heldout[-1]["heldout_loss"]) if heldout else None,
        "heldout_steps": [int(r["step"]) for r in heldout],
        "attempts": attempts,
        # continued from a checkpoint: an attempt that started after step 0 and trained
        "resumed": any(0 < a["start_step"] < a["end_step"] for a in attempts),
        "fit_time_s": round(sum(a["fit_time_s"] for a in attempts), 2),
        "heldout_time_s": round(sum(a.get("heldout_time_s", 0.0) for a in attempts), 2),
        "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 2),
        "peak_memory_mb": max(a["peak_memory_mb"] for a in attempts),
        "peak_memory_scope": memory_scope,
    }


def with_export_time(train: dict, wall_time_s: float) -> dict:
    """The train block's attempts and total wall time once the last attempt's export is written."""
    attempts = train["attempts"]
    attempts[-1]["wall_time_s"] = round(wall_time_s, 2)
    return {"attempts": attempts, "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 2)}


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
