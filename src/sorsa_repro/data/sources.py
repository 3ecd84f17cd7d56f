"""Training and evaluation data: local JSONL files under SORSA_DATA_DIR, or the Hugging Face hub by name.

Resolution order: the `data_dir` argument, else the SORSA_DATA_DIR environment variable, else the hub
(`datasets.load_dataset`). A local folder is laid out like ../shared/data:

    gsm8k/train.jsonl  gsm8k/test.jsonl                      question, answer ("#### N")
    math/MATH_train.jsonl  math/MATH_test.jsonl  math/math500.jsonl   problem, solution (\\boxed{})
    metamathqa/<one file>.jsonl or .json                   query, response

Hub ids: meta-math/MetaMathQA; openai/gsm8k (config "main"); EleutherAI/hendrycks_math (one config
per subject, concatenated in subject order, which is the order of the local MATH files);
HuggingFaceH4/MATH-500. "synthetic" is generated in-process (see synthetic.py).

Your own training data: any other `name` is a .json/.jsonl file (JSON lines, or one JSON list of objects) or a
hub dataset id "owner/name" (`split`, `config`), its `fields` mapping {query, response} to its own field names
(default: query, response). It is trained with the same prompt and masking as the built-in sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .answer_format import last_boxed
from .synthetic import GENERATOR_VERSION, make_synthetic

ENV_VAR = "SORSA_DATA_DIR"
TRAIN_DATASETS = ("metamathqa", "gsm8k", "math", "synthetic")
EVAL_BENCHMARKS = ("gsm8k", "math", "math500", "synthetic")
DEFAULT_SYNTHETIC_TRAIN = 2000
DEFAULT_SYNTHETIC_TEST = 500
DATA_FILE_SUFFIXES = (".json", ".jsonl")
DEFAULT_FIELDS = {"query": "query", "response": "response"}
_FILE_LIKE = (*DATA_FILE_SUFFIXES, ".csv", ".tsv", ".txt", ".parquet", ".arrow", ".gz", ".zip")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
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


# ---------------------------------------------------------------- conversions


def gsm8k_to_metamath(answer: str) -> str:
    """GSM8K answer -> MetaMathQA form: drop <<calc>> annotations, final '#### N' -> 'The answer is: N'."""
    text = re.sub(r"<<[^<>]*>>", "", answer)
    body, sep, final = text.rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer[-80:]!r}")
    number = final.strip().replace(",", "")  # "1,080" -> "1080", as MetaMath's graders normalise it
    return f"{body.rstrip()}\nThe answer is: {number}"


def math_to_metamath(solution: str) -> str:
    """MATH solution -> MetaMathQA response: the solution, then 'The answer is: <last boxed content>'."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError(f"MATH solution has no \\boxed{{}} answer: {solution[-80:]!r}")
    return f"{solution}\nThe answer is: {boxed}"


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


# ---------------------------------------------------------------- your own data: a JSON/JSONL file or a hub id


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


# ---------------------------------------------------------------- public API


def _check(name: str, known: tuple, what: str) -> None:
    if name not in known:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")


def load_train_examples(
    name: str,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    fields=None,
    split: str = "train",
    config: str | None = None,
) -> list[dict]:
    """Training examples `{id, query, response}` of `name` (metamathqa | gsm8k | math | synthetic).

    `limit` keeps the first N rows (MetaMathQA `train[:N]`, as the paper); for synthetic it is the
    number of generated problems (default 2000) and `seed` picks them. `name` may join sources with
    "+" (e.g. "gsm8k+math"); `limit` then applies to each. Any other `name` is a .json/.jsonl file or a
    hub dataset id (loaded as `datasets.load_dataset(name, config, split=split)`), its `fields` mapping
    query and response to its own field names (default: query, response).
    """
    if not is_builtin(name):
        return _custom_examples(name, limit, fields, split, config)
    if "+" in name:
        return [ex for part in name.split("+") for ex in load_train_examples(part, limit, data_dir, seed)]
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
