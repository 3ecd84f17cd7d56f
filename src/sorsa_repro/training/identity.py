"""What makes two training runs the same run: the config hash, also the last part of the folder name.

``results/<experiment>/<method>[<variant>]-r<rank>-s<seed>-<hash>/``: configs that differ in anything that
changes the trained model (lr, data, model, budget, precision, ...) get different folders, so no run ever
overwrites another. The hash leaves out paths, loggers, evaluation and settings that do not change what is
trained (``NON_IDENTITY``). ``${run_id:}`` in conf/train.yaml resolves to it.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

IDENTITY_SECTIONS = ("model", "method", "data", "train", "trainer")
# config parts that do not change what is trained
NON_IDENTITY = {
    "train": {
        "checkpoint_every",
        "keep_previous_checkpoint",
        "keep_checkpoints",
        "save_adapter",
        "export_merged",
        "spectral_every",
        "spectral_layer_stride",
        "compile",  # the same computation, fused: a speed choice like the micro-batch
        "heldout_every",  # when the held-out loss is measured; it draws no random number, changes no weight
        "heldout_batch_size",
    },
    "trainer": {"num_workers"},
}
HASH_CHARS = 8  # in folder names; result.json keeps 16


def config_hash(cfg: DictConfig, chars: int = 16) -> str:
    """Hash of everything that defines the trained model (not paths, loggers or evaluation)."""
    ident = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in IDENTITY_SECTIONS}
    for section, keys in NON_IDENTITY.items():
        ident[section] = {k: v for k, v in ident[section].items() if k not in keys}
    if untrained(cfg):  # no optimiser and no devices: only the dtype the model is loaded in matters
        ident["train"], ident["trainer"] = {"precision": ident["train"]["precision"]}, {}
    ident["seed"] = run_seed(cfg)
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:chars]


def untrained(cfg: DictConfig) -> bool:
    from sorsa_repro.methods.config import UNTRAINED_METHODS

    return cfg.method.name in UNTRAINED_METHODS


def run_seed(cfg: DictConfig) -> int:
    """The seed a run is named and hashed by: 0 for a method nothing random touches (the untrained base model,
    one run whatever the sweep's seed or learning rate), else ``seed``."""
    return 0 if untrained(cfg) else cfg.seed


def _run_id(*, _root_: DictConfig) -> str:
    return config_hash(_root_, HASH_CHARS)


def _run_seed(*, _root_: DictConfig) -> int:
    return run_seed(_root_)


def _lr_tag(*, _root_: DictConfig) -> str:
    """ "-lrx3" in the folder names of a learning-rate study (``lr_in_name``); the base model has no rate."""
    if not _root_.get("lr_in_name") or untrained(_root_):
        return ""
    return f"-lrx{float(_root_.train.lr_multiplier):g}"


def lr_multiplier_for(method: str, *, _root_: DictConfig) -> float:
    """An experiment's per-method learning-rate multiplier: ``lr_selection.<method>`` (mini and small: the
    rate their learning-rate study selected), else ``lr_selection.default``."""
    selection = _root_.get("lr_selection")
    if selection is None:
        raise ValueError("train.lr_multiplier=${lr_multiplier_for:...} needs an lr_selection section")
    return float(selection.get(method, selection.default))


def accumulation(global_batch: int, batch_size: int, devices, nodes=1) -> int:
    """Micro-batches per optimizer step that make ``global_batch`` sequences on devices x nodes processes."""
    world = (devices if isinstance(devices, int) else 1) * int(nodes)
    per_round = int(batch_size) * world
    if int(global_batch) < 1 or per_round < 1 or int(global_batch) % per_round:
        raise ValueError(
            f"train.global_batch_size={global_batch} is not a multiple of train.batch_size x devices x nodes = "
            f"{batch_size} x {world}: change the micro-batch (train.batch_size) or the devices"
        )
    return int(global_batch) // per_round


def _file_sha256(path: str) -> str:
    from sorsa_repro.methods.peft_methods import peft_config_file

    return hashlib.sha256(peft_config_file(path).read_bytes()).hexdigest()


def _peft_rank(path: str) -> int:
    from sorsa_repro.methods.peft_methods import peft_rank

    return peft_rank(path)


OmegaConf.register_new_resolver("run_id", _run_id, replace=True)
OmegaConf.register_new_resolver("run_seed", _run_seed, replace=True)
OmegaConf.register_new_resolver("lr_tag", _lr_tag, replace=True)
# method=peft (conf/method/peft.yaml): the adapter config file's content is part of the identity, its r the name's
OmegaConf.register_new_resolver("file_sha256", _file_sha256, replace=True)
OmegaConf.register_new_resolver("peft_rank", _peft_rank, replace=True)
OmegaConf.register_new_resolver("accumulation", accumulation, replace=True)
OmegaConf.register_new_resolver("lr_multiplier_for", lr_multiplier_for, replace=True)
