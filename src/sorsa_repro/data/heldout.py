"""The held-out split of a training source: the rows right after the training subset, never trained on.

Training reads the first ``limit`` rows (MetaMathQA ``train[:100000]``, the first 64 GSM8K train problems, the
first N generated problems); the held-out loss (``training/heldout.py``) is computed on the next ``size``
rows of the same source: MetaMathQA rows 100000.., GSM8K train rows 64.., the next generated problems.
Never a test set. When ``limit`` is null (the whole source trains) the last ``size`` rows are held out
instead, so the training set is ``size`` rows shorter. Sources joined with "+" hold out ``size`` rows of
each part. Row ids name the row of the source, so train and held-out ids are disjoint.
"""

from __future__ import annotations

import os

from .custom import is_builtin, load_train_examples
from .sources import DEFAULT_SYNTHETIC_TRAIN, DataFormatError


def split_train_heldout(
    name: str,
    limit: int | None,
    size: int,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    fields=None,
    split: str = "train",
    config: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """(training examples, held-out examples) of one source; ``size`` 0: no held-out rows."""
    if size < 0:
        raise ValueError(f"data.heldout_size must be >= 0, got {size}")
    if is_builtin(name) and "+" in name:
        parts = [split_train_heldout(p, limit, size, data_dir, seed) for p in name.split("+")]
        return [e for train, _ in parts for e in train], [e for _, held in parts for e in held]
    if name == "synthetic" and limit is None:
        limit = DEFAULT_SYNTHETIC_TRAIN  # a generated source has no end: the default draw is its subset
    wanted = None if limit is None else limit + size
    rows = load_train_examples(name, wanted, data_dir, seed, fields, split, config)
    if limit is None:
        if len(rows) <= size:
            raise DataFormatError(
                f"{name}: {len(rows)} rows leave nothing to train after holding out data.heldout_size={size}"
            )
        return rows[: len(rows) - size], rows[len(rows) - size :] if size else []
    train, held = rows[:limit], rows[limit:]
    if size and len(held) < size:
        raise DataFormatError(
            f"{name}: only {len(held)} rows after the {limit} training rows, {size} wanted for the held-out "
            "loss (data.heldout_size); lower it or data.limit"
        )
    return train, held
