"""One training run: validate and load the data (no writes), then, in the claimed run folder, train (or
resume, or skip a finished run) and export.

``run_training(cfg)`` does both; ``train.py`` splits them so that the evaluation after training runs under
the same run-folder lock.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sorsa_repro import method_registry
from sorsa_repro.methods import (
    UNTRAINED_METHODS,
    MethodConfig,
    merge_model,
    save_adapter,
    save_lora_export,
)
from sorsa_repro.progress import PhaseTimes
from sorsa_repro.results import (
    atomic_dir,
    atomic_write_text,
    load_result,
    remove_temp_files,
    run_folder_lock,
    stage,
    update_result,
)
from sorsa_repro.training.checkpoints import CHECKPOINT, resume_checkpoint
from sorsa_repro.training.derived import apply_derived_settings
from sorsa_repro.training.distributed import fsdp_root, is_global_zero, whole_model
from sorsa_repro.training.heldout import heldout_set
from sorsa_repro.training.identity import config_hash
from sorsa_repro.training.init_data import InitData, init_data, load_initial, save_initial
from sorsa_repro.training.record import (
    attempt_record,
    fit_statistics,
    run_block,
    start_record,
    with_export_time,
)
from sorsa_repro.training.resources import peak_memory_mb, reset_peak_memory
from sorsa_repro.training.setup import (
    build_loggers,
    build_model,
    build_module,
    build_trainer,
    without_hydra,
)
from sorsa_repro.training.validate import (
    PRECISIONS,
    RunFolderConflictError,
    data_seed,
    validate_config,
    world_size,
)

log = logging.getLogger(__name__)

# what a run writes into its folder; removed only when overwrite=true replaces another config's run
RUN_OUTPUTS = (
    "checkpoints",
    "adapter",
    "adapter_lora",
    "merged",
    "predictions",
    "metrics.csv",
    "spectral.csv",
    "result.json",
    "error.txt",
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
    init_data: InitData | None = None  # EVA/CorDA: the training batches their init reads


def prepare_training(cfg: DictConfig) -> PreparedRun:
    """Validate ``cfg`` and load + encode the training data; writes nothing."""
    from sorsa_repro.data import MathDataModule
    from sorsa_repro.models import load_tokenizer

    apply_derived_settings(cfg)  # method=peft: the rank of its config file (training/derived.py)
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
        fields=cfg.data.get("fields"),  # your own data (conf/data/custom.yaml); None for the built-in sets
        split=cfg.data.get("split"),
        config=cfg.data.get("config"),
        heldout_size=cfg.data.get("heldout_size", 0),
    )
    num_examples = data.num_train_examples  # loads and encodes: too-long prompts fail here
    per_step = cfg.train.batch_size * cfg.train.accumulate * world_size(cfg)
    steps = optimizer_steps(num_examples, cfg.train.batch_size, cfg.train.accumulate, world_size(cfg), 1)
    if steps == 0 and method.name not in UNTRAINED_METHODS:
        raise ValueError(
            f"{num_examples} training examples of {cfg.data.name} make no optimizer step of {per_step} sequences "
            "(train.batch_size x train.accumulate x devices): use more data or a smaller batch"
        )
    total_steps = cfg.train.max_steps or steps * cfg.train.epochs
    init = init_data(data, method)  # EVA/CorDA: too few examples or tokens fail here
    return PreparedRun(cfg, method, Path(cfg.run_dir), config_hash(cfg), tokenizer, data, total_steps, init)


def run_training(cfg: DictConfig) -> Path:
    """Train the configured run into ``cfg.run_dir`` (resuming or skipping as the folder allows)."""
    prepared = prepare_training(cfg)
    with claim_run_folder(prepared.run_dir):
        return train_in_folder(prepared)


def claim_run_folder(run_dir: Path):
    """The run folder's lock, taken by global rank 0 only (other ranks work in rank 0's folder)."""
    from contextlib import nullcontext

    return run_folder_lock(run_dir) if is_global_zero() else nullcontext(run_dir)


def train_in_folder(prepared: PreparedRun) -> Path:
    """Train in the claimed folder; a finished run of the same config is left as it is."""
    cfg, run_dir = prepared.cfg, prepared.run_dir
    previous = load_result(run_dir)
    if previous.get("config_hash") not in (None, prepared.digest):
        if not cfg.get("overwrite", False):  # checked before; the folder may have changed since
            raise RunFolderConflictError(f"run folder {run_dir} now holds another config's run")
        if is_global_zero():
            log.warning("overwrite=true: replacing the run of another config in %s", run_dir)
            for name in RUN_OUTPUTS:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        previous = {}
    elif previous.get("train", {}).get("status") == "finished":
        log.info("%s already finished training (config %s): not training again", run_dir, prepared.digest)
        return run_dir
    if is_global_zero():
        remove_temp_files(run_dir)  # a killed export's half-written folder
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(without_hydra(cfg), resolve=True))
        update_result(run_dir, {"config_hash": prepared.digest, "run": run_block(cfg)})
    with (
        stage(run_dir, "train", enabled=is_global_zero()),
        attempt_record(run_dir, enabled=is_global_zero()) as progress,  # every attempt, however it ends
    ):
        _fit_and_export(prepared, progress)
    if is_global_zero() and not cfg.train.get("keep_checkpoints", True):
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: nothing left to resume
    return run_dir


def _fit_and_export(prepared: PreparedRun, progress: dict) -> None:
    """Build, fit (resuming from the checkpoint if there is one), record and export, in that order;
    ``progress`` tells ``attempt_record`` what an interrupted attempt got to."""
    import lightning as L

    cfg, run_dir = prepared.cfg, prepared.run_dir
    L.seed_everything(cfg.seed, workers=True)
    model_dtype, precision = PRECISIONS[cfg.train.precision]
    memory_scope = progress["memory_scope"] = reset_peak_memory()
    started = time.perf_counter()
    resume = resume_checkpoint(run_dir, set_aside=is_global_zero())  # an unreadable one is named
    # EVA/CorDA: a resumed run restores its init from the first attempt's result instead of reading the data
    initial = load_initial(run_dir) if prepared.init_data and resume is not None else None
    batches = prepared.init_data.batches if prepared.init_data and initial is None else None
    model, pretrained, init_s, trainable, total, method_s = build_model(
        cfg, prepared.method, model_dtype, run_dir.name, batches, initial
    )
    progress["init_time_s"] = round(init_s, 2)
    if batches is not None and is_global_zero():
        save_initial(run_dir, model.initial_adapter_state)  # before the first checkpoint
    if prepared.method.name in UNTRAINED_METHODS:  # the base model: its held-out loss and export, no step
        if is_global_zero():
            from sorsa_repro.training.untrained import record_untrained

            counts = {"trainable_params": trainable, "total_params": total, "init_time_s": round(init_s, 2)}
            record_untrained(prepared, model, model_dtype, counts, started, memory_scope)
            _export(model, prepared.tokenizer, cfg, run_dir, prepared.method)
            train = load_result(run_dir)["train"]
            update_result(run_dir, {"train": with_export_time(train, time.perf_counter() - started)})
        return
    heldout = heldout_set(cfg, prepared.data)
    module = progress["module"] = build_module(cfg, model, prepared.total_steps, run_dir, heldout)
    if is_global_zero():
        settings = {
            "trainable_params": trainable,
            "total_params": total,
            "init_time_s": round(init_s, 2),
            "lr": module.optim.lr,
            "lr_multiplier": float(cfg.train.lr_multiplier),
            "ortho": module.regularizer.record(),
        }
        if module.hooks.record() is not None:  # KaSA's regularizer, SoMA's weight decay, SST's rounds
            settings["method_hooks"] = module.hooks.record()
        if batches is not None:  # the data pass of EVA/CorDA: what it read and what it cost (in init_time_s)
            passes = getattr(model, "eva_forward_passes", None)
            settings["init_data"] = {
                **prepared.init_data.identity,
                "time_s": round(method_s, 2),  # apply_method: the data pass and the decompositions
                **({"forward_passes": passes} if passes is not None else {}),
            }
        update_result(run_dir, start_record(cfg, prepared, settings, model_dtype, world_size(cfg)))
    loggers = build_loggers(cfg, run_dir, trainable, total)
    trainer = build_trainer(cfg, run_dir, prepared.total_steps, precision, pretrained, loggers)
    _fit(trainer, module, prepared, loggers, resume)
    attempt = {
        "start_step": trainer.global_step if module.start_step is None else module.start_step,
        "end_step": trainer.global_step,
        "init_time_s": round(init_s, 2),
        **({"init_data": "restored" if initial is not None else "read"} if prepared.init_data else {}),
        "fit_time_s": round(time.perf_counter() - started, 2),
        "heldout_time_s": round(module.heldout_seconds, 2),
        "peak_memory_mb": peak_memory_mb(),
    }
    if trainer.is_global_zero:
        update_result(run_dir, {"train": fit_statistics(run_dir, attempt, memory_scope)})
    with whole_model(model, fsdp_root(trainer)):  # under FSDP: all ranks gather, rank 0 writes
        if trainer.is_global_zero:
            _export(model, prepared.tokenizer, cfg, run_dir, prepared.method)
    if trainer.is_global_zero:
        train = load_result(run_dir)["train"]
        update_result(run_dir, {"train": with_export_time(train, time.perf_counter() - started)})


def _fit(trainer, module, prepared: PreparedRun, loggers: list, resume: Path | None) -> None:
    """Fit to the run's last step (from ``resume``, a checkpoint, if given) and leave a checkpoint of that step."""
    ckpt = prepared.run_dir / CHECKPOINT
    try:
        trainer.fit(module, datamodule=prepared.data, ckpt_path=str(resume) if resume else None)
    finally:
        for lg in loggers:
            lg.finalize("success")
    if trainer.global_step < prepared.total_steps:
        raise RuntimeError(f"training stopped at step {trainer.global_step} of {prepared.total_steps}")
    saved = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)
    exports = cfg_exports(prepared.cfg)
    if exports and (saved != trainer.global_step or not ckpt.exists()):  # (a full-FT checkpoint is GBs: once)
        trainer.save_checkpoint(ckpt)  # a kill during the export below resumes here, with nothing to train


