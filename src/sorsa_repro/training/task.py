"""One training run: validate the config, train (or resume), write the run folder."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sorsa_repro.methods import (
    MethodConfig,
    apply_method,
    count_parameters,
    merge_model,
    save_adapter,
    validate,
)
from sorsa_repro.methods.config import TRAINING_KEYS
from sorsa_repro.provenance import provenance
from sorsa_repro.results import atomic_write_text, load_result, update_result
from sorsa_repro.training.distributed import build_strategy, fsdp_root, whole_model

log = logging.getLogger(__name__)

PRECISIONS = {  # train.precision -> (dtype the model is loaded in, Lightning precision)
    "fp32": ("float32", "32-true"),
    "bf16-mixed": ("float32", "bf16-mixed"),
    # bf16 weights and compute; Lightning must not cast the fp32 adapters, so it runs "32-true"
    "bf16-true": ("bfloat16", "32-true"),
}
# config parts that do not change what is trained (left out of the config hash)
NON_IDENTITY = {
    "train": {"checkpoint_every", "save_adapter", "export_merged", "spectral_every"},
    "trainer": {"num_workers"},
}
CHECKPOINT = "checkpoints/last.ckpt"


def method_config(cfg: DictConfig) -> MethodConfig:
    return MethodConfig.from_mapping(OmegaConf.to_container(cfg.method, resolve=True))


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that defines the trained model (not paths, loggers or evaluation)."""
    ident = {
        k: OmegaConf.to_container(cfg[k], resolve=True)
        for k in ("model", "method", "data", "train", "trainer")
    }
    for section, keys in NON_IDENTITY.items():
        ident[section] = {k: v for k, v in ident[section].items() if k not in keys}
    ident["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def validate_config(cfg: DictConfig) -> MethodConfig:
    """Everything that can be checked without loading the model; raises ValueError saying what to change."""
    method = method_config(cfg)
    if cfg.train.precision not in PRECISIONS:
        raise ValueError(f"train.precision={cfg.train.precision!r}; use one of {list(PRECISIONS)}")
    from sorsa_repro.training.module import ORTHO_MODES

    if method.name == "sorsa" and cfg.method.get("ortho_mode", "reference") not in ORTHO_MODES:
        raise ValueError(f"method.ortho_mode={cfg.method.ortho_mode!r}; use one of {ORTHO_MODES}")
    for key in ("batch_size", "accumulate", "epochs"):
        if cfg.train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {cfg.train[key]}")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ValueError(f"train.max_steps must be >= 1 or null, got {cfg.train.max_steps}")
    if float(cfg.method.lr) <= 0 or cfg.train.lr_multiplier <= 0:
        raise ValueError("method.lr and train.lr_multiplier must be > 0")
    build_strategy(cfg)  # a strategy the config cannot run with fails here
    # shapes only: rank against every target matrix, before any weight is loaded
    from transformers import AutoModelForCausalLM

    from sorsa_repro.models import load_config

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(load_config(cfg.model.name))
    validate(meta, method)
    return method


def optimizer_steps(num_examples: int, batch_size: int, accumulate: int, world: int, epochs: int) -> int:
    """ceil(ceil(examples / (batch x world)) / accumulate) x epochs: the paper's 100000 / 128 -> 782."""
    micro_batches = math.ceil(num_examples / (batch_size * world))
    return math.ceil(micro_batches / accumulate) * epochs


def world_size(cfg: DictConfig) -> int:
    """Processes that share the global batch (devices x nodes; 'auto' counts as one)."""
    devices = cfg.trainer.devices
    return (devices if isinstance(devices, int) else 1) * int(cfg.trainer.get("num_nodes", 1))


def run_training(cfg: DictConfig) -> Path:
    """Train the configured run into ``cfg.run_dir`` (resuming or skipping as the folder allows)."""
    import lightning as L

    from sorsa_repro.data import MathDataModule
    from sorsa_repro.models import load_base_model, load_tokenizer
    from sorsa_repro.training.module import FineTuneModule

    method = validate_config(cfg)
    run_dir = Path(cfg.run_dir)
    digest = config_hash(cfg)
    previous = load_result(run_dir)
    if previous.get("config_hash") not in (None, digest):
        log.warning("config of %s changed since its last run: training it again from scratch", run_dir)
        for stale in (
            "checkpoints",
            "adapter",
            "merged",
            "predictions",
            "metrics.csv",
            "spectral.csv",
            "result.json",
        ):
            path = run_dir / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif previous.get("train", {}).get("status") == "finished":
        log.info("%s already finished training (config %s): not training again", run_dir, digest)
        return run_dir

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(_without_hydra(cfg), resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    model_dtype, precision = PRECISIONS[cfg.train.precision]
    if cfg.trainer.accelerator == "gpu" and cfg.trainer.get("tf32", False):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tokenizer = load_tokenizer(cfg.model.name)
    data = MathDataModule(
        tokenizer,
        name=cfg.data.name,
        limit=cfg.data.limit,
        max_length=cfg.data.max_length,
        truncation=cfg.data.truncation,
        long_prompts=cfg.data.get("long_prompts", "error"),
        seed=cfg.seed,
        data_seed=cfg.data.get("data_seed"),
        batch_size=cfg.train.batch_size,
        num_workers=cfg.trainer.num_workers,
        data_dir=cfg.data.get("data_dir"),
    )
    num_examples = data.num_train_examples  # loads and encodes: data errors surface before the model loads
    world = world_size(cfg)
    total_steps = cfg.train.max_steps or optimizer_steps(
        num_examples, cfg.train.batch_size, cfg.train.accumulate, world, cfg.train.epochs
    )

    started = time.perf_counter()
    model, _ = load_base_model(cfg.model.name, dtype=model_dtype, seed=cfg.seed)
    model = apply_method(model, method)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    init_s = time.perf_counter() - started
    log.info(
        "%s: %s trainable of %s parameters (%.2f%%), init %.1f s",
        run_dir.name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        init_s,
    )
    lr = float(cfg.method.lr) * cfg.train.lr_multiplier
    module = FineTuneModule(
        model,
        lr=lr,
        total_steps=total_steps,
        accumulate=cfg.train.accumulate,
        gamma=float(cfg.method.get("gamma", 0.0) or 0.0),
        ortho_mode=cfg.method.get("ortho_mode", "reference"),
        weight_decay=cfg.train.weight_decay,
        warmup_ratio=cfg.train.warmup_ratio,
        grad_clip=cfg.train.grad_clip,
        metrics_path=run_dir / "metrics.csv",
    )
    update_result(
        run_dir,
        {
            "run": _run_block(cfg),
            "config_hash": digest,
            "train": {
                "status": "running",
                "total_steps": total_steps,
                "trainable_params": trainable,
                "total_params": total,
                "init_time_s": round(init_s, 2),
            },
            "protocol": {"train": _protocol(cfg, data, total_steps, world)},
            "provenance": {
                **provenance(),
                "command": " ".join(["python -m sorsa_repro.train", *sys.argv[1:]]),
                "model": _model_identity(cfg, model_dtype),
                "data": data.identity(),
            },
        },
    )

    loggers = _loggers(cfg, run_dir, trainable, total)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=build_strategy(cfg),
        num_nodes=cfg.trainer.get("num_nodes", 1),
        precision=precision,
        max_steps=total_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.train.accumulate,
        callbacks=_callbacks(cfg, run_dir),
        logger=loggers or False,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    ckpt = run_dir / CHECKPOINT
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt.exists() else None)
    finally:
        for lg in loggers:
            lg.finalize("success")
    fit_s = time.perf_counter() - started
    if trainer.global_step < total_steps:
        raise RuntimeError(f"training stopped at step {trainer.global_step} of {total_steps}")
    trainer.save_checkpoint(ckpt)
    with whole_model(model, fsdp_root(trainer)):  # under FSDP: all ranks gather, rank 0 writes
        if trainer.is_global_zero:
            _export(model, tokenizer, cfg, run_dir, method)
    if trainer.is_global_zero:
        update_result(
            run_dir,
            {
                "train": {
                    "status": "finished",
                    "steps": trainer.global_step,
                    "final_loss": module.last_metrics.get("loss"),
                    "wall_time_s": round(time.perf_counter() - started, 2),
                    "fit_time_s": round(fit_s, 2),
                    "peak_memory_mb": _peak_memory_mb(),
                    "resumed": ckpt.exists() and previous.get("train") is not None,
                }
            },
        )
    return run_dir


def _export(model, tokenizer, cfg, run_dir: Path, method: MethodConfig) -> None:
    if cfg.train.save_adapter and method.name != "full":
        save_adapter(model, _fresh(run_dir / "adapter"), base_model=cfg.model.name)
    if cfg.train.export_merged:
        merged = merge_model(model)
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".merged."))
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(run_dir / "merged", ignore_errors=True)
        os.replace(tmp, run_dir / "merged")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _run_block(cfg: DictConfig) -> dict:
    block = {
        "experiment": cfg.experiment_name,
        "method": cfg.method.name,
        "rank": cfg.method.rank,
        "seed": cfg.seed,
    }
    if cfg.variant:
        block["variant"] = str(cfg.variant).lstrip("-")
    return block


