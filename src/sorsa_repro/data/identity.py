"""The identity of a data set for result.json: where it came from (local file and its sha256, hub id, or
synthetic generator and seed) and, given the examples, how many rows it held and their content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .custom import check_fields, custom_kind, is_builtin
from .sources import ENV_VAR, EVAL_BENCHMARKS, SOURCES, _data_dir, _local_file
from .synthetic import GENERATOR_VERSION


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_identity(
    name: str,
    split: str = "train",
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    examples: list[dict] | None = None,
    fields=None,
    config: str | None = None,
) -> dict:
    """Provenance of a data set for result.json: where it came from and, given `examples`, what it held.

    `split` is "train" or "test" (the benchmark split; for your own hub data, its split). No network: for
    hub sources only the id is recorded; a local file is recorded with its sha256.
    """
    ident: dict = {"name": name, "split": split, "limit": limit}
    if examples is not None:
        ident["rows"] = len(examples)
        blob = json.dumps([[e["id"], e["query"], e.get("response", e.get("reference"))] for e in examples])
        ident["content_sha256"] = hashlib.sha256(blob.encode()).hexdigest()
    if name not in EVAL_BENCHMARKS and not is_builtin(name):  # your own data
        fields = check_fields(fields)
        if custom_kind(name) == "file":
            path = Path(name).expanduser()
            return {**ident, "source": "local", "path": name, "fields": fields, "file_sha256": _sha256(path)}
        return {
            **ident,
            "source": "hub",
            "hub_id": name,
            "hub_config": config,
            "hub_split": split,
            "fields": fields,
        }
    if "+" in name:
        ident["parts"] = [data_identity(p, split, limit, data_dir, seed) for p in name.split("+")]
        return ident
    if name == "synthetic":
        return {**ident, "source": "synthetic", "generator": GENERATOR_VERSION, "seed": seed}
    key = (name, split)
    if key not in SOURCES:
        raise ValueError(f"no data source for {name!r} split {split!r}; known: {sorted(SOURCES)}")
    _, hub_id, config, hub_split = SOURCES[key]
    root = _data_dir(data_dir)
    if root is not None:
        path = _local_file(root, name, split)
        # where it lies relative to the data folder, which is named as configured (no machine's own path)
        folder = f"${ENV_VAR}" if data_dir is None else str(data_dir)
        file = f"{folder}/{path.relative_to(root).as_posix()}"
        return {**ident, "source": "local", "path": file, "file_sha256": _sha256(path)}
    configs = list(config) if isinstance(config, tuple) else config
    return {**ident, "source": "hub", "hub_id": hub_id, "hub_config": configs, "hub_split": hub_split}
