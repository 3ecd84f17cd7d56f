"""What a training run is built from: the adapted model, the Lightning module, the trainer and its
callbacks and loggers, each from the run's config."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sorsa_repro.methods import MethodConfig, apply_method, cast_residuals, count_parameters
from sorsa_repro.training.distributed import build_strategy, is_global_zero
from sorsa_repro.training.identity import run_seed
from sorsa_repro.training.validate import training_settings

log = logging.getLogger(__name__)


def build_model(
    cfg: DictConfig,
    method: MethodConfig,
    dtype: str,
    run_name: str,
    batches: list[dict] | None = None,
    initial_adapter: dict | None = None,
):
    """The base model loaded where it trains and adapted by ``method`` (tf32 first, when configured: the
    SVDs run under it). EVA/CorDA: ``batches`` of training data for their init, or (a resumed run)
    ``initial_adapter``, that init's result as the first attempt saved it (``training.init_data``).

    Returns the model, the pretrained SVDs the spectral callback compares with, the init time (s: loading
    and adapting), the trainable and total parameter counts, and the time of ``apply_method`` alone (s: for
    EVA/CorDA their data pass and decompositions)."""
    from sorsa_repro.models import load_base_model, resolve_dtype

    if cfg.trainer.accelerator == "gpu" and cfg.trainer.get("tf32", False):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    # the seed only matters for the random test model; the base model's run is seed 0 (identity.run_seed)
    model, _ = load_base_model(cfg.model.name, dtype=dtype, seed=run_seed(cfg), device=init_device(cfg))
    pretrained = _pretrained_spectra(cfg, model, dtype)
    method_started = time.perf_counter()
    if batches is not None or initial_adapter is not None:
        model = apply_method(model, method, batches, initial_adapter)
    else:
        model = apply_method(model, method)
    method_s = time.perf_counter() - method_started
    if cfg.train.precision == "reference" and method.residual_dtype:
        cast_residuals(model, resolve_dtype(method.residual_dtype))
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.get("compile"):
        model.compile()  # nn.Module.compile: in place, so state-dict keys stay those of the plain model
    trainable, total = count_parameters(model)
    init_s = time.perf_counter() - started
    log.info(
        "%s: %s trainable of %s parameters (%.2f%%), init %.1f s",
        run_name,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        init_s,
    )
    return model, pretrained, init_s, trainable, total, method_s


def build_module(cfg: DictConfig, model, total_steps: int, run_dir: Path, heldout=None):
    """The Lightning module that trains ``model`` with the method's learning rate and regularizer, measuring
    the held-out loss on ``heldout`` (``training.heldout.HeldOut``) when given."""
    from sorsa_repro.training.module import FineTuneModule

    optim, regularizer = training_settings(cfg)  # the same code that validated them
    return FineTuneModule(
        model,
        optim=optim,
        total_steps=total_steps,
        regularizer=regularizer,
        metrics_path=run_dir / "metrics.csv",
        heldout=heldout,
        hooks=method_hooks(cfg, total_steps),
    )


def method_hooks(cfg: DictConfig, total_steps: int):
    """What the method adds to training (its registry entry's ``training`` factory; none: ``MethodHooks()``)."""
    from sorsa_repro import method_registry
    from sorsa_repro.methods.hooks import MethodHooks

    entry = method_registry.get(cfg.method.name)
    if entry.training is None:
        return MethodHooks()
    section = OmegaConf.to_container(cfg.method, resolve=True)
    return method_registry.resolve(entry.training)(section, total_steps)


def build_trainer(cfg: DictConfig, run_dir: Path, total_steps: int, precision, pretrained, loggers):
    import lightning as L

    from sorsa_repro.training.checkpoints import AtomicCheckpointIO

    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=build_strategy(cfg),
        num_nodes=cfg.trainer.get("num_nodes", 1),
        precision=precision,
        max_steps=total_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.train.accumulate,
        callbacks=_callbacks(cfg, run_dir, pretrained),
        # written beside checkpoints/last.ckpt and renamed over it, the one before kept (training/checkpoints.py)
        plugins=[AtomicCheckpointIO(keep_previous=bool(cfg.train.get("keep_previous_checkpoint", True)))],
        logger=loggers or False,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )


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
    from sorsa_repro.analysis.spectral import parse_layer_name
    from sorsa_repro.methods import find_targets
    from sorsa_repro.training.spectral_callback import pretrained_svds

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
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sorsa_repro.training.console_progress import ExportNotice, TrainingBar

    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            every_n_train_steps=cfg.train.checkpoint_every,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,
        ),
        TrainingBar(refresh_rate=1),
        ExportNotice(export_names(cfg)),
    ]
    if cfg.train.spectral_every:
        from sorsa_repro.training.spectral_callback import SpectralCallback

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


def export_names(cfg: DictConfig) -> list[str]:
    """The folders a finished run writes (``task._export``)."""
    from sorsa_repro import method_registry

    entry = method_registry.get(cfg.method.name)
    adapter = cfg.train.save_adapter and entry.adapter is not None
    names = ["adapter/"] if adapter else []
    names += ["adapter_lora/"] if adapter and entry.lora_export else []
    return names + (["merged/"] if cfg.train.export_merged else [])


def build_loggers(cfg: DictConfig, run_dir: Path, trainable: int, total: int) -> list:
    if not cfg.logger.get("wandb"):
        return []
    from lightning.pytorch.loggers import WandbLogger

    from sorsa_repro.wandb_mode import logger_mode

    mode, why = logger_mode(cfg.logger.get("mode"))
    log.info(
        "W&B logging %s (%s)%s", mode, why, "; `wandb sync` uploads it later" if mode == "offline" else ""
    )
    logger = WandbLogger(
        mode=mode,
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        group=cfg.experiment_name,
        name=run_dir.name,
        id=f"{cfg.experiment_name}-{run_dir.name}",  # the folder name ends with the config hash
        resume="allow",
        tags=[cfg.method.name, f"r{cfg.method.rank}", f"seed{cfg.seed}"],
        save_dir=str(run_dir),
        config={
            **OmegaConf.to_container(without_hydra(cfg), resolve=True),
            "trainable_params": trainable,
            "total_params": total,
        },
    )
    return [logger]


def without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
