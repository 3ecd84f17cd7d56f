"""Saving and loading SORSA adapters.

``save_sorsa_adapter`` writes this project's format (trained and initial factors, exact round trip);
``save_sorsa_as_lora`` exports the same weight change as a standard peft LoRA adapter that plain peft, and
vLLM with ``--enable-lora``, load on the unmodified base model. With W0 = W_res + scale U0 S0 V0^T:

    W - W0 = scale U S V^T - scale U0 S0 V0^T = [scale U S | -scale U0 S0] [V^T ; V0^T]    (rank <= 2r)

so lora_B (out x 2r) = [scale U S | -scale U0 S0], lora_A (2r x in) = [V^T ; V0^T], r = lora_alpha = 2r
(peft's scaling alpha / r = 1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sorsa_repro.methods.sorsa import SORSALinear, sorsa_layers

ADAPTER_WEIGHTS = "sorsa_adapter.safetensors"
ADAPTER_CONFIG = "sorsa_config.json"


def save_sorsa_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """Adapter only: trained and initial factors (safetensors) plus a small JSON config."""
    layers = sorsa_layers(model)
    if not layers:
        raise ValueError("save_sorsa_adapter: the model has no SORSA layers")
    tensors = {}
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"unmerge layer {name} before saving the adapter")
        for key, value in zip(("U", "S", "Vt"), (layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vt), strict=True):
            tensors[f"{name}.sorsa_{key}"] = value.detach().cpu().contiguous()
        for key, value in zip(("U", "S", "Vt"), layer.init_factors, strict=True):
            tensors[f"{name}.init_{key}"] = value.contiguous()
    first = next(iter(layers.values()))
    config = {
        "format": "sorsa_repro.sorsa",
        "version": 1,
        "rank": first.rank,
        "alpha": first.alpha,
        "dropout": getattr(first.dropout, "p", 0.0),
        "adapter_dtype": str(first.sorsa_U.dtype).removeprefix("torch."),
        "residual_dtype": str(first.weight.dtype).removeprefix("torch."),
        "base_dtype": str(first.base_dtype).removeprefix("torch."),
        "layers": sorted(layers),
        "base_model": base_model,
        "train_vectors": first.train_vectors,  # false: SVFit (only the singular values train)
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / ADAPTER_WEIGHTS))
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_sorsa_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild SORSA layers on a freshly loaded base model from an adapter folder (no SVD)."""
    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    adapter_dtype = getattr(torch, config["adapter_dtype"])
    for param in model.parameters():
        param.requires_grad_(False)
    residual_dtype = getattr(torch, config["residual_dtype"])
    base_dtype = config.get(
        "base_dtype", config["residual_dtype"]
    )  # adapters saved before base_dtype existed
    for name in config["layers"]:
        base = model.get_submodule(name)
        if str(base.weight.dtype).removeprefix("torch.") != base_dtype:
            raise ValueError(f"load the base model in {base_dtype} to restore this adapter exactly")
        init = tuple(tensors[f"{name}.init_{k}"] for k in ("U", "S", "Vt"))
        layer = SORSALinear(
            base,
            config["rank"],
            config["alpha"],
            config["dropout"],
            adapter_dtype,
            init_factors=init,
            train_vectors=config.get("train_vectors", True),  # adapters saved before SVFit: SORSA
        )
        layer.weight.data = layer.weight.data.to(residual_dtype)  # as training cast it (precision=reference)
        with torch.no_grad():
            for key in ("U", "S", "Vt"):
                getattr(layer, f"sorsa_{key}").copy_(tensors[f"{name}.sorsa_{key}"])
        model.set_submodule(name, layer)
    return model


@torch.no_grad()
def save_sorsa_as_lora(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """The SORSA weight change as a rank-2r peft LoRA adapter (module docstring), in float32."""
    from peft import LoraConfig

    layers = sorsa_layers(model)
    if not layers:
        raise ValueError("save_sorsa_as_lora: the model has no SORSA layers")
    tensors = {}
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"unmerge layer {name} before saving the adapter")
        u, s, vt = (t.detach().float().cpu() for t in (layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vt))
        u0, s0, vt0 = (t.float() for t in layer.init_factors)
        prefix = f"base_model.model.{name}"  # peft's key names (peft.utils.save_and_load)
        tensors[f"{prefix}.lora_A.weight"] = torch.cat([vt, vt0]).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = torch.cat([layer.scale * u * s, -layer.scale * u0 * s0], 1)
    first = next(iter(layers.values()))
    config = LoraConfig(
        r=2 * first.rank,
        lora_alpha=2 * first.rank,
        lora_dropout=getattr(first.dropout, "p", 0.0),
        target_modules=sorted({name.rsplit(".", 1)[-1] for name in layers}),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))
    from sorsa_repro.methods.peft_io import canonical_adapter_config

    canonical_adapter_config(path)  # target_modules sorted: byte-stable between identical runs
