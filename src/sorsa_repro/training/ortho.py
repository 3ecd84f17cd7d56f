"""SORSA's orthonormal regularizer in training: its validated settings and its three modes (DESIGN.md 2).

``reference`` (the default): after clipping, add ``coefficient`` x dL_orth to the factors' gradients, as the
reference trainer does; ``decoupled``: a separate SGD step of size gamma on L_orth after the optimizer step;
``loss``: gamma x L_orth added to the training loss.

The reference coefficient. The SORSA reference trainer adds, after gradient clipping and before the AdamW
step, the gradient of ``gamma / lr * L_orth`` with ``lr`` the *base* learning rate (Gunale0926/SORSA@809cca0
``sorsalib/src/sorsa/trainer.py:2656-2661``), through ``accelerator.backward``, which divides by the
gradient-accumulation steps: 64 in the paper's run (``scripts/train_sorsa.sh:8-9``, 2 sequences x 64 on
one GPU). The effective coefficient is therefore ``gamma / (lr * 64)`` = 4e-4 / (3e-5 * 64) = 0.2083.
This suite fixes that effective coefficient: ``k`` is the reference's 64 (``method.ortho_accumulation``),
not this run's accumulation, so the strength does not change with the device layout (DDP 8 x 8 would give
the reference 1.67), the micro-batch split, or a small scale's ``train.lr_multiplier`` (``lr`` is the
method's base lr). ``${ortho_coef:gamma,lr,k}`` in conf/method/sorsa.yaml shows it
(``--cfg job --resolve``); result.json records the settings under ``train.ortho``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from sorsa_repro import method_registry

ORTHO_MODES = ("reference", "decoupled", "loss")
# the method section's regularizer keys (conf/method/sorsa.yaml); ortho_coef is the resolved coefficient, shown
REGULARIZER_KEYS = ("gamma", "ortho_mode", "ortho_accumulation", "ortho_coef")
# the methods with the orthonormal regularizer (registry: regularizer="orthonormal"): SORSA; SVFit freezes the
# vectors, its gamma is refused (training/validate.py)
REGULARIZED_METHODS = tuple(m.name for m in method_registry.ENTRIES if m.regularizer == "orthonormal")


def reference_coefficient(gamma: float, base_lr: float, accumulation: int) -> float:
    """gamma / (base lr x reference accumulation steps): the factor on dL_orth added to the gradients."""
    for name, value in (("gamma", gamma), ("lr", base_lr), ("ortho_accumulation", accumulation)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"method.{name}={value!r} must be a number")
    if base_lr <= 0 or accumulation < 1:
        raise ValueError(f"base lr must be > 0 and accumulation >= 1, got {base_lr} and {accumulation}")
    return float(gamma) / (float(base_lr) * int(accumulation))


@dataclass(frozen=True)
class Regularizer:
    """How the regularizer enters this run; ``FineTuneModule`` calls its hooks. This base class is the
    absent regularizer (methods without one): every hook does nothing and it records nothing."""

    gamma: float
    mode = ""  # the subclasses' ``method.ortho_mode``

    def __post_init__(self):
        if not self.gamma >= 0:
            raise ValueError(f"method.gamma must be >= 0, got {self.gamma}")

    def record(self) -> dict | None:
        """result.json's ``train.ortho``: mode, gamma and (reference mode) the coefficient."""
        return {"mode": self.mode, "gamma": self.gamma, "coefficient": None} if self.mode else None

    def loss(self, module, loss: torch.Tensor) -> torch.Tensor:  # per micro-batch
        return loss

    def before_clip(self, module) -> None:
        pass

    def after_clip(self, module) -> None:
        pass

    def after_step(self, module) -> None:
        pass


@dataclass(frozen=True)
class ReferenceMode(Regularizer):
    coefficient: float = 0.0
    mode = "reference"

    def record(self) -> dict:
        return {**super().record(), "coefficient": self.coefficient}

    def after_clip(self, module) -> None:
        """grad += coefficient x dL_orth: unclipped, then through AdamW with the task gradient."""
        if self.coefficient:
            params, grads = module.penalty_grads()
            torch._foreach_add_([p.grad for p in params], grads, alpha=self.coefficient)


@dataclass(frozen=True)
class DecoupledMode(Regularizer):
    mode = "decoupled"

    @torch.no_grad()
    def after_step(self, module) -> None:
        """W <- W - gamma x dL_orth/dW after the optimizer step (the paper's equation, constant gamma)."""
        if self.gamma:
            params, grads = module.penalty_grads()
            torch._foreach_add_(params, grads, alpha=-self.gamma)


@dataclass(frozen=True)
class LossMode(Regularizer):
    mode = "loss"

    def loss(self, module, loss: torch.Tensor) -> torch.Tensor:
        if not self.gamma or module.fsdp_root() is not None:
            return loss
        penalty = module.penalty()
        return loss + self.gamma * penalty

    def before_clip(self, module) -> None:
        # FSDP: the factors are sharded outside forward, so the loss cannot take gamma x L_orth; its gradient
        # enters here instead, before clipping, as the loss would have put it there
        if self.gamma and module.fsdp_root() is not None:
            params, grads = module.penalty_grads()
            torch._foreach_add_([p.grad for p in params], grads, alpha=self.gamma)


MODES = {cls.mode: cls for cls in (ReferenceMode, DecoupledMode, LossMode)}
assert tuple(MODES) == ORTHO_MODES


def regularizer(mode: str, gamma: float, base_lr: float | None = None, accumulation: int = 64) -> Regularizer:
    """The mode's object, validated; ``base_lr`` (the method's lr) and ``accumulation`` give the reference
    mode's coefficient."""
    if mode not in MODES:
        raise ValueError(f"method.ortho_mode={mode!r}; use one of {ORTHO_MODES}")
    if mode == "reference":
        if base_lr is None:
            raise ValueError("the reference mode's coefficient needs the method's base lr")
        return ReferenceMode(float(gamma), reference_coefficient(gamma, base_lr, accumulation))
    return MODES[mode](float(gamma))


def regularizer_from_method(method: dict) -> Regularizer | None:
    """The run's regularizer from its method section (None for methods without one). ``ortho_coef`` there only
    shows the reference coefficient; a value that differs from it would be silently ignored, so it fails."""
    if method["name"] not in REGULARIZED_METHODS:
        return None
    gamma, base_lr = float(method.get("gamma") or 0.0), float(method["lr"])
    accumulation = int(method.get("ortho_accumulation", 64))
    shown, coefficient = method.get("ortho_coef"), reference_coefficient(gamma, base_lr, accumulation)
    if shown is not None and abs(float(shown) - coefficient) > 1e-6:  # the yaml rounds it to 6 decimals
        raise ValueError(
            f"method.ortho_coef={shown} is derived, not set: gamma / (lr x ortho_accumulation) = {gamma} / "
            f"({base_lr} x {accumulation}) = {coefficient:.6g}; change method.gamma or method.ortho_accumulation"
        )
    return regularizer(method.get("ortho_mode", "reference"), gamma, base_lr, accumulation)


OmegaConf.register_new_resolver(
    "ortho_coef", lambda gamma, lr, k: round(reference_coefficient(gamma, lr, k), 6), replace=True
)
