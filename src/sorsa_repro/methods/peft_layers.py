"""The adapted layers of a peft model (LoRA and its inits, MiSS): finding them, the dense weight each applies
and the parameters a method adds per target."""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.miss import MissLayer
from torch import nn


@torch.no_grad()
def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The dense float32 weight a LoRA or MiSS layer applies now (base + its weight change)."""
    weight = layer.get_base_layer().weight.detach().float()
    if layer.merged:
        return weight
    if isinstance(layer, MissLayer):
        if layer.miss_fn == "bat":
            return weight + layer.get_delta_weight("default", weight.clone()).float()
        # MiSS's "delta" is the whole weight, W[:, j] += block[j mod r, :]; it writes into its argument (a copy);
        # a bf16 block is promoted to float32 by the float32 weight
        return layer.get_delta_weight_miss("default", weight.clone()).float()
    return weight + layer.get_delta_weight("default").detach().float()


def added_parameters(name: str, rank: int, out_f: int, in_f: int) -> tuple[int, int]:
    """(trainable, all) parameters a method adds to one out_f x in_f target at rank r."""
    if name == "miss":  # one r x out block
        return rank * out_f, rank * out_f
    if name == "mica":  # A (r x in) trains, B (out x r) is frozen
        return rank * in_f, rank * (in_f + out_f)
    # DoRA: + the magnitude vector (out); KaSA: + the r learnable singular values (lora_diag)
    lora = rank * (in_f + out_f) + {"dora": out_f, "kasa": rank}.get(name, 0)
    return lora, lora


def count_entry(model: nn.Module, cfg, targets: list[str]) -> tuple[int, int]:
    """(trainable, total) of a peft method on a meta-device model, from ``added_parameters`` per target (SoMA: the
    targets of the blocks it adapts)."""
    from sorsa_repro.methods import count_parameters

    for param in model.parameters():
        param.requires_grad_(False)
    if cfg.name == "soma":
        from sorsa_repro.methods.soma import adapted_targets

        targets = adapted_targets(model, cfg, targets)
    added = [added_parameters(cfg.name, cfg.rank, *model.get_submodule(n).weight.shape) for n in targets]
    return sum(t for t, _ in added), count_parameters(model)[1] + sum(a for _, a in added)


def peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted layers of a peft model: LoRA (and its inits) and MiSS."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (LoraLayer, MissLayer))}


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