def _protocol(cfg: DictConfig, data, total_steps: int, world: int) -> dict:
    """What must match for runs to be compared: model, data, budget, batch, precision."""
    ident = data.identity()
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "examples": ident.get("rows"),
        "data_sha256": ident.get("content_sha256") or ident.get("sha256"),
        "max_length": cfg.data.max_length,
        "truncation": cfg.data.truncation,
        "steps": total_steps,
        "sequences_per_step": cfg.train.batch_size * cfg.train.accumulate * world,
        "precision": cfg.train.precision,
        "warmup_ratio": cfg.train.warmup_ratio,
        "grad_clip": cfg.train.grad_clip,
        "lr_multiplier": cfg.train.lr_multiplier,
    }


def _model_identity(cfg: DictConfig, dtype: str) -> dict:
    return {"name": cfg.model.name, "dtype": dtype}


def _callbacks(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            every_n_train_steps=cfg.train.checkpoint_every,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,
        ),
        TQDMProgressBar(refresh_rate=1),
    ]
    if cfg.train.spectral_every:
        from sorsa_repro.analysis.callback import SpectralCallback

        callbacks.append(
            SpectralCallback(
                every_n_steps=cfg.train.spectral_every,
                path=run_dir / "spectral.csv",
                target_modules=list(cfg.method.target_modules),
            )
        )
    return callbacks


def _loggers(cfg: DictConfig, run_dir: Path, trainable: int, total: int) -> list:
    if not cfg.logger.get("wandb"):
        return []
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_MODE", "offline")  # no account needed; `wandb sync` uploads later
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        group=cfg.experiment_name,
        name=run_dir.name,
        id=f"{cfg.experiment_name}-{run_dir.name}-{config_hash(cfg)[:8]}",
        resume="allow",
        tags=[cfg.method.name, f"r{cfg.method.rank}", f"seed{cfg.seed}"],
        save_dir=str(run_dir),
        config={
            **OmegaConf.to_container(_without_hydra(cfg), resolve=True),
            "trainable_params": trainable,
            "total_params": total,
        },
    )
    return [logger]


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


__all__ = ["TRAINING_KEYS", "config_hash", "optimizer_steps", "run_training", "validate_config"]