def cfg_exports(cfg) -> bool:
    """Whether the run writes exports after training (a kill during them resumes from a final checkpoint)."""
    return bool(cfg.train.save_adapter or cfg.train.export_merged)


def _export(model, tokenizer, cfg, run_dir: Path, method: MethodConfig) -> None:
    times = PhaseTimes("exports written", log)  # one line: the time of each
    entry = method_registry.get(method.name)
    if cfg.train.save_adapter and entry.adapter is not None:
        with times.phase("adapter/"), atomic_dir(run_dir / "adapter") as tmp:
            save_adapter(model, tmp, base_model=cfg.model.name)
    # adapter/ is SORSA's, SVFit's and SALT's own format; this is the same weight change as a peft LoRA
    if cfg.train.save_adapter and entry.lora_export:
        with times.phase("adapter_lora/"), atomic_dir(run_dir / "adapter_lora") as tmp:
            save_lora_export(model, tmp, base_model=cfg.model.name)
    if cfg.train.export_merged:
        with times.phase("merged/"):
            merged = merge_model(model)
            with atomic_dir(run_dir / "merged") as tmp:
                merged.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    times.close()


__all__ = [
    "PreparedRun",
    "config_hash",
    "optimizer_steps",
    "prepare_training",
    "run_training",
    "train_in_folder",
    "validate_config",
]
