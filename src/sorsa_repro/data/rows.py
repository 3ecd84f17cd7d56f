"""How many rows a training source holds, where that is cheap to know: a local .jsonl/.json file (your own, or a
built-in set under ``SORSA_DATA_DIR``). Training says how many of them ``data.limit`` keeps."""

from __future__ import annotations

import json
import os
from pathlib import Path

_LARGEST_JSON_ARRAY = 64 * 2**20  # bytes: a larger .json array is not parsed only to count its rows


def file_rows(path: str | os.PathLike) -> int | None:
    """Rows of a .jsonl file (non-blank lines) or a .json file (an array's items, or JSON lines)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    if path.suffix.lower() == ".json" and path.stat().st_size <= _LARGEST_JSON_ARRAY:
        try:
            value = json.loads(path.read_text(encoding="utf-8") or "[]")
            return len(value) if isinstance(value, list) else None
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file: counted below
    elif path.suffix.lower() == ".json":
        return None
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def source_rows(name: str, data_dir: str | os.PathLike | None = None) -> int | None:
    """Rows of a training source ``name``: your .json/.jsonl file, or a built-in set's local file under
    ``data_dir`` / ``SORSA_DATA_DIR`` ("+"-joined sets: their sum). None when not cheaply known (a hub dataset,
    the generated synthetic set, a missing file)."""
    from .custom import is_builtin
    from .sources import TRAIN_DATASETS, _data_dir, _local_file

    if not is_builtin(name):
        return file_rows(name)
    counts = []
    for part in name.split("+"):
        root = _data_dir(data_dir)
        if part not in TRAIN_DATASETS or part == "synthetic" or root is None:
            return None
        try:
            counts.append(file_rows(_local_file(root, part, "train")))
        except (OSError, ValueError):
            return None
    return None if None in counts else sum(counts)
