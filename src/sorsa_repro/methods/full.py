"""Full fine-tuning: every weight trainable; and the untrained base model (``base``): none."""

from torch import nn


def apply_full(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def apply_base(model: nn.Module) -> nn.Module:
    """The pretrained model unchanged and frozen: the floor row (held-out loss, accuracy) of every table."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model
