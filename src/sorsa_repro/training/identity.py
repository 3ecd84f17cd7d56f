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
        "save_adapter",
        "export_merged",
        "spectral_every",
        "spectral_layer_stride",
        "compile",  # the same computation, fused: a speed choice like the micro-batch
    },
    "trainer": {"num_workers"},
}
HASH_CHARS = 8  # in folder names; result.json keeps 16


def config_hash(cfg: DictConfig, chars: int = 16) -> str:
    """Hash of everything that defines the trained model (not paths, loggers or evaluation)."""
    ident = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in IDENTITY_SECTIONS}
    for section, keys in NON_IDENTITY.items():
        ident[section] = {k: v for k, v in ident[section].items() if k not in keys}
    ident["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:chars]


def _run_id(*, _root_: DictConfig) -> str:
    return config_hash(_root_, HASH_CHARS)


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
# method=peft (conf/method/peft.yaml): the adapter config file's content is part of the identity, its r the name's
OmegaConf.register_new_resolver("file_sha256", _file_sha256, replace=True)
OmegaConf.register_new_resolver("peft_rank", _peft_rank, replace=True)
OmegaConf.register_new_resolver("accumulation", accumulation, replace=True)
