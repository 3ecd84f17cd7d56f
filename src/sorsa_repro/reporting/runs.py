"""One run folder as the reports read it (``Run``): its result.json and config.yaml, what it is (method, rank,
seed, variant, learning rate) and whether it counts, and every run folder of an experiment (``collect_runs``).
A folder whose files cannot be read becomes a ``Run`` that says why, never a crash."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from sorsa_repro.results import RESULT_FILE, UnreadableResultError, load_result

RUN_KEYS = ("experiment", "method", "rank", "seed")
# <method>[<variant>]-r<rank>-s<seed>[-<config hash>] (older folders have no hash)
_FOLDER = re.compile(r"^(?P<method>.+)-r(?P<rank>\d+)-s(?P<seed>\d+)(?:-[0-9a-f]{8})?$")


@dataclass
class Run:
    """One run folder: its result.json (possibly empty) and resolved config."""

    path: Path
    result: dict
    config: dict = field(default_factory=dict)
    problem: str | None = None  # why the folder's files could not be read (the run is then left out)
    lr_split: bool = False  # its method ran at several learning rates here: the multiplier joins the variant

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def info(self) -> dict:
        """The "run" block, falling back on the folder name ``<method>-r<rank>-s<seed>``."""
        match = _FOLDER.match(self.name)
        info = {k: match[k] for k in ("method", "rank", "seed")} if match else {"method": self.name}
        return {**info, **self.result.get("run", {})}

    @property
    def method(self) -> str:
        return str(self.info["method"])

    @property
    def rank(self) -> int:  # 0 stands for "no rank" (full fine-tuning)
        return int(self.info.get("rank") or 0)

    @property
    def seed(self) -> int | None:
        seed = self.info.get("seed")
        return None if seed is None else int(seed)

    @property
    def arm(self) -> str:
        """The variant without the learning rate: what a run is at every rate of a learning-rate study."""
        extra = {k: v for k, v in self.info.items() if k not in RUN_KEYS}
        return ", ".join(f"{k}={extra[k]}" for k in sorted(extra))

    @property
    def variant(self) -> str:
        lr = f"lr x{self.lr_multiplier:g}" if self.lr_split and self.lr_multiplier is not None else ""
        return ", ".join(v for v in (lr, self.arm) if v)

    @property
    def lr_multiplier(self) -> float | None:
        """train.lr_multiplier (older runs: in their protocol block)."""
        value = self.result.get("train", {}).get("lr_multiplier")
        if value is None:
            value = self.result.get("protocol", {}).get("train", {}).get("lr_multiplier")
        return None if value is None else float(value)

    @property
    def lr(self) -> float | None:
        return self.result.get("train", {}).get("lr")

    @property
    def heldout_loss(self) -> float | None:
        """The held-out loss at the run's last step (training/heldout.py)."""
        value = self.result.get("train", {}).get("heldout_loss")
        return None if value is None else float(value)

    @property
    def status(self) -> str:
        """ "ok" when it has eval scores; otherwise why not (shown in the tables' notes)."""
        if self.problem:
            return self.problem
        if not self.result:
            return f"no {RESULT_FILE}"
        train = self.result.get("train", {})
        if train.get("status") == "failed":
            error = str(train.get("error") or "no error recorded").strip().splitlines()
            return f"training failed ({error[-1] if error else ''})"
        if train.get("status") in ("running", "interrupted"):
            return "still running" if train["status"] == "running" else "training interrupted"
        if train.get("status") != "finished":
            return "not trained"
        if self.divergence:  # left out of tables, claims and figures, with the reason
            return f"training diverged ({self.divergence})"
        return "ok"

    @property
    def divergence(self) -> str | None:
        """Why its training diverged (result.json ``train.diverged``, training/record.py), or None."""
        train = self.result.get("train", {})
        return (train.get("divergence") or "no reason recorded") if train.get("diverged") else None

    @cached_property
    def metrics(self) -> pd.DataFrame | None:
        path = self.path / "metrics.csv"
        try:
            return pd.read_csv(path) if path.exists() else None
        except (ValueError, OSError) as err:  # pandas' parser errors are ValueErrors
            warnings.warn(f"{path} is unreadable ({err}); its curve is left out", stacklevel=2)
            return None


def collect_runs(exp_dir: str | Path) -> list[Run]:
    """Every run folder under ``exp_dir``, sorted by name."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"no results folder {exp_dir}")
    runs = []
    for path in sorted(p for p in exp_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        runs.append(read_run(path))
    if not runs:
        raise FileNotFoundError(f"no run folders under {exp_dir}")
    return mark_lr_splits(runs)


def mark_lr_splits(runs: list[Run]) -> list[Run]:
    """Runs of a (method, rank, variant) that ran at several learning-rate multipliers get theirs in the
    variant, so different rates are never averaged together."""
    rates: dict[tuple, set] = {}
    for run in runs:
        rates.setdefault((run.method, run.rank, run.arm), set()).add(run.lr_multiplier)
    for run in runs:
        run.lr_split = len(rates[(run.method, run.rank, run.arm)]) > 1
    return runs


def read_run(path: Path) -> Run:
    """A run folder; files that cannot be read make ``Run.problem`` say so (path and reason), never a crash."""
    try:
        result = load_result(path)
        config_path = path / "config.yaml"
        config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} is not a mapping")
    except (UnreadableResultError, yaml.YAMLError, ValueError, OSError) as err:
        return Run(path, {}, {}, problem=f"unreadable: {err}")
    return Run(path, result, config)
