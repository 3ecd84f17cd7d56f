"""LoRA, PiSSA, DoRA, OLoRA, MiCA, EVA, CorDA (LoRA inits), KaSA, MiSS, and the suite's MiLoRA and SoMA inits through
the Hugging Face ``peft`` library: their configs (``lora_config``, ``read_peft_config``), applying them to a model
(``apply_peft``) and the registry's entry for all of them (``apply_entry``).

The inits run around peft (EVA's and CorDA's data passes, MiLoRA/SoMA, the residual base): ``peft_inits``; saving and
loading adapters: ``peft_io``; the adapted layers (dense weights, parameter counts): ``peft_layers``.

EVA and CorDA initialise from activations of training data (``DATA_METHODS``): ``apply_peft`` takes the
batches (the training task passes the first micro-batches of the run's epoch 0). EVA sets A to the top-r
right singular vectors of each target's inputs (B = 0, base untouched; peft's rank redistribution is off,
rho = 1, so every target keeps rank r, LoRA's budget); CorDA (IPM) decomposes W C (C: the inputs' covariance)
and subtracts the top-r part from W, as PiSSA does with W. MiCA (B = the r minor left singular vectors,
frozen; A = 0, trained) and MiSS (a zero r x out block shared by the input's r-wide chunks) need no data and
leave the base untouched. KaSA (``methods/kasa.py``) truncates the base and adapts with B diag(d) A; SoMA
(``methods/soma.py``) is MiLoRA's init on the decoder blocks it adapts (``layers_to_transform``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from peft import (
    EvaConfig,
    KasaConfig,
    LoraConfig,
    MissConfig,
    PeftConfig,
    get_peft_model,
    set_peft_model_state_dict,
)
from peft.tuners.lora.config import CordaConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

from sorsa_repro import method_registry
from sorsa_repro.methods import peft_inits

# the peft inits that read training data (their registry entries' data_init; each named as its init): apply_peft
# needs batches
DATA_METHODS = method_registry.data_methods()


def lora_config(
    name: str,
    rank: int,
    alpha: float | None,
    dropout: float,
    targets: list[str],
    svd: str = "exact",
    niter: int = 4,
    kasa: tuple[float, float] | None = None,
    layers: list[int] | None = None,
) -> LoraConfig:
    """The peft config of a method by name. ``kasa``: KaSA's (beta, gamma) (``KasaConfig``: the base truncated by
    its r smallest components, B diag(d) A); ``layers``: the decoder blocks to adapt (SoMA), all when None."""
    if name == "miss":  # no alpha: MiSS has no scale
        return MissConfig(
            r=rank, miss_dropout=dropout, target_modules=targets, bias="none", task_type="CAUSAL_LM"
        )
    init: bool | str = True
    if name == "pissa":
        init = "pissa" if svd == "exact" else f"pissa_niter_{niter}"
    elif name in ("olora", "mica", "eva", "corda"):
        init = name
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        init_lora_weights=init,
        use_dora=name == "dora",
        bias="none",
        task_type="CAUSAL_LM",
        # rho 1: no rank redistribution, every target keeps rank r (peft's default 2 moves ranks between layers by
        # explained variance, so the parameter count would depend on the data); label-masked: response tokens only
        eva_config=EvaConfig(rho=1.0) if name == "eva" else None,
        # KaSA (peft 0.21 tuners/lora/variants.py KasaLinearVariant): truncation at init, the learnable diag
        kasa_config=KasaConfig(beta=kasa[0], gamma=kasa[1]) if name == "kasa" else None,
        layers_to_transform=layers,
        corda_config=CordaConfig(corda_method="ipm")
        if name == "corda"
        else None,  # the paper's fine-tuning mode
    )


def peft_config_file(path: str | os.PathLike) -> Path:
    """method=peft's config: an adapter_config.json, or a folder holding one."""
    path = Path(path).expanduser()
    file = path / "adapter_config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"method.config={path}: no such file (expected a peft adapter_config.json)")
    return file


def read_peft_config(path: str | os.PathLike) -> PeftConfig:
    """The peft config class its ``peft_type`` names (LoraConfig, VeraConfig, ...), for training from scratch."""
    file = peft_config_file(path)
    try:
        config = PeftConfig.from_peft_type(**json.loads(file.read_text()))  # dispatches on peft_type
    except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"method.config={file}: not a peft adapter config ({type(err).__name__}: {err})"
        ) from err
    config.inference_mode = False
    return config


def peft_rank(path: str | os.PathLike) -> int:
    """The config's rank r (0 for methods without one, e.g. IA3): the r<rank> of the run folder's name."""
    file = peft_config_file(path)
    try:
        config = json.loads(file.read_text())
        return int(config.get("r") or 0)
    except (AttributeError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"method.config={file}: not a peft adapter config ({type(err).__name__}: {err})"
        ) from err


