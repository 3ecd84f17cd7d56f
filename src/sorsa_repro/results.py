"""The run folder and its result.json: the one place that reads and writes them.

A run folder (``results/<experiment>/<method>-r<rank>-s<seed>/``) holds::

    config.yaml          resolved Hydra config
    metrics.csv          one row per optimizer step (step, loss, ortho_penalty, lr, grad_norm, tokens_per_s)
    result.json          see below
    predictions/<benchmark>.jsonl
    spectral.csv         optional, from the spectral-analysis callback

result.json (every key optional until its stage has run)::

    {
      "schema": 1,
      "run": {"experiment", "method", "rank", "seed"},
      "config_hash": str,                # hash of the resolved training config
      "train": {"status": "finished"|"running"|"failed", "steps", "final_loss",
                "trainable_params", "total_params", "wall_time_s", "peak_memory_mb",
                "error"?},
      "protocol": {"train": {...data/model/schedule identity...}},
      "eval": {<benchmark>: {"n", "limit", "max_new_tokens", "backend", "prompt_version",
                              "wall_time_s", "tokens_per_s",
                              "scores": {<grader>: {"version", "strict", "flexible",
                                                    "n_strict", "n_flexible"}}}},
      "provenance": {"git_commit", "git_dirty", "packages": {...}, "model", "data", "host"}
    }

Writes are atomic: a temp file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def load_result(run_dir: str | os.PathLike) -> dict:
    """The run's result.json, or an empty dict when it has none yet."""
    path = Path(run_dir) / RESULT_FILE
    return read_json(path) if path.exists() else {}


def _deep_merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def update_result(run_dir: str | os.PathLike, patch: dict) -> dict:
    """Deep-merge ``patch`` into the run's result.json (atomically) and return the result."""
    result = _deep_merge(load_result(run_dir), patch)
    result["schema"] = SCHEMA_VERSION
    atomic_write_json(Path(run_dir) / RESULT_FILE, result)
    return result
