"""The LoRA initialisations run around peft: EVA's and CorDA's data passes, MiLoRA, and the residual base of the
inits that change the base weights.

PiSSA, OLoRA, CorDA, MiLoRA and SoMA (``init_milora``: PiSSA's minor components) change the base weights at init
(W_res = W - scale * B0 A0: their registry entries say ``changes_base``, ``modifies_base``). ``restore_residual``
rebuilds that base from the initial factors B0, A0 (a loaded adapter, a resumed run), bit for bit and without an
SVD or data. KaSA changes the base too (its truncation), but inside peft and not as W - B0 A0: peft truncates a
fresh base again when it loads a KaSA adapter, so it is neither converted nor restored here.
"""

from __future__ import annotations

import torch
from peft import PeftConfig, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from torch import nn

from sorsa_repro.methods.peft_layers import lora_layers

EVA_MAX_PASSES = (
    1000  # EVA's incremental SVD cycles over its batches until it converges: a guard against a hang
)


def changes_base_init(init) -> bool:
    """Whether ``init_lora_weights`` names an init that sets W_res = W - scale B0 A0 (pissa[_niter_K], olora,
    corda, and this suite's milora and soma markers): the registry's ``changes_base`` of the method it names."""
    from sorsa_repro import method_registry

    name = init.split("_niter_")[0] if isinstance(init, str) else None
    return name in method_registry.REGISTRY and method_registry.get(name).changes_base and name != "kasa"


def modifies_base(config: PeftConfig) -> bool:
    return changes_base_init(getattr(config, "init_lora_weights", True))


def _model_inputs(batch: dict, device) -> dict:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels") if k in batch}


@torch.no_grad()
def run_one_by_one(model: nn.Module, batches: list[dict]) -> None:
    """CorDA's covariance pass: peft's hook takes one sequence per forward (it squeezes the batch dimension),
    so each sequence runs alone, without its padding."""
    device = next(model.parameters()).device
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            ids = ids[mask.bool()]
            model(input_ids=ids[None].to(device))


def eva_init(peft_model: nn.Module, batches: list[dict]) -> None:
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
def init_milora(peft_model: nn.Module, marker: str = "milora") -> nn.Module:
    """MiLoRA (arXiv 2406.09044) on a LoRA model built with ``init_lora_weights=True``: PiSSA's mirror image.
    Each target's factors become its r MINOR singular components and the residual keeps the principal ones:

        W = U S V^T,  B0 = U_min sqrt(S_min / scale),  A0 = sqrt(S_min / scale) V_min^T,  W_res = W - scale B0 A0

    (U_min, S_min, V_min: the bottom r; the division by scale as in peft's PiSSA and MiLoRA's own svd_init.py, so
    scale B0 A0 = U_min S_min V_min^T whatever alpha). peft has no such init, so the config is marked
    ``init_lora_weights=marker`` afterwards ("milora", or "soma": SoMA's init is the same on the blocks it adapts,
    ysj9909/SoMA rein/peft/sora.py sora_init with first_eigen=False): ``save_peft_adapter`` then converts it to a
    rank-2r LoRA relative to the unmodified W as it does PiSSA, and ``load_peft_adapter`` rebuilds it from the
    file without an SVD."""
    from sorsa_repro.progress import Progress

    layers = lora_layers(peft_model).values()
    what = "MiLoRA" if marker == "milora" else "SoMA"
    progress = Progress(f"{what} init (exact SVD)", len(layers), "matrices")  # a line every ~10 s
    for layer in layers:
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
        progress.update()
    progress.close()
    peft_model.peft_config["default"].init_lora_weights = marker
    peft_model.initial_adapter_state = {  # B0, A0 on the CPU, for the save conversion (as apply_peft's)
        k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()
    }
    return peft_model