def _layer_progress(model: nn.Module, config: PeftConfig):
    """Progress lines (every ~10 s) while peft adapts the target layers one by one."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from sorsa_repro.progress import Progress, counting_calls

    targets = config.target_modules
    total = None
    if isinstance(targets, list | set | tuple):
        total = sum(1 for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in set(targets))
    init = getattr(config, "init_lora_weights", True)
    what = f"{config.peft_type.value.lower()} init" + (f" ({init})" if isinstance(init, str) else "")
    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type, type(None))
    return counting_calls(tuner, "_create_and_replace", Progress(what, total, "matrices"))


def needs_data(config: PeftConfig) -> bool:
    return getattr(config, "init_lora_weights", None) in DATA_METHODS


def apply_peft(
    model: nn.Module, config: PeftConfig, batches: list[dict] | None = None, initial: dict | None = None
) -> nn.Module:
    """``get_peft_model``; EVA and CorDA first run their data pass on ``batches`` (dicts of input_ids,
    attention_mask, labels). ``initial``: CorDA's initial factors, saved by an earlier build of the same run
    (``initial_adapter_state``): the residual base is rebuilt from them exactly, with no data pass (a resume)."""
    init = getattr(config, "init_lora_weights", None)
    if initial is not None:  # the init's result, saved by an earlier build of the run: no SVD, no data
        if not needs_data(config):  # (PiSSA/OLoRA rebuild from the weights: their SVD is deterministic)
            raise ValueError(f"initial factors restore the data-driven inits {DATA_METHODS}, not {init!r}")
        config = copy.deepcopy(config)
        config.init_lora_weights = True  # structure only
        peft_model = get_peft_model(model, config)
        if peft_inits.changes_base_init(init):
            peft_inits.restore_residual(peft_model, initial)
        else:
            set_peft_model_state_dict(peft_model, initial)
            peft_model.initial_adapter_state = initial
        peft_model.peft_config["default"].init_lora_weights = init
        return peft_model
    if needs_data(config) and not batches:
        raise ValueError(f"init_lora_weights={init!r} initialises from training data: pass batches")
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        preprocess_corda(model, config, run_model=lambda: peft_inits.run_one_by_one(model, batches))
    with _layer_progress(model, config):  # PiSSA's, OLoRA's, MiCA's SVDs run per layer in here
        peft_model = get_peft_model(model, config)
    if init == "eva":
        peft_inits.eva_init(peft_model, batches)
    if peft_inits.modifies_base(config) or needs_data(config):
        # snapshot B0, A0 on the CPU: saving converts the adapter to a LoRA relative to the unmodified base
        # (PiSSA, OLoRA, CorDA); a resumed EVA/CorDA run rebuilds its init from it (apply_peft's ``initial``)
        peft_model.initial_adapter_state = {
            k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()
        }
    return peft_model


def check_entry(model: nn.Module, cfg, targets: list[str]) -> None:
    """method=peft: its config file reads, and it is not an init that needs the training task's data pass."""
    config = read_peft_config(cfg.config)  # a missing or malformed file fails here
    if needs_data(config):
        raise ValueError(
            f"method.config={cfg.config}: init_lora_weights={config.init_lora_weights!r} initialises from "
            f"training data; use method={config.init_lora_weights} (the training task runs its data pass)"
        )


def apply_entry(model: nn.Module, cfg, targets: list[str], batches=None, initial=None) -> nn.Module:
    """The registry's entry of every method peft builds (``sorsa_repro.method_registry``): its config
    (``lora_config`` by name, or method=peft's file), ``apply_peft``, then the inits this suite runs around peft
    (MiLoRA's and SoMA's minor components)."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in targets})
    if cfg.name == "peft":
        config = read_peft_config(cfg.config)
        if config.target_modules is None:  # peft would guess by architecture; the protocol's targets instead
            config.target_modules = suffixes
        return apply_peft(model, config)
    config = lora_config(
        cfg.name, cfg.rank, cfg.alpha, cfg.dropout, suffixes, cfg.svd, cfg.niter, **extra_settings(model, cfg)
    )
    model = apply_peft(model, config, batches, initial)
    if cfg.name in ("milora", "soma"):  # built as plain LoRA (init True); now the minor factors, the residual
        model = peft_inits.init_milora(model, marker=cfg.name)
    return model


def extra_settings(model: nn.Module, cfg) -> dict:
    """``lora_config``'s keyword arguments beyond the common ones: KaSA's coefficients, SoMA's adapted blocks."""
    if cfg.name == "kasa":
        return {"kasa": (cfg.kasa_beta, cfg.kasa_gamma)}
    if cfg.name == "soma":
        from sorsa_repro.methods.soma import adapted_blocks

        return {"layers": adapted_blocks(model, cfg)}
    return {}
