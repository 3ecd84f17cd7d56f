"""Training and evaluation data: local JSONL files under SORSA_DATA_DIR, or the Hugging Face hub by name.

Resolution order: the `data_dir` argument, else the SORSA_DATA_DIR environment variable, else the hub
(`datasets.load_dataset`). A local folder is laid out like ../shared/data:

    gsm8k/train.jsonl  gsm8k/test.jsonl                      question, answer ("#### N")
    math/MATH_train.jsonl  math/MATH_test.jsonl  math/math500.jsonl   problem, solution (\\boxed{})
    metamathqa/<one file>.jsonl or .json                   query, response

Hub ids: meta-math/MetaMathQA; openai/gsm8k (config "main"); EleutherAI/hendrycks_math (one config
per subject, concatenated in subject order, which is the order of the local MATH files);
HuggingFaceH4/MATH-500. "synthetic" is generated in-process (see synthetic.py).

Any other training-data name is your own data (custom.py); the GSM8K and MATH answers are rewritten into
MetaMathQA's response form by answer_format.py; a data set's provenance for result.json is identity.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .answer_format import gsm8k_to_metamath, last_boxed, math_to_metamath
from .synthetic import make_synthetic

ENV_VAR = "SORSA_DATA_DIR"
TRAIN_DATASETS = ("metamathqa", "gsm8k", "math", "synthetic")
EVAL_BENCHMARKS = ("gsm8k", "math", "math500", "synthetic")
DEFAULT_SYNTHETIC_TRAIN = 2000
DEFAULT_SYNTHETIC_TEST = 500
MATH_SUBJECTS = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra",
    "number_theory", "prealgebra", "precalculus",
)  # fmt: skip

# (dataset, split) -> (local file relative to the data dir, hub id, hub config, hub split)
SOURCES = {
    ("metamathqa", "train"): ("metamathqa/*.jsonl (or *.json)", "meta-math/MetaMathQA", None, "train"),
    ("gsm8k", "train"): ("gsm8k/train.jsonl", "openai/gsm8k", "main", "train"),
    ("gsm8k", "test"): ("gsm8k/test.jsonl", "openai/gsm8k", "main", "test"),
    ("math", "train"): ("math/MATH_train.jsonl", "EleutherAI/hendrycks_math", MATH_SUBJECTS, "train"),
    ("math", "test"): ("math/MATH_test.jsonl", "EleutherAI/hendrycks_math", MATH_SUBJECTS, "test"),
    ("math500", "test"): ("math/math500.jsonl", "HuggingFaceH4/MATH-500", None, "test"),
}


# ---------------------------------------------------------------- resolution and reading


def _data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    return Path(chosen).expanduser() if chosen is not None else None


def _missing(what: str, expected: str, hub_id: str) -> str:
    return (
        f"{what}: expected the file {expected} (set {ENV_VAR} or pass data_dir to a folder laid out like "
        f"shared/data), or leave both unset to load the hub dataset {hub_id!r} (needs network access)."
    )


def _local_file(root: Path, name: str, split: str) -> Path:
    """The local file for (name, split) under `root`, checked to exist before any reading."""
    rel, hub_id, _, _ = SOURCES[(name, split)]
    if name == "metamathqa":
        folder = root / "metamathqa"
        found = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.json")) if folder.is_dir() else []
        if len(found) > 1:
            raise ValueError(f"{folder} holds several candidate files {[p.name for p in found]}; keep one")
        if not found:
            raise FileNotFoundError(_missing(f"no MetaMathQA file in {folder}", f"{folder}/*.jsonl", hub_id))
        return found[0]
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(_missing(f"{name} {split} data not found", str(path), hub_id))
    return path


class DataFormatError(ValueError):
    """A data file or row that cannot be used; the message names the file and line (or hub row)."""


def _read_rows(path: Path, limit: int | None) -> list[tuple[str, dict]]:
    """(location "file:line", row) pairs; malformed JSON or a non-object row fails with its location.

    A .json file holds one JSON array (MetaMathQA-395K.json) or JSON lines (what `datasets` `to_json` writes).
    """
    rows = None
    if path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": several JSON values, i.e. JSON lines
                raise DataFormatError(
                    f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})"
                ) from None
        if rows is not None and not isinstance(rows, list):
            raise DataFormatError(f"{path}: expected a JSON array of rows, found a {type(rows).__name__}")
    if rows is not None:
        located = [
            (f"{path} row {i}", row) for i, row in enumerate(rows[:limit] if limit is not None else rows)
        ]
    else:
        located = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if limit is not None and len(located) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    located.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataFormatError(
                        f"{path}:{n}: invalid JSON ({err.msg}, column {err.colno})"
                    ) from None
    for where, row in located:
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: expected a JSON object, found a {type(row).__name__}")
    return located


def _hub_rows(name: str, split: str, limit: int | None, expected: str) -> list[tuple[str, dict]]:
    _, hub_id, config, hub_split = SOURCES[(name, split)]
    try:
        import datasets

        configs = config if isinstance(config, tuple) else (config,)
        rows: list[tuple[str, dict]] = []
        for cfg in configs:
            sub = f"{hub_split}[:{limit}]" if limit is not None and len(configs) == 1 else hub_split
            part = datasets.load_dataset(hub_id, cfg, split=sub)
            where = f"{hub_id}{'/' + cfg if cfg else ''} {hub_split} row"
            rows += [(f"{where} {i}", dict(r, _config=cfg, _index=i)) for i, r in enumerate(part)]
            if limit is not None and len(rows) >= limit:
                break
    except Exception as e:  # offline, unknown id, gated: one clear message instead of a deep traceback
        raise RuntimeError(
            _missing(f"could not load {name} {split} from the hub ({e})", expected, hub_id)
        ) from e
    return rows[:limit] if limit is not None else rows


def _rows(name: str, split: str, limit: int | None, data_dir) -> list[tuple[str, dict]]:
    """(location, row) pairs of a dataset split; fails, naming the file, when it holds no rows."""
    root = _data_dir(data_dir)
    if root is not None:
        path = _local_file(root, name, split)
        rows = _read_rows(path, limit)
        source = str(path)
    else:
        source = f"${ENV_VAR}/{SOURCES[(name, split)][0]}"
        rows = _hub_rows(name, split, limit, expected=source)
        source = f"hub dataset {SOURCES[(name, split)][1]}"
    if not rows:
        raise DataFormatError(f"{source}: no {name} {split} rows")
    return rows


def _convert(rows: list[tuple[str, dict]], make) -> list[dict]:
    """``make(i, row)`` for every row; a missing field or a bad value fails with the row's location."""
    out = []
    for i, (where, row) in enumerate(rows):
        try:
            out.append(make(i, row))
        except KeyError as err:
            fields = ", ".join(sorted(k for k in row if not k.startswith("_")))
            raise DataFormatError(f"{where}: row has no {err} field (fields: {fields})") from None
        except (ValueError, TypeError, AttributeError) as err:
            raise DataFormatError(f"{where}: {err}") from None
    return out


