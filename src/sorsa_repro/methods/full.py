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


def apply_full_entry(model: nn.Module, cfg, targets, batches=None, initial=None) -> nn.Module:
    """The registry's entry (``sorsa_repro.method_registry``): every weight trainable."""
    return apply_full(model)


def apply_base_entry(model: nn.Module, cfg, targets, batches=None, initial=None) -> nn.Module:
    """The registry's entry: the pretrained model, frozen."""
    return apply_base(model)
