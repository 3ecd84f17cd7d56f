"""Settings a composed training config derives from its other parts, applied before anything reads them.

Hydra applies the experiment file last, so its values win over those of a method or data config. For one
setting that is wrong:

- ``method=peft``: the run's rank is the adapter config file's ``r`` (conf/method/peft.yaml), also when the
  experiment sets ``method.rank`` for the built-in methods (mini: 16). The folder name, result.json, the
  config hash and the tables all read ``method.rank``.

``apply_derived_settings`` is idempotent; the training job, the sweep's pre-flight check and
``prepare_training`` call it. For the built-in methods it changes nothing (no config hash moves).
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig


def apply_derived_settings(cfg: DictConfig, overrides: Sequence[str] | None = None) -> list[str]:
    """Set what ``cfg`` derives (module docstring); returns a note per changed setting. ``overrides``: the
    command line's overrides, when known."""
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
    return notes