def _math_id(row: dict, split: str, i: int) -> str:
    if row.get("unique_id"):
        return row["unique_id"]
    if "_config" in row:  # hub rows: subject config and index within it
        return f"{split}/{row['_config']}/{row['_index']}"
    return f"{split}/{i}"


# ---------------------------------------------------------------- public API


def _check(name: str, known: tuple, what: str) -> None:
    if name not in known:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")


def load_builtin_train_examples(
    name: str, limit: int | None = None, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> list[dict]:
    """Training examples `{id, query, response}` of a built-in set (metamathqa | gsm8k | math | synthetic).

    `limit` keeps the first N rows (MetaMathQA `train[:N]`, as the paper); for synthetic it is the
    number of generated problems (default 2000) and `seed` picks them. `name` may join sources with
    "+" (e.g. "gsm8k+math"); `limit` then applies to each. For any name,
    built-in or your own: custom.load_train_examples.
    """
    if "+" in name:
        return [
            ex for part in name.split("+") for ex in load_builtin_train_examples(part, limit, data_dir, seed)
        ]
    _check(name, TRAIN_DATASETS, "training dataset")
    if name == "synthetic":
        return make_synthetic("train", DEFAULT_SYNTHETIC_TRAIN if limit is None else limit, seed)
    rows = _rows(name, "train", limit, data_dir)
    if name == "metamathqa":
        return _convert(
            rows, lambda i, r: {"id": f"metamathqa/{i}", "query": r["query"], "response": r["response"]}
        )
    if name == "gsm8k":
        return _convert(
            rows,
            lambda i, r: {
                "id": f"gsm8k/train/{i}",
                "query": r["question"],
                "response": gsm8k_to_metamath(r["answer"]),
            },
        )
    return _convert(
        rows,
        lambda i, r: {
            "id": f"math/{_math_id(r, 'train', i)}",
            "query": r["problem"],
            "response": math_to_metamath(r["solution"]),
        },
    )


def load_eval_examples(
    benchmark: str, limit: int | None = None, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> list[dict]:
    """Evaluation problems `{id, query, reference, ...}`; `reference` is the raw gold field.

    gsm8k: test `answer` ("... #### N"), 1319 rows; math: test `solution` (\\boxed{}), 5000 rows;
    math500: `solution`, 500 rows (also `answer`); synthetic: held-out problems (default 500, `seed`
    picks them), reference = the answer as a string.
    """
    _check(benchmark, EVAL_BENCHMARKS, "benchmark")
    if benchmark == "synthetic":
        exs = make_synthetic("test", DEFAULT_SYNTHETIC_TEST if limit is None else limit, seed)
        return [
            {"id": e["id"], "query": e["query"], "reference": str(e["answer"]), "answer": e["answer"]}
            for e in exs
        ]
    rows = _rows(benchmark, "test", limit, data_dir)
    if benchmark == "gsm8k":
        return _convert(
            rows, lambda i, r: {"id": f"gsm8k/test/{i}", "query": r["question"], "reference": r["answer"]}
        )

    def math_example(i: int, r: dict) -> dict:
        return {
            "id": f"{benchmark}/{_math_id(r, 'test', i)}",
            "query": r["problem"],
            "reference": r["solution"],
            "answer": r.get("answer") or last_boxed(r["solution"]),
            "level": r.get("level"),
            "subject": r.get("subject") or r.get("type"),
        }

    return _convert(rows, math_example)


def check_eval_data(benchmark: str, data_dir: str | os.PathLike | None = None) -> None:
    """Fail now when a benchmark's local file is missing (hub sources are checked when they load)."""
    _check(benchmark, EVAL_BENCHMARKS, "benchmark")
    root = _data_dir(data_dir)
    if benchmark != "synthetic" and root is not None:
        _local_file(root, benchmark, "test")
