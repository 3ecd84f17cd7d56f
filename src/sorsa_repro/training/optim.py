"""The optimiser, validated: AdamW at the method's learning rate, cosine schedule with linear warmup.

The learning rate is a protocol fact per method (conf/method/*.yaml ``lr``: LoRA 2e-5, PiSSA 2e-5, SORSA 3e-5)
scaled by ``train.lr_multiplier`` (small scales); weight decay, warmup and clipping are ``train.*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from transformers import get_cosine_schedule_with_warmup

OPTIM_KEYS = ("lr",)  # the method section's optimiser keys


@dataclass(frozen=True)
class OptimSettings:
    lr: float  # the effective learning rate: method.lr x train.lr_multiplier
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_clip: float | None = 1.0  # max total gradient norm; None or 0: no clipping

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"train.grad_clip must be >= 0 or null, got {self.grad_clip}")


def optim_settings(cfg: DictConfig) -> OptimSettings:
    base, multiplier = float(cfg.method.lr), float(cfg.train.lr_multiplier)
    if base <= 0 or multiplier <= 0:
        raise ValueError(f"method.lr and train.lr_multiplier must be > 0, got {base} and {multiplier}")
    train = cfg.train
    return OptimSettings(base * multiplier, train.weight_decay, train.warmup_ratio, train.grad_clip)


def build_optimizer(params: list, settings: OptimSettings, total_steps: int) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW and its per-step cosine schedule."""
    fused = all(p.is_cuda for p in params)  # one kernel for all parameters on GPUs; CPU keeps foreach
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused or None
    )
    warmup = math.ceil(settings.warmup_ratio * total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
