"""One training run: validate and load the data (no writes), then, in the claimed run folder, train (or
resume, or skip a finished run) and export.

``run_training(cfg)`` does both; ``train.py`` splits them so that the evaluation after training runs under
the same run-folder lock.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sorsa_repro.methods import (
    MethodConfig,
    apply_method,
    cast_residuals,
    count_parameters,
    merge_model,
    save_adapter,
)
from sorsa_repro.methods.config import TRAINING_KEYS
from sorsa_repro.provenance import provenance
from sorsa_repro.results import (
    atomic_dir,
    atomic_write_text,
    load_result,
    remove_temp_files,
    run_folder_lock,
    stage,
    update_result,
)
from sorsa_repro.training.distributed import build_strategy, fsdp_root, is_global_zero, whole_model
from sorsa_repro.training.identity import config_hash
from sorsa_repro.training.ortho import reference_coefficient
from sorsa_repro.training.resources import peak_memory_mb, reset_peak_memory
from sorsa_repro.training.validate import (
    PRECISIONS,
    RunFolderConflictError,
    data_seed,
    validate_config,
    world_size,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.ckpt"
# what a run writes into its folder; removed only when overwrite=true replaces another config's run
RUN_OUTPUTS = (
    "checkpoints",
    "adapter",
    "merged",
    "predictions",
    "metrics.csv",
    "spectral.csv",
    "result.json",
)


def optimizer_steps(num_examples: int, batch_size: int, accumulate: int, world: int, epochs: int) -> int:
    """floor(ceil(examples / (batch x world)) / accumulate) x epochs: the paper's 100000 / 128 -> 781.

    The reference Trainer (transformers 4.38 / 4.44, ``num_update_steps_per_epoch = len(dataloader) //
    gradient_accumulation_steps``) drops the last partial accumulation window; so does the data module.
    """
    micro_batches = math.ceil(num_examples / (batch_size * world))
    return (micro_batches // accumulate) * epochs


@dataclass
class PreparedRun:
    """A validated config with its data loaded and encoded: all that can fail before the folder is touched."""

    cfg: DictConfig
    method: MethodConfig
    run_dir: Path
    digest: str
    tokenizer: object
    data: object  # MathDataModule
    total_steps: int


def prepare_training(cfg: DictConfig) -> PreparedRun:
    """Validate ``cfg`` and load + encode the training data; writes nothing."""
    from sorsa_repro.data import MathDataModule
    from sorsa_repro.models import load_tokenizer

    method = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    data = MathDataModule(
        tokenizer,
        name=cfg.data.name,
        limit=cfg.data.limit,
        max_length=cfg.data.max_length,
        truncation=cfg.data.truncation,
        tokenization=cfg.data.get("tokenization", "separate"),
        long_prompts=cfg.data.get("long_prompts", "error"),
        seed=cfg.seed,
        data_seed=data_seed(cfg),
        batch_size=cfg.train.batch_size,
        num_workers=cfg.trainer.num_workers,
        data_dir=cfg.data.get("data_dir"),
    )
    num_examples = data.num_train_examples  # loads and encodes: too-long prompts fail here
    per_step = cfg.train.batch_size * cfg.train.accumulate * world_size(cfg)
    steps = optimizer_steps(num_examples, cfg.train.batch_size, cfg.train.accumulate, world_size(cfg), 1)
    if steps == 0:
        raise ValueError(
            f"{num_examples} training examples of {cfg.data.name} make no optimizer step of {per_step} sequences "
            "(train.batch_size x train.accumulate x devices): use more data or a smaller batch"
        )
    total_steps = cfg.train.max_steps or steps * cfg.train.epochs
    return PreparedRun(cfg, method, Path(cfg.run_dir), config_hash(cfg), tokenizer, data, total_steps)


def run_training(cfg: DictConfig) -> Path:
    """Train the configured run into ``cfg.run_dir`` (resuming or skipping as the folder allows)."""
    prepared = prepare_training(cfg)
    with claim_run_folder(prepared.run_dir):
        return train_in_folder(prepared)


def claim_run_folder(run_dir: Path):
    """The run folder's lock, taken by global rank 0 only (other ranks work in rank 0's folder)."""
    from contextlib import nullcontext

    return run_folder_lock(run_dir) if is_global_zero() else nullcontext(run_dir)


def train_in_folder(run: PreparedRun) -> Path:
    """Train in the claimed folder; a finished run of the same config is left as it is."""
    cfg, run_dir = run.cfg, run.run_dir
    previous = load_result(run_dir)
    if previous.get("config_hash") not in (None, run.digest):
        if not cfg.get("overwrite", False):  # checked before; the folder may have changed since
            raise RunFolderConflictError(f"run folder {run_dir} now holds another config's run")
        if is_global_zero():
            log.warning("overwrite=true: replacing the run of another config in %s", run_dir)
            for name in RUN_OUTPUTS:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        previous = {}
    elif previous.get("train", {}).get("status") == "finished":
        log.info("%s already finished training (config %s): not training again", run_dir, run.digest)
        return run_dir
    if is_global_zero():
        remove_temp_files(run_dir)  # a killed export's half-written folder
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(_without_hydra(cfg), resolve=True))
        update_result(run_dir, {"config_hash": run.digest, "run": _run_block(cfg)})
    with stage(run_dir, "train", enabled=is_global_zero()):
        _fit_and_export(run, previous.get("train", {}))
    return run_dir


def _fit_and_export(run: PreparedRun, before: dict) -> None:
    import lightning as L

    from sorsa_repro.models import load_base_model
    from sorsa_repro.training.module import FineTuneModule

    cfg, run_dir, method = run.cfg, run.run_dir, run.method
    L.seed_everything(cfg.seed, workers=True)
    model_dtype, precision = PRECISIONS[cfg.train.precision]
    if cfg.trainer.accelerator == "gpu" and cfg.trainer.get("tf32", False):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    memory_scope = reset_peak_memory()
    started = time.perf_counter()
    model, _ = load_base_model(cfg.model.name, dtype=model_dtype, seed=cfg.seed, device=init_device(cfg))
    pretrained = _pretrained_spectra(cfg, model, model_dtype)
    model = apply_method(model, method)
    residual_dtype = cfg.method.get("residual_dtype")
    if cfg.train.precision == "reference" and residual_dtype:
        from sorsa_repro.models import resolve_dtype

        cast_residuals(model, resolve_dtype(residual_dtype))
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.get("compile"):
        model.compile()  # nn.Module.compile: in place, so state-dict keys stay those of the plain model
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
    ortho = _ortho_settings(cfg)
    module = FineTuneModule(
        model,
        lr=lr,
        total_steps=run.total_steps,
        gamma=ortho.get("gamma", 0.0),
        ortho_mode=ortho.get("mode", "reference"),
        ortho_coef=ortho.get("coefficient", 0.0),
        weight_decay=cfg.train.weight_decay,
        warmup_ratio=cfg.train.warmup_ratio,
        grad_clip=cfg.train.grad_clip,
        metrics_path=run_dir / "metrics.csv",
    )
    if is_global_zero():
        update_result(
            run_dir,
            {
                "train": {
                    "total_steps": run.total_steps,
                    "trainable_params": trainable,
                    "total_params": total,
                    "init_time_s": round(init_s, 2),
                    "lr": lr,
                    "ortho": ortho or None,
                },
                "protocol": {"train": _protocol(cfg, run.data, run.total_steps, world_size(cfg))},
                "provenance": {
                    **provenance(),
                    "command": " ".join(["python -m sorsa_repro.train", *sys.argv[1:]]),
                    "model": _model_identity(cfg, model_dtype),
                    "data": run.data.identity(),
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
        max_steps=run.total_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.train.accumulate,
        callbacks=_callbacks(cfg, run_dir, pretrained),
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
        trainer.fit(module, datamodule=run.data, ckpt_path=str(ckpt) if ckpt.exists() else None)
    finally:
        for lg in loggers:
            lg.finalize("success")
    fit_s = time.perf_counter() - started
    if trainer.global_step < run.total_steps:
        raise RuntimeError(f"training stopped at step {trainer.global_step} of {run.total_steps}")
    saved = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)
    if saved != trainer.global_step or not ckpt.exists():  # (a full-FT checkpoint is GBs: write it once)
        trainer.save_checkpoint(ckpt)  # a kill during the export below resumes here, with nothing to train
    attempt = {
        "start_step": trainer.global_step if module.start_step is None else module.start_step,
        "end_step": trainer.global_step,
        "init_time_s": round(init_s, 2),
        "fit_time_s": round(fit_s, 2),
        "peak_memory_mb": peak_memory_mb(),
    }
    if trainer.is_global_zero:
        update_result(run_dir, {"train": _fit_statistics(run_dir, before, attempt, memory_scope)})
    with whole_model(model, fsdp_root(trainer)):  # under FSDP: all ranks gather, rank 0 writes
        if trainer.is_global_zero:
            _export(model, run.tokenizer, cfg, run_dir, method)
    if trainer.is_global_zero:
        attempts = load_result(run_dir)["train"]["attempts"]
        attempts[-1]["wall_time_s"] = round(time.perf_counter() - started, 2)
        update_result(
            run_dir,
            {
                "train": {
                    "attempts": attempts,
                    "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 2),
                }
            },
        )


def _ortho_settings(cfg: DictConfig) -> dict:
    """SORSA's regularizer as this run applies it (empty for other methods): mode, gamma, and the
    coefficient of the reference mode (``sorsa_repro.training.ortho``)."""
    if cfg.method.name != "sorsa":
        return {}
    mode = cfg.method.get("ortho_mode", "reference")
    gamma = float(cfg.method.get("gamma", 0.0) or 0.0)
    coef = reference_coefficient(gamma, float(cfg.method.lr), int(cfg.method.get("ortho_accumulation", 64)))
    return {"mode": mode, "gamma": gamma, "coefficient": coef if mode == "reference" else None}


def _fit_statistics(run_dir: Path, before: dict, attempt: dict, memory_scope: str) -> dict:
    """The train block after a fit: this attempt appended; steps and loss from metrics.csv, so an attempt
    that had nothing left to train (a kill during the export) keeps the statistics of the one that trained."""
    attempts = [*before.get("attempts", []), {**attempt, "wall_time_s": attempt["fit_time_s"]}]
    rows = _metric_rows(run_dir / "metrics.csv")
    last = rows[-1] if rows else {}
    return {
        "steps": attempt["end_step"],
        "final_loss": float(last["loss"]) if last.get("loss") not in (None, "") else None,
        "attempts": attempts,
        # continued from a checkpoint: an attempt that started after step 0 and trained
        "resumed": any(0 < a["start_step"] < a["end_step"] for a in attempts),
        "fit_time_s": round(sum(a["fit_time_s"] for a in attempts), 2),
        "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 2),
        "peak_memory_mb": max(a["peak_memory_mb"] for a in attempts),
        "peak_memory_scope": memory_scope,
    }


def _metric_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _export(model, tokenizer, cfg, run_dir: Path, method: MethodConfig) -> None:
    if cfg.train.save_adapter and method.name != "full":
        with atomic_dir(run_dir / "adapter") as tmp:
            save_adapter(model, tmp, base_model=cfg.model.name)
    if cfg.train.export_merged:
        merged = merge_model(model)
        with atomic_dir(run_dir / "merged") as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


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
        "tokenization": cfg.data.get("tokenization", "separate"),
        "steps": total_steps,
        "sequences_per_step": cfg.train.batch_size * cfg.train.accumulate * world,
        "precision": cfg.train.precision,
        "warmup_ratio": cfg.train.warmup_ratio,
        "grad_clip": cfg.train.grad_clip,
        "lr_multiplier": cfg.train.lr_multiplier,
    }


def _model_identity(cfg: DictConfig, dtype: str) -> dict:
    return {"name": cfg.model.name, "dtype": dtype}


def init_device(cfg: DictConfig) -> str:
    """Where the base model is loaded and adapted: the GPU this process trains on (so SORSA's and PiSSA's
    SVDs run there), else the CPU. FSDP shards a model it is given on the CPU, so it starts there."""
    strategy = cfg.trainer.strategy
    fsdp = not isinstance(strategy, str) and strategy.get("name") == "fsdp"
    if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() and not fsdp:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def _pretrained_spectra(cfg: DictConfig, model, dtype: str) -> dict | None:
    """SVDs of the pretrained target matrices the spectral callback compares with (once per sweep)."""
    if not cfg.train.spectral_every or not is_global_zero():
        return None
    from sorsa_repro.analysis.callback import pretrained_svds
    from sorsa_repro.analysis.spectral import parse_layer_name
    from sorsa_repro.methods import find_targets

    stride = int(cfg.train.get("spectral_layer_stride", 1))
    names = [
        n
        for n in find_targets(model, cfg.method.target_modules)
        if (parse_layer_name(n)[0] or 0) % stride == 0
    ]
    return pretrained_svds(
        (cfg.model.name, dtype, cfg.seed if cfg.model.name == "tiny-random" else 0), model, names
    )


def _callbacks(cfg: DictConfig, run_dir: Path, pretrained: dict | None = None) -> list:
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
                layer_stride=int(cfg.train.get("spectral_layer_stride", 1)),
                pretrained=pretrained,
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
        id=f"{cfg.experiment_name}-{run_dir.name}",  # the folder name ends with the config hash
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


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


__all__ = [
    "TRAINING_KEYS",
    "PreparedRun",
    "config_hash",
    "optimizer_steps",
    "prepare_training",
    "run_training",
    "train_in_folder",
    "validate_config",
]
