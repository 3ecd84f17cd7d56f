"""Adapter methods behind one entry point: ``apply_method(model, cfg)``.

``cfg`` is a mapping (or MethodConfig) with at least ``name``, ``rank``, ``target_modules``; SORSA
also ``alpha``, ``svd`` (exact | randomized), ``niter``. Everything is validated against the model
before any SVD runs.

Every method is one entry of the registry (``sorsa_repro.method_registry``): ``apply_method`` dispatches through
it, ``validate`` reads its rank limit and checks, ``trainable_params_on_meta`` its counter.

Saved adapters (``save_adapter``): the peft methods as standard peft adapters that
``PeftModel.from_pretrained(unmodified_base, folder)`` loads (PiSSA/OLoRA/MiLoRA/SoMA converted to a rank-2r LoRA:
``peft_io``; KaSA as peft saves it: peft truncates the fresh base again when it loads it); SORSA and SVFit in this
project's own format (exact factors), plus ``save_sorsa_lora``: its weight change as a rank-2r peft LoRA adapter
(``sorsa_io``); SALT and SST in the own-layer format (``layers_io``), SALT's weight change also as a peft LoRA
(``save_lora_export``). ``load_adapter`` restores any of them as trained.
Every config records the base model as its hub id or the name the user gave (``base_model_id``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from sorsa_repro import method_registry as registry
from sorsa_repro.methods import layers_io, peft_io, peft_layers, sorsa, sorsa_io
from sorsa_repro.methods.config import DATA_METHODS, DEFAULT_TARGETS, METHODS, UNTRAINED_METHODS, MethodConfig
from sorsa_repro.methods.layers_io import AdapterLayer, adapter_layers
from sorsa_repro.methods.sorsa import SORSALinear, merge_sorsa
from sorsa_repro.methods.sorsa_penalty import orthonormal_penalty

__all__ = [
    "DATA_METHODS",
    "DEFAULT_TARGETS",
    "METHODS",
    "MethodConfig",
    "SORSALinear",
    "UNTRAINED_METHODS",
    "apply_method",
    "cast_residuals",
    "count_by_applying",
    "count_parameters",
    "effective_weights",
    "find_targets",
    "load_adapter",
    "merge_model",
    "merge_sorsa",
    "orthonormal_penalty",
    "save_adapter",
    "save_lora_export",
    "save_sorsa_lora",
    "trainable_params_on_meta",
]


def find_targets(model: nn.Module, target_modules) -> list[str]:
    """Names of the nn.Linear modules whose name ends with one of ``target_modules``."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)
    ]


def validate(model: nn.Module, cfg: MethodConfig) -> list[str]:
    """Check ``cfg`` against the model (targets exist, rank fits, the method's own checks) and return the target
    names; nothing is changed and no SVD runs."""
    targets = find_targets(model, cfg.target_modules)
    if not targets:
        raise ValueError(
            f"target_modules {list(cfg.target_modules)} match no nn.Linear in {type(model).__name__}"
        )
    entry = registry.get(cfg.name)
    if entry.check:
        registry.resolve(entry.check)(model, cfg, targets)
    for name in targets if entry.rank_limit != "none" else ():
        out_f, in_f = model.get_submodule(name).weight.shape
        if entry.rank_limit == "in" and cfg.rank > in_f:  # MiSS: r splits the input into r-wide chunks
            raise ValueError(f"rank {cfg.rank} is larger than in_features = {in_f} of {name} (MiSS: r <= in)")
        if entry.rank_limit == "min" and cfg.rank > min(out_f, in_f):
            raise ValueError(
                f"rank {cfg.rank} is larger than min(out, in) = {min(out_f, in_f)} of {name} ({out_f} x {in_f})"
            )
        if entry.rank_limit == "below_min" and cfg.rank >= min(out_f, in_f):
            raise ValueError(
                f"rank {cfg.rank} must be smaller than min(out, in) = {min(out_f, in_f)} of {name} ({out_f} x "
                f"{in_f}): {entry.display} keeps min(out, in) - r components of the base weight"
            )
    return targets


def apply_method(
    model: nn.Module,
    cfg: Mapping | MethodConfig,
    batches: list[dict] | None = None,
    initial_adapter: dict | None = None,
) -> nn.Module:
    """Adapt ``model`` with the configured method and return it (a PeftModel for PEFT methods).

    EVA and CorDA (``DATA_METHODS``) initialise from training data: ``batches`` (dicts of input_ids,
    attention_mask, labels; the training task passes the first ``init_examples`` examples of the run), or
    ``initial_adapter``: the result of that init as an earlier build kept it (``model.initial_adapter_state``),
    which a resumed run restores instead of running the data pass again."""
    cfg = MethodConfig.from_mapping(cfg)
    targets = validate(model, cfg)
    if cfg.name in DATA_METHODS and not batches and initial_adapter is None:
        raise ValueError(
            f"method {cfg.name} initialises from training data: pass batches (apply_method(model, cfg, batches)) "
            "or the initial_adapter an earlier build of the run saved"
        )
    if cfg.name not in DATA_METHODS and (batches or initial_adapter is not None):
        raise ValueError(
            f"method {cfg.name} takes no batches or initial adapter (only {', '.join(DATA_METHODS)})"
        )
    model = registry.resolve(registry.get(cfg.name).apply)(model, cfg, targets, batches, initial_adapter)
    model.method_config = cfg
    return model


