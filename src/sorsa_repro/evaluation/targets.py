"""What an evaluation reads and where it writes: a run folder's merged export, or a model (with an adapter).

Checked without loading anything, so a missing export or folder fails before any model loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sorsa_repro.evaluation.config import EvalConfig

MERGED_DIR = "merged"
RUN_EXPORTS = (MERGED_DIR, "adapter", "adapter_lora")  # folders of a run named after the run
DEFAULT_OUT_ROOT = Path("results") / "eval"


def model_dir_name(model: str) -> str:
    """A folder name for a model: a local folder's name (``<run>-merged``, ``<run>-adapter`` for a run's
    exports), else the id."""
    path = Path(model).expanduser()
    if path.exists():
        resolved = path.resolve()
        name = f"{resolved.parent.name}-{path.name}" if path.name in RUN_EXPORTS else resolved.name
    else:
        name = model.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1  # hub ids are "name" or "org/name"


def resolve_target(cfg: EvalConfig, backend: str, have_model: bool = False) -> tuple[str | None, Path]:
    """(model reference for the backend, output folder), checked without loading anything."""
    from sorsa_repro.models import OFFLINE_MODEL, TINY_MODEL

    if cfg.run is not None:
        run_dir = Path(cfg.run).expanduser()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder {run_dir} does not exist")
        merged = run_dir / MERGED_DIR
        if have_model:
            return None, run_dir
        if not (merged / "config.json").is_file():
            raise FileNotFoundError(
                f"run folder {run_dir} has no merged model ({merged}/config.json): evaluation reads the merged "
                "export the training pipeline writes after training; finish or re-run the training first"
            )
        check_model_files(merged)
        return str(merged), run_dir
    model = str(cfg.model)
    named = model_dir_name(cfg.adapter if cfg.adapter else model)
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else DEFAULT_OUT_ROOT / named
    if cfg.adapter:
        check_adapter(Path(cfg.adapter).expanduser())
    if have_model or model in (OFFLINE_MODEL, TINY_MODEL):
        if model == TINY_MODEL and backend == "vllm":
            raise ValueError(f"model={TINY_MODEL} is built in memory; vllm needs a folder, use backend=hf")
        return model, out_dir
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} does not exist or has no config.json")
        check_model_files(path)
        return str(path), out_dir
    return model, out_dir  # a hub id


def check_adapter(path: Path) -> None:
    from sorsa_repro.methods.layers_io import ADAPTER_CONFIG as LAYERS_CONFIG
    from sorsa_repro.methods.sorsa_io import ADAPTER_CONFIG

    if not any((path / name).is_file() for name in ("adapter_config.json", ADAPTER_CONFIG, LAYERS_CONFIG)):
        raise FileNotFoundError(
            f"adapter={path}: no adapter_config.json (peft), {ADAPTER_CONFIG} (SORSA) or {LAYERS_CONFIG} (SALT, "
            "SST) in that folder"
        )
    check_model_files(path)


class UnreadableModelError(ValueError):
    """A model or adapter folder whose files are damaged (cut short, edited, not what they claim)."""


def check_model_files(folder: Path) -> None:
    """Every JSON config and safetensors file of a model or adapter folder is whole: the JSON parses to an
    object, each safetensors file holds its header and all the bytes the header promises. A damaged file
    raises ``UnreadableModelError`` naming it, before any model loads (loading gives errors without a path).
    Reads only the JSON files and the safetensors headers."""
    import json

    for path in sorted(folder.glob("*.json")):
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnreadableModelError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
        if not isinstance(value, dict):
            raise UnreadableModelError(f"{path} holds a {type(value).__name__}, not a JSON object")
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise UnreadableModelError(f"{path} is {problem}: the export is damaged; export it again")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (empty, cut short, a bad header), or None."""
    import json

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"cut short ({size} bytes: no header)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"cut short ({size} bytes: the header alone needs {length + 8})"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"not a safetensors file (its header is not JSON: {err})"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not an object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "not a safetensors file (a tensor without data_offsets)"
    if 8 + length + end > size:
        return f"cut short ({size} bytes; its header promises {8 + length + end})"
    return None


def merged_with_adapter(model: str, adapter: str, dtype: str | None):
    """(plain merged model, tokenizer): ``model`` loaded, the adapter folder attached (peft or SORSA format,
    ``sorsa_repro.methods.load_adapter``) and folded in, so every backend evaluates a plain HF model."""
    from sorsa_repro.evaluation.backends import default_dtype
    from sorsa_repro.methods import load_adapter, merge_model
    from sorsa_repro.models import load_base_model

    base, tokenizer = load_base_model(model, dtype=dtype or default_dtype())
    return merge_model(load_adapter(base, Path(adapter).expanduser())), tokenizer
