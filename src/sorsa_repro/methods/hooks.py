"""What a method adds to training beyond its layers, called by the training module (``training/module.py``):
a term of the loss (KaSA's regularizer), settings of the optimizer before a step (SoMA's annealed weight decay),
work after a step (SST's resampling and re-SVD), and the state a checkpoint must keep besides the trainable
parameters (SST's singular vectors). A method's registry entry names its factory (``training``); the methods
without one get ``MethodHooks()``, which does nothing.

SORSA's orthonormal regularizer keeps its own modes (``training/ortho.py``): they act on gradients around
clipping and the optimizer step, which is not a loss term.
"""

from __future__ import annotations

import torch
from torch import nn


class MethodHooks:
    """The hooks of a method without any: every hook does nothing, nothing is recorded."""

    def loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """Each micro-batch's training loss as the optimiser sees it (the logged loss stays the task's)."""
        return loss

    def before_step(self, model: nn.Module, optimizer, step: int) -> None:
        """Before the optimizer step that completes step ``step`` + 1 (``step`` steps are done)."""

    def after_step(self, model: nn.Module, optimizer, step: int) -> None:
        """After optimizer step ``step`` (1-based: the number of steps done) and its metrics."""

    def checkpoint_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys (of ``model``) a checkpoint keeps besides the trainable parameters."""
        return set()

    def value(self, model: nn.Module) -> float | None:
        """The method's regularizer value now (None: it has none)."""
        return None

    def record(self) -> dict | None:
        """result.json's ``train.method_hooks``: the settings, None for a method without hooks."""
        return None


def reset_optimizer_state(optimizer, params) -> None:
    """Forget the optimizer's state (AdamW's moments and step count) of ``params``: their values were replaced
    (SST's resampled singular vectors), so their past gradients no longer describe them."""
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in ids:
                optimizer.state.pop(p, None)
