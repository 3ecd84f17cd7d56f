"""SoMA (arXiv 2412.04077; official code ysj9909/SoMA, ``rein/peft/sora.py``; published for vision foundation
models, DINOv2/EVA02 backbones), under this suite's protocol.

What it does, each with its source:

- the r MINOR singular components as the trainable factors: W = U S V^T (exact SVD, float32),
  B0 = U_min sqrt(S_min / scale), A0 = sqrt(S_min / scale) V_min^T, W_res = W - scale B0 A0 (sora.py
  ``Linear.sora_init`` with ``init="sora"`` and ``first_eigen=False``, the paper's configs,
  configs/sora/sora_dinov2-L_mask2former.py: ``lora_weight_init="sora"``, ``first_eigen=False``,
  ``lora_alpha=rank``). That is MiLoRA's init (``peft_inits.init_milora``), which builds it here on a peft LoRA.
  (The official default ``sora_niter_4`` runs ``svd_lowrank``, which returns the TOP components; the paper's
  configs use the exact ``sora``.)
- the first blocks frozen: ``start_lora_idx`` (sora.py ``SoraModel._find_and_replace``: only blocks with index
  >= start_lora_idx are adapted), 8 of DINOv2-L's 24 blocks in the paper's configs.
- weight decay annealed: AdamW at weight decay 0.05, cosine-annealed per iteration to 1e-5 over the run (the
  same config's ``CosineAnnealingParamScheduler(param_name="weight_decay", eta_min=1e-5)``, mmengine's cosine:
  wd(t) = wd_end + (wd_start - wd_end) (1 + cos(pi t / T)) / 2 at step t of T).

How the block freezing maps to a decoder LLM: a ViT's blocks and a decoder's layers are both a stack of
residual blocks counted from the input; the paper freezes the first third (8 of 24) to keep the general,
low-level features the early blocks hold. Here the first round(L / 3) of the L decoder layers (counted from the
embedding) are left as they are and the rest adapted: Llama-2-7B 11 of 32 (21 adapted), SmolLM2-135M 10 of 30.
Whether the early layers of a language model play the role of a ViT's early blocks is this suite's assumption,
not a finding of the paper; ``method.first_block`` sets another start. peft's ``layers_to_transform`` selects
the blocks, so the saved adapter is a standard peft one (converted to a rank-2r LoRA, as MiLoRA's).

Not carried over: the official ``bias="all"`` trains the biases of the targeted modules (Llama and SmolLM2 have
none); the official lr multipliers of a segmentation head (``backbone lr_mult 0.5``) have no counterpart.
"""

from __future__ import annotations

import math

from torch import nn

from sorsa_repro.methods.hooks import MethodHooks

FROZEN_FRACTION = 8 / 24  # the paper's start_lora_idx = 8 of DINOv2-L's 24 blocks


def num_blocks(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    blocks = getattr(config, "num_hidden_layers", None)
    if not blocks:
        raise ValueError("SoMA needs the model's number of decoder blocks (config.num_hidden_layers)")
    return int(blocks)


def first_adapted_block(model: nn.Module, cfg) -> int:
    """``method.first_block``, or round(L / 3) of the model's L decoder blocks."""
    blocks = num_blocks(model)
    return round(blocks * FROZEN_FRACTION) if cfg.first_block is None else cfg.first_block


def adapted_blocks(model: nn.Module, cfg) -> list[int]:
    return list(range(first_adapted_block(model, cfg), num_blocks(model)))


def block_of(name: str) -> int | None:
    """The decoder block index in a module name (``model.layers.<i>.``), as peft's layers_to_transform reads it."""
    parts = name.split(".")
    for key, value in zip(parts, parts[1:], strict=False):
        if key == "layers" and value.isdigit():
            return int(value)
    return None


def adapted_targets(model: nn.Module, cfg, targets: list[str]) -> list[str]:
    keep = set(adapted_blocks(model, cfg))
    return [n for n in targets if block_of(n) in keep]


def check_entry(model: nn.Module, cfg, targets: list[str]) -> None:
    blocks = num_blocks(model)
    first = first_adapted_block(model, cfg)
    if first >= blocks:
        raise ValueError(
            f"method.first_block={first}: the model has {blocks} decoder blocks, so none would adapt"
        )
    if not adapted_targets(model, cfg, targets):
        raise ValueError(
            f"SoMA: no target module of blocks {first}..{blocks - 1} found (names model.layers.<i>.)"
        )


def annealed_weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    """mmengine's cosine annealing of a parameter, per iteration: start at step 0, end at step total_steps."""
    return end + (start - end) * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1))) / 2


class SomaHooks(MethodHooks):
    def __init__(self, start: float, end: float, total_steps: int):
        if not (start >= 0 and end >= 0):
            raise ValueError(f"SoMA's weight decay must be >= 0, got {start} and {end}")
        self.start, self.end, self.total_steps = start, end, total_steps

    def before_step(self, model: nn.Module, optimizer, step: int) -> None:
        wd = annealed_weight_decay(step, self.total_steps, self.start, self.end)
        for group in optimizer.param_groups:
            group["weight_decay"] = wd

    def record(self) -> dict:
        return {
            "weight_decay": "cosine",
            "start": self.start,
            "end": self.end,
            "steps": self.total_steps,
            "source": "ysj9909/SoMA configs/sora/sora_dinov2-L_mask2former.py CosineAnnealingParamScheduler",
        }


def training_hooks(method: dict, total_steps: int) -> SomaHooks:
    return SomaHooks(float(method["weight_decay_start"]), float(method["weight_decay_end"]), total_steps)
