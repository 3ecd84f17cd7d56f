"""LoRA, PiSSA, DoRA, OLoRA, MiCA, EVA, CorDA (LoRA inits) and MiSS through the Hugging Face ``peft`` library.

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

EVA and CorDA initialise from activations of training data (``DATA_METHODS``): ``apply_peft`` takes the
batches (the training task passes the first micro-batches of the run's epoch 0). EVA sets A to the top-r
right singular vectors of each target's inputs (B = 0, base untouched; peft's rank redistribution is off,
rho = 1, so every target keeps rank r, LoRA's budget); CorDA (IPM) decomposes W C (C: the inputs' covariance)
and subtracts the top-r part from W, as PiSSA does with W. MiCA (B = the r minor left singular vectors,
frozen; A = 0, trained) and MiSS (a zero r x out block shared by the input's r-wide chunks) need no data and
leave the base untouched.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from peft import EvaConfig, LoraConfig, MissConfig, PeftConfig, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.config import CordaConfig
from peft.tuners.miss import MissLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

CONVERSION = "conversion.json"
CONVERSION_KEYS = ("init_lora_weights", "r", "lora_alpha")  # the PiSSA/OLoRA config before conversion
INITIAL_ADAPTER = "initial_adapter.safetensors"  # adapters saved before the conversion (read only)
BASE_MODIFYING = (
    "pissa",
    "olora",
    "corda",
    "milora",
)  # milora: this project's init (init_milora), not peft's
DATA_METHODS = ("eva", "corda")  # initialised from training data: apply_peft needs batches
EVA_MAX_PASSES = (
    1000  # EVA's incremental SVD cycles over its batches until it converges: a guard against a hang
)


def lora_config(
    name: str,
    rank: int,
    alpha: float | None,
    dropout: float,
    targets: list[str],
    svd: str = "exact",
    niter: int = 4,
) -> LoraConfig:
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
    return int(json.loads(peft_config_file(path).read_text()).get("r") or 0)


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
        if init in BASE_MODIFYING:
            restore_residual(peft_model, initial)
        else:
            set_peft_model_state_dict(peft_model, initial)
            peft_model.initial_adapter_state = initial
        peft_model.peft_config["default"].init_lora_weights = init
        return peft_model
    if needs_data(config) and not batches:
        raise ValueError(f"init_lora_weights={init!r} initialises from training data: pass batches")
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        preprocess_corda(model, config, run_model=lambda: _run_one_by_one(model, batches))
    peft_model = get_peft_model(model, config)
    if init == "eva":
        _eva_init(peft_model, batches)
    if _modifies_base(config) or needs_data(config):
        # snapshot B0, A0 on the CPU: saving converts the adapter to a LoRA relative to the unmodified base
        # (PiSSA, OLoRA, CorDA); a resumed EVA/CorDA run rebuilds its init from it (apply_peft's ``initial``)
        peft_model.initial_adapter_state = {
            k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()
        }
    return peft_model


def _model_inputs(batch: dict, device) -> dict:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels") if k in batch}


@torch.no_grad()
def _run_one_by_one(model: nn.Module, batches: list[dict]) -> None:
    """CorDA's covariance pass: peft's hook takes one sequence per forward (it squeezes the batch dimension),
    so each sequence runs alone, without its padding."""
    device = next(model.parameters()).device
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            ids = ids[mask.bool()]
            model(input_ids=ids[None].to(device))


def _eva_init(peft_model: nn.Module, batches: list[dict]) -> None:
    """peft's EVA init on ``batches`` (every process the same batches: no gathering across ranks). It cycles
    over them until the top-r components converge (on the tiny random test model: 50-230 passes over 2-8
    batches); the number of forward passes is kept as ``peft_model.eva_forward_passes``; more than
    EVA_MAX_PASSES is an error, not a hang."""
    from peft.tuners.lora.eva import initialize_lora_eva_weights

    device = next(peft_model.parameters()).device
    inputs = [_model_inputs(b, device) for b in batches]
    limit, passes = EVA_MAX_PASSES, [0]

    def forward(model, batch):
        passes[0] += 1
        if passes[0] > limit:
            raise RuntimeError(
                f"EVA did not converge in {limit} forward passes over {len(inputs)} batches: use more examples "
                "(method.init_examples), or fewer than r label tokens per batch made it skip them all"
            )
        return model(**batch)

    initialize_lora_eva_weights(
        peft_model, inputs, forward_fn=forward, gather_distributed_inputs=False, show_progress_bar=False
    )
    peft_model.eva_forward_passes = passes[0]


@torch.no_grad()
def restore_residual(peft_model: nn.Module, initial: dict[str, torch.Tensor]) -> None:
    """Set the initial factors and the residual base W - scale * B0 A0 (from the unmodified W), with the same
    arithmetic as peft's PiSSA/OLoRA/CorDA inits (in float32); keeps ``initial`` for the save conversion."""
    set_peft_model_state_dict(peft_model, initial)
    for layer in lora_layers(peft_model).values():
        base = layer.get_base_layer()
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        base.weight.data = (base.weight.data.float() - delta.float()).to(base.weight.dtype)
    peft_model.initial_adapter_state = initial


