"""LoRA, PiSSA, DoRA and OLoRA through the Hugging Face ``peft`` library.

PiSSA and OLoRA change the base weights at init (W_res = W - scale * B0 A0). Their adapter folder
therefore also stores the initial factors (``initial_adapter.safetensors``), from which the loader
rebuilds the same residual on a fresh base model, bit for bit and without an SVD.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

INITIAL_ADAPTER = "initial_adapter.safetensors"
BASE_MODIFYING = ("pissa", "olora")


def lora_config(
    name: str,
    rank: int,
    alpha: float | None,
    dropout: float,
    targets: list[str],
    svd: str = "exact",
    niter: int = 4,
) -> LoraConfig:
    init: bool | str = True
    if name == "pissa":
        init = "pissa" if svd == "exact" else f"pissa_niter_{niter}"
    elif name == "olora":
        init = "olora"
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        init_lora_weights=init,
        use_dora=name == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_peft(model: nn.Module, config: LoraConfig) -> nn.Module:
    peft_model = get_peft_model(model, config)
    if _modifies_base(config):
        # snapshot B0, A0 on the CPU: the adapter folder needs them to rebuild the residual base
        peft_model.initial_adapter_state = {
            k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()
        }
    return peft_model


def _modifies_base(config: PeftConfig) -> bool:
    init = getattr(config, "init_lora_weights", True)
    return isinstance(init, str) and init.split("_niter_")[0] in BASE_MODIFYING


def save_peft_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    model.save_pretrained(str(path))
    if _modifies_base(model.peft_config["default"]):
        save_file(model.initial_adapter_state, str(path / INITIAL_ADAPTER))


@torch.no_grad()
def load_peft_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Attach a saved adapter to a freshly loaded base model, restoring the residual for PiSSA/OLoRA."""
    path = Path(path)
    config = PeftConfig.from_pretrained(str(path))
    modifies_base = _modifies_base(config)
    config.init_lora_weights = True  # structure only; the factors come from the files
    config.inference_mode = False
    peft_model = get_peft_model(model, config)
    if modifies_base:
        initial = load_file(str(path / INITIAL_ADAPTER))
        set_peft_model_state_dict(peft_model, initial)
        for layer in lora_layers(peft_model).values():
            base = layer.get_base_layer()
            # the same arithmetic peft's init does: W_res = W - scale * B0 @ A0 in float32
            delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            base.weight.data = (base.weight.data.float() - delta.float()).to(base.weight.dtype)
        peft_model.initial_adapter_state = initial
    set_peft_model_state_dict(peft_model, load_file(str(path / "adapter_model.safetensors")))
    return peft_model


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