@torch.no_grad()
def cast_residuals(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the frozen residual W_res of every SORSA layer and PEFT (PiSSA) layer, and the frozen weights and
    singular vectors of the own layers (SALT, SST), to ``dtype``; the trained parameters keep theirs. The
    references' mixed precision (``train.precision=reference``): W_res is computed in fp32, then stored in bf16.
    Returns the number of matrices cast."""
    count = 0
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.cast_frozen(dtype)
            count += 1
            continue
        if isinstance(module, SORSALinear):
            weight = module.weight
        elif isinstance(module, peft_layers.LoraLayer):
            weight = module.get_base_layer().weight
        else:
            continue
        weight.data = weight.data.to(dtype)
        count += 1
    return count


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def trainable_params_on_meta(model_config, cfg: Mapping | MethodConfig) -> tuple[int, int]:
    """(trainable, total) for a model config (e.g. Llama-2-7B's) built on the meta device: no weights."""
    from transformers import AutoModelForCausalLM

    cfg = MethodConfig.from_mapping(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    targets = validate(model, cfg)
    return registry.resolve(registry.get(cfg.name).count)(model, cfg, targets)


def count_by_applying(model: nn.Module, cfg: MethodConfig, targets: list[str]) -> tuple[int, int]:
    """(trainable, total) of ``cfg``'s method applied to a meta-device model: the methods whose layers build on
    the meta device from shapes alone (full, base, SORSA, SVFit, SALT, SST; no SVD runs there)."""
    model = registry.resolve(registry.get(cfg.name).apply)(model, cfg, targets, None, None)
    return count_parameters(model)


def effective_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, dense float32 weight it applies now) for each of the method's target modules; names as in the base
    model.

    The adapted layers give their current weight; a target left a plain nn.Linear gives its weight: full
    fine-tuning's (trained), and the targets a method leaves frozen (SoMA's first blocks: no change), so that
    the spectral analysis compares every method over the same matrices.
    """
    cfg = getattr(model, "method_config", None)
    plain_targets = set(find_targets(model, cfg.target_modules)) if cfg is not None else set()
    for name, module in model.named_modules():
        clean = name.removeprefix("base_model.model.")
        if isinstance(module, (SORSALinear, AdapterLayer)):
            yield clean, module.effective_weight()
        elif isinstance(module, (peft_layers.LoraLayer, peft_layers.MissLayer)):
            yield clean, peft_layers.dense_weight(module)
        elif name in plain_targets:
            yield clean, module.weight.detach().float()


@torch.no_grad()
def merge_model(model: nn.Module) -> nn.Module:
    """A plain transformers model with every adapter folded in (what vLLM and evaluation read)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return layers_io.merge_layers(merge_sorsa(model))


def _base_name(model: nn.Module, base_model: str | None) -> str | None:
    """``base_model`` or the name the model was loaded from, as ``base_model_id`` records it."""
    config = getattr(model, "config", None)  # a PeftModel forwards .config to its base model
    from sorsa_repro.models import base_model_id

    return base_model_id(base_model or getattr(config, "name_or_path", None))


def save_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """Adapter-only files for SORSA, the own layers (SALT, SST) and PEFT methods (full fine-tuning has none).

    ``base_model``: the model name as given (hub id, local folder or a packaged name); default: the name the
    model was loaded from."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        peft_io.save_peft_adapter(model, path, _base_name(model, base_model))
    elif sorsa.sorsa_layers(model):
        sorsa_io.save_sorsa_adapter(model, path, _base_name(model, base_model))
    elif adapter_layers(model):
        layers_io.save_layers_adapter(model, path, _base_name(model, base_model))
    else:
        raise ValueError("save_adapter: the model has no adapter (full fine-tuning saves the merged model)")


def save_sorsa_lora(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """SORSA's weight change as a standard peft LoRA adapter of rank 2r (for plain peft and vLLM)."""
    sorsa_io.save_sorsa_as_lora(model, path, _base_name(model, base_model))


def save_lora_export(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """The weight change as a standard peft LoRA adapter (``adapter_lora/``): SORSA and SVFit (rank 2r), SALT
    (rank r + lora_rank); the methods whose registry entry says ``lora_export``."""
    if sorsa.sorsa_layers(model):
        save_sorsa_lora(model, path, base_model)
    else:
        layers_io.save_layers_as_lora(model, path, _base_name(model, base_model))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Attach an adapter saved by ``save_adapter`` to a freshly loaded base model."""
    path = Path(path)
    if (path / sorsa_io.ADAPTER_CONFIG).exists():
        return sorsa_io.load_sorsa_adapter(model, path)
    if (path / layers_io.ADAPTER_CONFIG).exists():
        return layers_io.load_layers_adapter(model, path)
    if (path / "adapter_config.json").exists():
        return peft_io.load_peft_adapter(model, path)
    raise FileNotFoundError(
        f"no adapter in {path} (expected {sorsa_io.ADAPTER_CONFIG}, {layers_io.ADAPTER_CONFIG} or "
        "adapter_config.json)"
    )