@torch.no_grad()
def init_milora(peft_model: nn.Module) -> nn.Module:
    """MiLoRA (arXiv 2406.09044) on a LoRA model built with ``init_lora_weights=True``: PiSSA's mirror image.
    Each target's factors become its r MINOR singular components and the residual keeps the principal ones:

        W = U S V^T,  B0 = U_min sqrt(S_min / scale),  A0 = sqrt(S_min / scale) V_min^T,  W_res = W - scale B0 A0

    (U_min, S_min, V_min: the bottom r; the division by scale as in peft's PiSSA and MiLoRA's own svd_init.py, so
    scale B0 A0 = U_min S_min V_min^T whatever alpha). peft has no such init, so the config is marked
    ``init_lora_weights="milora"`` afterwards: ``save_peft_adapter`` then converts it to a rank-2r LoRA relative
    to the unmodified W as it does PiSSA, and ``load_peft_adapter`` rebuilds it from the file without an SVD."""
    for layer in lora_layers(peft_model).values():
        base = layer.get_base_layer()
        weight = base.weight
        r = layer.r["default"]
        # the EXACT SVD, in float32 whatever the model's dtype: the minor components are the bottom of the
        # spectrum, and a randomized SVD (torch.svd_lowrank sketches the range of W) only finds its top; so
        # method.svd is ignored, as by the other LoRA inits
        u, s, vt = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        root = (s[-r:] / layer.scaling["default"]).sqrt()
        layer.lora_A["default"].weight.copy_(root[:, None] * vt[-r:])
        layer.lora_B["default"].weight.copy_(u[:, -r:] * root)
        # the residual from the factors as stored, with restore_residual's arithmetic: a loaded adapter rebuilds
        # it bit for bit
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        base.weight.data = (weight.data.float() - delta.float()).to(weight.dtype)
    peft_model.peft_config["default"].init_lora_weights = "milora"
    peft_model.initial_adapter_state = {  # B0, A0 on the CPU, for the save conversion (as apply_peft's)
        k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()
    }
    return peft_model


def _modifies_base(config: PeftConfig) -> bool:
    init = getattr(config, "init_lora_weights", True)
    return isinstance(init, str) and init.split("_niter_")[0] in BASE_MODIFYING


def save_peft_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """A standard peft adapter in ``path``; PiSSA/OLoRA converted to a rank-2r LoRA (module docstring)."""
    path = Path(path)
    config = model.peft_config["default"]
    # save_embedding_layers=False: no embedding is trained here; "auto" would fetch the base model's config
    # from the hub to compare vocabulary sizes (peft/utils/save_and_load.py, get_peft_model_state_dict)
    if not _modifies_base(config):
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
    if base_model:  # peft writes the name the model was loaded from, e.g. a local cache folder
        saved = json.loads((path / "adapter_config.json").read_text())
        saved["base_model_name_or_path"] = base_model
        (path / "adapter_config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


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
    elif _modifies_base(config):  # saved before the conversion: unconverted factors and the initial ones
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
    lora = rank * (in_f + out_f) + (out_f if name == "dora" else 0)  # DoRA: + the magnitude vector
    return lora, lora


def peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted layers of a peft model: LoRA (and its inits) and MiSS."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (LoraLayer, MissLayer))}


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
