"""Adapter methods behind one entry point: ``apply_method(model, cfg)``.

``cfg`` is a mapping (or MethodConfig) with at least ``name``, ``rank``, ``target_modules``; SORSA
also ``alpha``, ``svd`` (exact | randomized), ``niter``. Everything is validated against the model
before any SVD runs.

Saved adapters (``save_adapter``): LoRA, DoRA, PiSSA, OLoRA and MiLoRA as standard peft adapters that
``PeftModel.from_pretrained(unmodified_base, folder)`` loads (PiSSA/OLoRA/MiLoRA converted to a rank-2r LoRA:
``peft_io``); SORSA and SVFit in this project's own format (exact factors), plus ``save_sorsa_lora``: its weight
change as a rank-2r peft LoRA adapter (``sorsa_io``). ``load_adapter`` restores any of them as trained.
Every config records the base model as its hub id or the name the user gave (``base_model_id``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from sorsa_repro.methods import peft_inits, peft_io, peft_layers, peft_methods, sorsa, sorsa_io
from sorsa_repro.methods.config import DATA_METHODS, DEFAULT_TARGETS, METHODS, UNTRAINED_METHODS, MethodConfig
from sorsa_repro.methods.full import apply_base, apply_full
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
    "count_parameters",
    "effective_weights",
    "find_targets",
    "load_adapter",
    "merge_model",
    "merge_sorsa",
    "orthonormal_penalty",
    "save_adapter",
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
    """Check ``cfg`` against the model (targets exist, rank fits) and return the target names."""
    targets = find_targets(model, cfg.target_modules)
    if not targets:
        raise ValueError(
            f"target_modules {list(cfg.target_modules)} match no nn.Linear in {type(model).__name__}"
        )
    if cfg.name == "peft":
        config = peft_methods.read_peft_config(cfg.config)  # a missing or malformed file fails here
        if peft_methods.needs_data(config):
            raise ValueError(
                f"method.config={cfg.config}: init_lora_weights={config.init_lora_weights!r} initialises from "
                f"training data; use method={config.init_lora_weights} (the training task runs its data pass)"
            )
    elif cfg.name == "miss":  # MiSS's r splits the input into r-wide chunks: r <= in_features only
        for name in targets:
            in_f = model.get_submodule(name).in_features
            if cfg.rank > in_f:
                raise ValueError(
                    f"rank {cfg.rank} is larger than in_features = {in_f} of {name} (MiSS: r <= in)"
                )
    elif cfg.name not in ("full", *UNTRAINED_METHODS):
        for name in targets:
            out_f, in_f = model.get_submodule(name).weight.shape
            if cfg.rank > min(out_f, in_f):
                raise ValueError(
                    f"rank {cfg.rank} is larger than min(out, in) = {min(out_f, in_f)} of {name} ({out_f} x {in_f})"
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
    if cfg.name == "full":
        model = apply_full(model)
    elif cfg.name == "base":
        model = apply_base(model)
    elif cfg.name in ("sorsa", "svfit"):  # SVFit: SORSA's layer with frozen singular vectors
        from sorsa_repro.models import resolve_dtype

        model = sorsa.apply_sorsa(
            model,
            targets,
            cfg.rank,
            cfg.alpha,
            cfg.dropout,
            resolve_dtype(cfg.adapter_dtype),
            cfg.svd,
            cfg.niter,
            train_vectors=cfg.name == "sorsa",
        )
    elif cfg.name == "peft":
        config = peft_methods.read_peft_config(cfg.config)
        if config.target_modules is None:  # peft would guess by architecture; the protocol's targets instead
            config.target_modules = sorted({n.rsplit(".", 1)[-1] for n in targets})
        model = peft_methods.apply_peft(model, config)
    else:
        config = peft_methods.lora_config(
            cfg.name,
            cfg.rank,
            cfg.alpha,
            cfg.dropout,
            sorted({n.rsplit(".", 1)[-1] for n in targets}),
            cfg.svd,
            cfg.niter,
        )
        model = peft_methods.apply_peft(model, config, batches, initial_adapter)
        if cfg.name == "milora":  # built as plain LoRA (init True); now the minor factors and the residual
            model = peft_inits.init_milora(model)
    model.method_config = cfg
    return model


@torch.no_grad()
def cast_residuals(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the frozen residual W_res of every SORSA layer and PEFT (PiSSA) layer to ``dtype``; the
    adapters keep theirs. The references' mixed precision (``train.precision=reference``): W_res is computed
    in fp32, then stored in bf16. Returns the number of matrices cast."""
    count = 0
    for module in model.modules():
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
    if cfg.name == "full":
        return count_parameters(apply_full(model))
    if cfg.name == "base":
        return count_parameters(apply_base(model))
    # per target: r * (in + out) (LoRA and its inits), + r singular values (SORSA), + out (DoRA); r * in (MiCA,
    # its B is frozen), r * out (MiSS): peft_layers.added_parameters
    for param in model.parameters():
        param.requires_grad_(False)
    if cfg.name in ("sorsa", "svfit"):  # SVFit: only the r singular values per target
        sorsa.apply_sorsa(model, targets, cfg.rank, train_vectors=cfg.name == "sorsa")
        return count_parameters(model)
    added = [
        peft_layers.added_parameters(cfg.name, cfg.rank, *model.get_submodule(n).weight.shape)
        for n in targets
    ]
    return sum(t for t, _ in added), count_parameters(model)[1] + sum(a for _, a in added)


