"""Saving and loading peft adapters.

Every adapter folder is a standard peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
that ``PeftModel.from_pretrained(base, folder)`` and vLLM load on the UNMODIFIED base model.

PiSSA, OLoRA, CorDA and MiLoRA (``init_milora``: PiSSA's minor components) change the base weights at init
(W_res = W - scale * B0 A0), and peft re-runs that init
when it loads a config with ``init_lora_weights="pissa"``: a folder saved as is gives a different model on
a fresh base. They are therefore saved the way peft documents for sharing, converted to a plain LoRA of
rank 2r relative to W (``save_pretrained(..., path_initial_model_for_weight_conversion=...)``):

    W_res + B A - W = B A - B0 A0 = [B | -B0] [A ; A0]      (config: r -> 2r, lora_alpha -> 2 alpha, init True)

The converted factors hold the initial ones, so ``conversion.json`` (original init, rank and alpha) is
all ``load_peft_adapter`` needs to rebuild the exact trainable PiSSA/OLoRA/CorDA structure (residual base, r
factors), bit for bit and without an SVD or data. Plain peft ignores that file.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from sorsa_repro.methods.peft_inits import modifies_base, restore_residual

CONVERSION = "conversion.json"
CONVERSION_KEYS = ("init_lora_weights", "r", "lora_alpha")  # the PiSSA/OLoRA config before conversion
INITIAL_ADAPTER = "initial_adapter.safetensors"  # adapters saved before the conversion (read only)


def save_peft_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """A standard peft adapter in ``path``; PiSSA/OLoRA converted to a rank-2r LoRA (module docstring)."""
    path = Path(path)
    config = model.peft_config["default"]
    # save_embedding_layers=False: no embedding is trained here; "auto" would fetch the base model's config
    # from the hub to compare vocabulary sizes (peft/utils/save_and_load.py, get_peft_model_state_dict)
    if not modifies_base(config):
        model.save_pretrained(str(path), save_embedding_layers=False)
    else:
        with tempfile.TemporaryDirectory() as tmp, _kept_rng(model), warnings.catch_warnings():
            # peft loads <tmp>/initial as a second adapter, subtracts it and deletes it again
            # (peft/tuners/lora/model.py, LoraModel._convert_state_dict_for_initial_model; it writes the
            # config there itself, with init_lora_weights=True: peft_model.py, PeftModel.save_pretrained)
            initial = Path(tmp) / "initial"
            initial.mkdir()
            save_file(model.initial_adapter_state, str(initial / "adapter_model.safetensors"))
            warnings.filterwarnings("ignore", message=".* changes the base weights")  # "convert it": we do
            model.save_pretrained(
                str(path), save_embedding_layers=False, path_initial_model_for_weight_conversion=str(initial)
            )
        conversion = {key: getattr(config, key) for key in CONVERSION_KEYS}
        (path / CONVERSION).write_text(json.dumps(conversion, indent=2) + "\n")
    # peft writes the name the model was loaded from (e.g. a local cache folder): the name as given instead
    canonical_adapter_config(path, {"base_model_name_or_path": base_model} if base_model else {})


SET_FIELDS = ("target_modules", "exclude_modules")  # sets in peft's configs


def canonical_adapter_config(path: str | os.PathLike, updates: dict | None = None) -> None:
    """Rewrite ``path``/adapter_config.json byte-stable: peft keeps target_modules (and a few others) as sets
    and writes them in the process's hash order, so two identical runs wrote different files; here sorted,
    keys sorted. ``updates``: fields to set on the way."""
    file = Path(path) / "adapter_config.json"
    saved = {**json.loads(file.read_text()), **(updates or {})}
    for key in SET_FIELDS:
        value = saved.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            saved[key] = sorted(value)
    file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _kept_rng(model: nn.Module):
    """Loading the temporary adapter draws random init weights: leave the caller's RNG streams as they were."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    return torch.random.fork_rng(devices=sorted(devices, key=str))


def split_converted(weights: dict[str, torch.Tensor], rank: int) -> tuple[dict, dict]:
    """(trained, initial) factors from a converted adapter: A' = [A ; A0], B' = [B | -B0]."""
    trained, initial = {}, {}
    for key, value in weights.items():
        if ".lora_A." in key:
            trained[key], initial[key] = value[:rank], value[rank:].clone()
        elif ".lora_B." in key:
            trained[key], initial[key] = value[:, :rank], -value[:, rank:]
        else:
            raise ValueError(f"unexpected tensor {key} in a converted PiSSA/OLoRA adapter")
    return trained, initial


@torch.no_grad()
def load_peft_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Attach a saved adapter to a freshly loaded base model; PiSSA/OLoRA come back as they trained: the
    residual base W - scale * B0 A0 and rank-r factors."""
    path = Path(path)
    config = PeftConfig.from_pretrained(str(path))
    if not isinstance(config, LoraConfig):  # e.g. MiSS: peft's own loading, nothing is converted
        config.inference_mode = False
        peft_model = get_peft_model(model, config)
        set_peft_model_state_dict(peft_model, load_file(str(path / "adapter_model.safetensors")))
        return peft_model
    init = config.init_lora_weights  # set again after building the structure, so saving converts again
    weights, initial = load_file(str(path / "adapter_model.safetensors")), None
    if (path / CONVERSION).exists():
        conversion = json.loads((path / CONVERSION).read_text())
        init, config.r, config.lora_alpha = (conversion[key] for key in CONVERSION_KEYS)
        weights, initial = split_converted(weights, config.r)
    elif modifies_base(config):  # saved before the conversion: unconverted factors and the initial ones
        initial = load_file(str(path / INITIAL_ADAPTER))
    # structure only; the factors come from the files. EVA's init needs no data to build (B = 0, A random);
    # MiCA's runs its SVD (as plain peft does): it declares B frozen, and the file's B replaces the SVD's
    config.init_lora_weights = init if init in ("eva", "mica") else True
    config.inference_mode = False
    peft_model = get_peft_model(model, config)
    if initial is not None:
        restore_residual(peft_model, initial)
    peft_model.peft_config["default"].init_lora_weights = init
    set_peft_model_state_dict(peft_model, weights)
    return peft_model
