"""Everything about a training config that can be checked before a run folder is touched or a model loads.

``validate_config(cfg)`` raises ``ValueError`` (or ``FileNotFoundError``, ``DataFormatError``) saying what to
change; it writes nothing. Training, the sweep pre-flight check and ``make replicate-sorsa`` call it first.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sorsa_repro import method_registry
from sorsa_repro.methods import UNTRAINED_METHODS, MethodConfig, validate
from sorsa_repro.results import load_result
from sorsa_repro.training.distributed import build_strategy
from sorsa_repro.training.identity import config_hash
from sorsa_repro.training.known_keys import check_known_keys
from sorsa_repro.training.optim import OPTIM_KEYS, OptimSettings, optim_settings
from sorsa_repro.training.ortho import (
    REGULARIZED_METHODS,
    REGULARIZER_KEYS,
    Regularizer,
    regularizer_from_method,
)

# the method section's keys training reads, not the method's layers: the optimiser's, SORSA's regularizer's and
# those the methods' training hooks read (their registry entries' training_keys: SoMA's weight decay, SST's rounds)
METHOD_TRAINING_KEYS = tuple(sorted({k for m in method_registry.ENTRIES for k in m.training_keys}))
TRAINING_KEYS = (*OPTIM_KEYS, *REGULARIZER_KEYS, *METHOD_TRAINING_KEYS)
PRECISIONS = {  # train.precision -> (dtype the model is loaded in, Lightning precision)
    "fp32": ("float32", "32-true"),
    "bf16-mixed": ("float32", "bf16-mixed"),
    # the references' runs: the model loaded in fp32 (the SVD on the checkpoint's exact weights), the
    # method's residual then cast to method.residual_dtype (SORSA, PiSSA: bf16), adapters and everything
    # else fp32 (full FT: fp32 master weights), bf16 autocast, tf32. SORSA@809cca0 run.py:165-187 and
    # scripts/train_sorsa.sh:12-13 (--mix-precision bf16 tf32); PiSSA@e2b128e train.py:154-157 + --bf16
    "reference": ("float32", "bf16-mixed"),
    # memory-saving option: bf16 weights and compute; Lightning must not cast the fp32 adapters, so it
    # runs "32-true". AdamW on bf16 weights leaves most of them unchanged at lr 2e-5 (full FT crippled)
    "bf16-true": ("bfloat16", "32-true"),
}


def method_config(cfg: DictConfig) -> MethodConfig:
    """What builds the adapted model; the section's optimiser and regularizer keys are training's (below)."""
    section = OmegaConf.to_container(cfg.method, resolve=True)
    return MethodConfig.from_mapping({k: v for k, v in section.items() if k not in TRAINING_KEYS})


def training_settings(cfg: DictConfig) -> tuple[OptimSettings, Regularizer | None]:
    """The optimiser's settings and SORSA's regularizer, validated (a ValueError says what to change)."""
    optim = optim_settings(cfg)
    section = OmegaConf.to_container(cfg.method, resolve=True)
    given = sorted(k for k in REGULARIZER_KEYS if section.get(k))
    if section["name"] not in REGULARIZED_METHODS and given:  # they would be silently ignored
        why = (
            "SVFit's singular vectors are frozen, so the orthonormal regularizer has nothing to act on"
            if section["name"] == "svfit"
            else "only SORSA has the orthonormal regularizer"
        )
        raise ValueError(
            f"method={section['name']} with "
            + ", ".join(f"method.{k}={section[k]}" for k in given)
            + f": {why}; leave them unset (method=sorsa trains the singular vectors with it)"
        )
    entry = method_registry.get(section["name"])
    foreign = sorted(k for k in METHOD_TRAINING_KEYS if k in section and k not in entry.training_keys)
    if foreign:  # another method's training setting: it would be silently ignored
        owners = {k: [m.name for m in method_registry.ENTRIES if k in m.training_keys] for k in foreign}
        raise ValueError(
            f"method={section['name']} with "
            + ", ".join(
                f"method.{k}={section[k]} (a setting of method={'/'.join(owners[k])})" for k in foreign
            )
            + ": leave them unset"
        )
    missing = sorted(k for k in entry.training_keys if section.get(k) is None)
    if missing:
        raise ValueError(f"method={section['name']} needs " + ", ".join(f"method.{k}" for k in missing))
    if "weight_decay_start" in entry.training_keys and optim.weight_decay:
        raise ValueError(
            f"method={section['name']} anneals its own weight decay (method.weight_decay_start -> "
            f"method.weight_decay_end); train.weight_decay={optim.weight_decay} would be overwritten: leave it 0"
        )
    if entry.training is not None:
        method_registry.resolve(entry.training)(section, 1)  # its settings' own checks (e.g. rounds >= 1)
    return optim, regularizer_from_method(section)


def validate_config(cfg: DictConfig) -> MethodConfig:
    """Check the method, budget, model shapes, training data, evaluation options and the run folder."""
    check_known_keys(cfg)
    check_numbers(cfg)
    method = method_config(cfg)
    _check_training(cfg, method)
    check_run_location(cfg)
    build_strategy(cfg)  # a strategy the config cannot run with fails here
    _check_model(cfg, method)
    check_train_data(
        cfg.data.name,
        cfg.data.limit,
        cfg.data.get("data_dir"),
        data_seed(cfg),
        cfg.data.get("fields"),
        cfg.data.get("split") or "train",
        cfg.data.get("config"),
        cfg.data.get("heldout_size", 0),
    )
    check_evaluation(cfg)
    check_run_folder(cfg)
    return method


# options that must be numbers ("abc" would fail later as a TypeError deep inside); None: may be null
NUMBERS = {
    "method": {"lr": False, "gamma": True, "ortho_accumulation": True},
    "train": {
        "lr_multiplier": False,
        "weight_decay": False,
        "warmup_ratio": False,
        "grad_clip": True,
        "batch_size": False,
        "global_batch_size": True,
        "epochs": False,
        "max_steps": True,
        "checkpoint_every": False,
    },
}


def check_numbers(cfg: DictConfig) -> None:
    """A ValueError naming the option when one of ``NUMBERS`` is not a number (``method.lr=abc``)."""
    for section, keys in NUMBERS.items():
        node = cfg.get(section)
        for key, nullable in keys.items():
            if node is None or key not in node:
                continue
            value = node[key]
            if value is None and nullable:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{section}.{key}={value!r} must be a number")


def _check_training(cfg: DictConfig, method: MethodConfig) -> None:
    if cfg.train.precision not in PRECISIONS:
        raise ValueError(f"train.precision={cfg.train.precision!r}; use one of {list(PRECISIONS)}")
    if method.name not in UNTRAINED_METHODS:  # the base model has no optimiser
        training_settings(cfg)
    for key, least in (("heldout_every", 0), ("heldout_batch_size", 1)):  # heldout_every 0: only at the end
        value = cfg.train.get(key, least)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"train.{key} must be an integer >= {least}, got {value!r}")
    for key in ("batch_size", "accumulate", "epochs"):
        if cfg.train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {cfg.train[key]}")
    world = world_size(cfg)
    per_step = cfg.train.batch_size * cfg.train.accumulate * world
    if cfg.train.get("global_batch_size") is not None and per_step != cfg.train.global_batch_size:
        raise ValueError(
            f"train.global_batch_size={cfg.train.global_batch_size}, but train.batch_size x train.accumulate x "
            f"devices = {cfg.train.batch_size} x {cfg.train.accumulate} x {world} = {per_step}: leave "
            "train.accumulate to be derived, or make them agree"
        )
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ValueError(f"train.max_steps must be >= 1 or null, got {cfg.train.max_steps}")


def world_size(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    return (devices if isinstance(devices, int) else 1) * int(cfg.trainer.get("num_nodes", 1))


def _check_model(cfg: DictConfig, method: MethodConfig) -> None:
    """Shapes only: the rank against every target matrix, on the meta device, before any weight loads."""
    from transformers import AutoModelForCausalLM

    from sorsa_repro.models import load_config

    config = load_config(cfg.model.name)  # outside the meta context: it may build the offline model once
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    validate(meta, method)


def data_seed(cfg: DictConfig) -> int:
    seed = cfg.data.get("data_seed")
    return cfg.seed if seed is None else seed


def check_train_data(
    name: str, limit, data_dir, seed: int, fields=None, split="train", config=None, heldout_size: int = 0
) -> int:
    """Load the training and held-out rows (once per distinct data config and process): missing files,
    malformed lines (file:line), unmapped fields, an unreachable hub id, empty sets and too few rows left for
    the held-out set fail here. Returns the number of training examples. `fields`, `split`, `config`: your own
    data (conf/data/custom.yaml)."""
    from sorsa_repro.data import ENV_VAR, check_train_source

    check_train_source(name, fields)  # a bad name, file or mapping fails before any row is read
    mapping = tuple(sorted(dict(fields).items())) if fields is not None else None  # hashable for the cache
    data_dir = data_dir or os.environ.get(ENV_VAR) or None
    return _count_train_examples(name, limit, data_dir, seed, mapping, split, config, heldout_size)


@cache
def _count_train_examples(name: str, limit, data_dir, seed: int, fields, split, config, heldout_size) -> int:
    from sorsa_repro.data.heldout import split_train_heldout

    fields = dict(fields) if fields is not None else None
    train, _ = split_train_heldout(name, limit, heldout_size, data_dir, seed, fields, split, config)
    return len(train)


def check_evaluation(cfg: DictConfig) -> None:
    """The ``evaluate`` section as the evaluation after training will read it, and its data files."""
    if not cfg.evaluate.benchmarks:
        return
    from sorsa_repro.data import check_eval_data
    from sorsa_repro.evaluation.backends import resolve_backend
    from sorsa_repro.evaluation.config import eval_config_for_training

    eval_cfg = eval_config_for_training(cfg.run_dir, cfg)
    resolve_backend(eval_cfg.backend)
    for benchmark in eval_cfg.benchmarks:
        check_eval_data(benchmark, eval_cfg.data_dir)


# what a run folder holds (training/task.py RUN_OUTPUTS and the rest): a folder holding one of these marks
RUN_FOLDER_MARKS = ("result.json", ".lock")


def check_run_location(cfg: DictConfig) -> None:
    """Where the run would write, checked before anything is written: the names that become parts of the
    path (experiment_name, variant, run_name) are plain names, so the run folder stays inside results_dir;
    results_dir is not empty (``''`` would be the filesystem root); a ``run_dir`` given by hand is a
    non-empty path that is not an existing folder of something else (``/etc``, the current folder); and
    nothing lies in the committed reference without ``update_reference=true``."""
    from sorsa_repro.layout import check_plain_name, refuse_reference

    results_dir = str(cfg.results_dir)
    if not results_dir.strip() or Path(results_dir).resolve() == Path("/"):
        raise ValueError(f"results_dir={results_dir!r}: give the folder the run folders go into")
    check_plain_name("experiment_name", cfg.experiment_name)
    check_plain_name("variant", cfg.variant, allow_empty=True)
    check_plain_name("run_name", cfg.run_name)
    run_dir = str(cfg.run_dir)
    if run_dir != f"{results_dir}/{cfg.experiment_name}/{cfg.run_name}":  # given by hand
        _check_explicit_run_dir(run_dir)
    refuse_reference(
        {"results_dir": results_dir, "run_dir": run_dir}, bool(cfg.get("update_reference")), "training"
    )


def _check_explicit_run_dir(run_dir: str) -> None:
    path = Path(run_dir).expanduser()
    if not run_dir.strip() or path.resolve() == Path("/"):
        raise ValueError(f"run_dir={run_dir!r}: give a folder for the run (or leave run_dir to results_dir)")
    if path.exists() and not path.is_dir():
        raise ValueError(f"run_dir={run_dir} is a file, not a run folder")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in RUN_FOLDER_MARKS):
        raise ValueError(
            f"run_dir={run_dir} ({path.resolve()}) is an existing folder that holds no run (no "
            f"{' or '.join(RUN_FOLDER_MARKS)}): a run writes and replaces merged/, adapter/, checkpoints/ ... "
            "in its folder, so it takes only an empty or new folder or a run folder; nothing was written"
        )


class RunFolderConflictError(ValueError):
    """The run folder holds another config's run, and ``overwrite`` is not set."""


def check_run_folder(cfg: DictConfig) -> None:
    """An existing run folder must hold this config's run (or ``overwrite=true``); its result.json readable."""
    run_dir = Path(cfg.run_dir)
    previous = load_result(run_dir)  # UnreadableResultError names the file
    stored = previous.get("config_hash")  # None: nothing recorded yet (a run writes it first)
    if stored not in (None, config_hash(cfg)) and not cfg.get("overwrite", False):
        raise RunFolderConflictError(
            f"run folder {run_dir} holds a run of another config (hash {stored}, this one {config_hash(cfg)}); "
            "nothing was changed. Choose another results_dir/run_dir, or pass overwrite=true to replace it."
        )