def effective_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, dense float32 weight it applies now) for each adapted layer; names as in the base model.

    For full fine-tuning the adapted layers are the method's target modules.
    """
    cfg = getattr(model, "method_config", None)
    full_targets = (
        set(find_targets(model, cfg.target_modules)) if cfg is not None and cfg.name == "full" else set()
    )
    for name, module in model.named_modules():
        clean = name.removeprefix("base_model.model.")
        if isinstance(module, SORSALinear):
            yield clean, module.effective_weight()
        elif isinstance(module, (peft_layers.LoraLayer, peft_layers.MissLayer)):
            yield clean, peft_layers.dense_weight(module)
        elif name in full_targets:
            yield clean, module.weight.detach().float()


@torch.no_grad()
def merge_model(model: nn.Module) -> nn.Module:
    """A plain transformers model with every adapter folded in (what vLLM and evaluation read)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return merge_sorsa(model)


def _base_name(model: nn.Module, base_model: str | None) -> str | None:
    """``base_model`` or the name the model was loaded from, as ``base_model_id`` records it."""
    config = getattr(model, "config", None)  # a PeftModel forwards .config to its base model
    from sorsa_repro.models import base_model_id

    return base_model_id(base_model or getattr(config, "name_or_path", None))


def save_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """Adapter-only files for SORSA and PEFT methods (full fine-tuning has no adapter).

    ``base_model``: the model name as given (hub id, local folder or a packaged name); default: the name the
    model was loaded from."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        peft_io.save_peft_adapter(model, path, _base_name(model, base_model))
    elif sorsa.sorsa_layers(model):
        sorsa_io.save_sorsa_adapter(model, path, _base_name(model, base_model))
    else:
        raise ValueError("save_adapter: the model has no adapter (full fine-tuning saves the merged model)")


def save_sorsa_lora(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """SORSA's weight change as a standard peft LoRA adapter of rank 2r (for plain peft and vLLM)."""
    sorsa_io.save_sorsa_as_lora(model, path, _base_name(model, base_model))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Attach an adapter saved by ``save_adapter`` to a freshly loaded base model."""
    path = Path(path)
    if (path / sorsa_io.ADAPTER_CONFIG).exists():
        return sorsa_io.load_sorsa_adapter(model, path)
    if (path / "adapter_config.json").exists():
        return peft_io.load_peft_adapter(model, path)
    raise FileNotFoundError(
        f"no adapter in {path} (expected {sorsa_io.ADAPTER_CONFIG} or adapter_config.json)"
    )
