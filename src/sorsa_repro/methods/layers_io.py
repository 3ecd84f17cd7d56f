"""This suite's own adapter layers beyond SORSA (SALT, SST): their common base class, merging them into plain
Linear layers, and their adapter format.

Every such layer (``AdapterLayer``) replaces one nn.Linear, keeps its bias frozen, and answers
``effective_weight()`` (the dense float32 weight it applies now: the spectral analysis and merging read it),
``adapter_state()`` (the tensors that restore it exactly on the same base model), ``layer_config()`` and
``restore(base, config, tensors)``; SALT also ``lora_factors()`` (its weight change as a LoRA relative to the
unmodified base: ``adapter_lora/``).

The adapter folder: ``layers_config.json`` (format, version, base model, and per layer its kind and settings) and
``layers_adapter.safetensors`` (per layer ``<module name>.<tensor>``). ``load_layers_adapter`` rebuilds the layers
on a freshly loaded base model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_CONFIG = "layers_config.json"
ADAPTER_WEIGHTS = "layers_adapter.safetensors"
FORMAT = "sorsa_repro.layers"


class AdapterLayer(nn.Module):
    """Base class of the own layers: shapes, the frozen bias, merging. Subclasses set ``kind`` and implement
    ``effective_weight``, ``adapter_state``, ``layer_config``, ``restore`` and ``cast_frozen``."""

    kind = ""

    def _init_shapes(self, base: nn.Linear) -> None:
        self.in_features, self.out_features = base.in_features, base.out_features
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)
        self.base_dtype = base.weight.dtype  # the base model's dtype (what merging returns to)

    def effective_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear applying this layer's current weight (in the base model's dtype)."""
        weight = self.effective_weight()
        plain = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=weight.device,
            dtype=self.base_dtype,
        )  # fmt: skip
        with torch.no_grad():
            plain.weight.copy_(weight.to(self.base_dtype))
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def layer_classes() -> dict[str, type]:
    from sorsa_repro.methods.salt import SALTLinear
    from sorsa_repro.methods.sst import SSTLinear

    return {cls.kind: cls for cls in (SALTLinear, SSTLinear)}


@torch.no_grad()
def merge_layers(model: nn.Module) -> nn.Module:
    """Fold every own layer into a plain nn.Linear (in place); the result needs no project code."""
    for name, layer in adapter_layers(model).items():
        model.set_submodule(name, layer.merged_linear())
    return model


def save_layers_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("save_layers_adapter: the model has no SALT or SST layers")
    tensors, configs = {}, {}
    for name, layer in layers.items():
        configs[name] = layer.layer_config()
        for key, value in layer.adapter_state().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    config = {"format": FORMAT, "version": 1, "base_model": base_model, "layers": configs}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / ADAPTER_WEIGHTS))
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_layers_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild the saved layers on a freshly loaded base model; everything else frozen."""
    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path / ADAPTER_CONFIG}: not a {FORMAT} adapter")
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    classes = layer_classes()
    for param in model.parameters():
        param.requires_grad_(False)
    for name, layer_config in config["layers"].items():
        prefix = f"{name}."
        own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        layer = classes[layer_config["kind"]].restore(model.get_submodule(name), layer_config, own)
        model.set_submodule(name, layer)
    return model


@torch.no_grad()
def save_layers_as_lora(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """The layers' weight change W - W0 as a standard peft LoRA adapter (float32, scaling 1) that plain peft and
    vLLM load on the unmodified base: for each layer ``lora_factors()`` gives B (out x k), A (k x in) with
    B A = W - W0; every layer has the same k (SALT: r + lora_rank)."""
    from peft import LoraConfig

    from sorsa_repro.methods.peft_io import canonical_adapter_config

    layers = adapter_layers(model)
    tensors, ranks = {}, set()
    for name, layer in layers.items():
        b, a = layer.lora_factors()
        prefix = f"base_model.model.{name}"  # peft's key names (peft.utils.save_and_load)
        tensors[f"{prefix}.lora_A.weight"] = a.float().cpu().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.float().cpu().contiguous()
        ranks.add(a.shape[0])
    if len(ranks) != 1:
        raise ValueError(f"save_layers_as_lora: the layers' LoRA ranks differ ({sorted(ranks)})")
    rank = ranks.pop()
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=sorted({n.rsplit(".", 1)[-1] for n in layers}), bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=base_model, inference_mode=True,
    )  # fmt: skip
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))
    canonical_adapter_config(path)
