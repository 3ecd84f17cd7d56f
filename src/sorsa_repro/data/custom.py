"""Your own training data, and `load_train_examples`, which takes any training-data name.

A name that is not a built-in set (sources.py) is a .json/.jsonl file (JSON lines, or one JSON list of
objects) or a hub dataset id "owner/name" (`split`, `config`), its `fields` mapping {query, response} to
its own field names (default: query, response). It is trained with the same prompt and masking as the
built-in sets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .sources import TRAIN_DATASETS, DataFormatError, _convert, _read_rows, load_builtin_train_examples

DATA_FILE_SUFFIXES = (".json", ".jsonl")
DEFAULT_FIELDS = {"query": "query", "response": "response"}
_FILE_LIKE = (*DATA_FILE_SUFFIXES, ".csv", ".tsv", ".txt", ".parquet", ".arrow", ".gz", ".zip")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_builtin(name: str) -> bool:
    """A built-in training set, or built-in sets joined with "+"."""
    return all(part in TRAIN_DATASETS for part in name.split("+"))


def custom_kind(name: str) -> str:
    """Whether a name that is not built-in is a local "file" or a "hub" id; a clear error when neither."""
    path = Path(name).expanduser()
    if path.exists() or path.suffix.lower() in _FILE_LIKE or name.startswith(("/", ".", "~")):
        if path.suffix.lower() not in DATA_FILE_SUFFIXES:
            raise ValueError(
                f"training data file {name!r}: expected a .json or .jsonl file (JSON lines, or one JSON "
                "list of objects)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"training data file {path} not found")
        return "file"
    if _HUB_ID.fullmatch(name):
        return "hub"
    raise ValueError(
        f"unknown training dataset {name!r}; known: {', '.join(TRAIN_DATASETS)} (join with '+'), a "
        ".json/.jsonl file, or a hub dataset id owner/name"
    )


def check_fields(fields) -> dict:
    """The {query, response} -> field-name mapping (default: the same names)."""
    fields = dict(DEFAULT_FIELDS if fields is None else fields)
    if set(fields) != set(DEFAULT_FIELDS) or not all(isinstance(v, str) and v for v in fields.values()):
        raise ValueError(f"data.fields must map query and response to field names, got {fields}")
    return fields


def check_train_source(name: str, fields=None) -> None:
    """Fail now on an unknown name, a missing or non-JSON file or a bad field mapping (rows are read later)."""
    if not is_builtin(name):
        custom_kind(name)
        check_fields(fields)


def _custom_hub_rows(
    hub_id: str, limit: int | None, split: str, config: str | None
) -> list[tuple[str, dict]]:
    sub = f"{split}[:{limit}]" if limit is not None and "[" not in split else split
    try:
        import datasets

        part = datasets.load_dataset(hub_id, config, split=sub)
    except Exception as e:  # offline, unknown id, gated: one clear message instead of a deep traceback
        raise RuntimeError(
            f"could not load the hub dataset {hub_id!r} (config {config!r}, split {sub!r}): {e}. Without "
            "network access, save it as a .json/.jsonl file and pass that file's path instead."
        ) from e
    return [(f"{hub_id} {split} row {i}", dict(r)) for i, r in enumerate(part)]


def _custom_examples(name: str, limit: int | None, fields, split: str, config: str | None) -> list[dict]:
    fields = check_fields(fields)
    if custom_kind(name) == "file":
        rows, source = _read_rows(Path(name).expanduser(), limit), name
    else:
        rows, source = _custom_hub_rows(name, limit, split, config), f"hub dataset {name!r} split {split!r}"
    if not rows:
        raise DataFormatError(f"{source}: no rows")

    def make(i: int, row: dict) -> dict:
        missing = [f"{col!r} (data.fields.{role})" for role, col in fields.items() if col not in row]
        if missing:
            found = ", ".join(sorted(row))
            raise ValueError(f"no field {' or '.join(missing)}; fields found: {found}")
        for col in fields.values():
            if not isinstance(row[col], str):
                raise TypeError(f"field {col!r} holds a {type(row[col]).__name__}, expected text")
        return {"id": f"custom/{i}", "query": row[fields["query"]], "response": row[fields["response"]]}

    return _convert(rows, make)


def load_train_examples(
    name: str,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    fields=None,
    split: str = "train",
    config: str | None = None,
) -> list[dict]:
    """Training examples `{id, query, response}` of `name`: a built-in set (`limit`, `seed` and "+" as
    ``sources.load_builtin_train_examples`` says), or a .json/.jsonl file or hub dataset id (loaded as
    `datasets.load_dataset(name, config, split=split)`, `limit` its first rows), its `fields` mapping query
    and response to its own field names (default: query, response).
    """
    if not is_builtin(name):
        return _custom_examples(name, limit, fields, split, config)
    return load_builtin_train_examples(name, limit, data_dir, seed)
