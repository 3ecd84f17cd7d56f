"""Full fine-tuning: every weight trainable."""

from torch import nn


def apply_full(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model
