"""Settings a composed training config derives from its other parts, applied before anything reads them.

Hydra applies the experiment file last, so its values win over those of a method or data config. For two
settings that is wrong:

- ``method=peft``: the run's rank is the adapter config file's ``r`` (conf/method/peft.yaml), also when the
  experiment sets ``method.rank`` for the built-in methods (mini: 16). The folder name, result.json, the
  config hash and the tables all read ``method.rank``.
- your own training data (``data=custom data.path=...``, or ``data.name=<file or hub id>``): its runs get an
  experiment name of their own, ``<experiment>-<data name>`` (``small-my_data``), so that they never land in
  a shipped experiment's folder, whose report would refuse them (other data: another protocol).
  ``experiment_name=...`` on the command line chooses the name instead. This one needs the command line
  (``overrides``), so only the entry points apply it: the training job and the sweep's pre-flight check.

``apply_derived_settings`` is idempotent; ``prepare_training`` calls it too (the peft rank). For the built-in
methods and data it changes nothing (no config hash moves; the experiment name is not part of the hash).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig


def _override_keys(overrides: Sequence[str] | None) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides or ()}


def data_label(name: str) -> str:
    """A short folder-safe name for a data file or hub id: ``/data/my_data.jsonl`` -> ``my_data``."""
    stem = Path(name.rstrip("/")).stem if Path(name).suffix else name.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-") or "data"


def own_data_name(cfg: DictConfig) -> str | None:
    """The training data's name when it is your own (not a built-in set), else None (also when unset)."""
    from sorsa_repro.data.custom import is_builtin

    try:
        name = cfg.data.name
    except Exception:  # data=custom without data.path: validation says so
        return None
    return None if not name or is_builtin(str(name)) else str(name)


def apply_derived_settings(cfg: DictConfig, overrides: Sequence[str] | None = None) -> list[str]:
    """Set what ``cfg`` derives (module docstring); returns a note per changed setting. ``overrides``: the
    command line's overrides (an explicit ``experiment_name=`` is kept); None: the command line is unknown,
    and the experiment name is left as it is."""
    notes = []
    if cfg.method.get("name") == "peft":
        from sorsa_repro.methods.peft_methods import peft_rank

        try:
            rank = peft_rank(cfg.method.config)
        except Exception:  # no or an unreadable config file: validation says so
            rank = None
        if rank is not None and cfg.method.get("rank") != rank:
            notes.append(
                f"method=peft: rank {rank}, the r of {cfg.method.config} (not the experiment's method.rank="
                f"{cfg.method.get('rank')}, which is for the built-in methods)"
            )
            cfg.method.rank = rank
    data = own_data_name(cfg) if overrides is not None else None
    if data is not None and overrides is not None and "experiment_name" not in _override_keys(overrides):
        suffix = f"-{data_label(data)}"
        if not str(cfg.experiment_name).endswith(suffix):
            name = f"{cfg.experiment_name}{suffix}"
            notes.append(
                f"your own data ({data}): experiment_name={name}, so its runs stay apart from "
                f"experiment {cfg.experiment_name}'s (experiment_name=... to choose another)"
            )
            cfg.experiment_name = name
    return notes
