"""The orthonormal regularizer's strength in ``reference`` mode (DESIGN.md section 2).

The SORSA reference trainer adds, after gradient clipping and before the AdamW step, the gradient of
``gamma / lr * L_orth`` with ``lr`` the *base* learning rate (Gunale0926/SORSA@809cca0
``sorsalib/src/sorsa/trainer.py:2656-2661``), through ``accelerator.backward``, which divides by the
gradient-accumulation steps: 64 in the paper's run (``scripts/train_sorsa.sh:8-9``, 2 sequences x 64 on
one GPU). The effective coefficient is therefore ``gamma / (lr * 64)`` = 4e-4 / (3e-5 * 64) = 0.2083.

This suite fixes that effective coefficient: ``k`` is the reference's 64 (``method.ortho_accumulation``),
not this run's accumulation, so the strength does not change with the device layout (DDP 8 x 8 would give
the reference 1.67), the micro-batch split, or a small scale's ``train.lr_multiplier`` (``lr`` is the
method's base lr). ``${ortho_coef:gamma,lr,k}`` in conf/method/sorsa.yaml shows it
(``--cfg job --resolve``); result.json records it under ``train.ortho``.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def reference_coefficient(gamma: float, base_lr: float, accumulation: int) -> float:
    """gamma / (base lr x reference accumulation steps): the factor on dL_orth added to the gradients."""
    if base_lr <= 0 or accumulation < 1:
        raise ValueError(f"base lr must be > 0 and accumulation >= 1, got {base_lr} and {accumulation}")
    return float(gamma) / (float(base_lr) * int(accumulation))


OmegaConf.register_new_resolver(
    "ortho_coef", lambda gamma, lr, k: round(reference_coefficient(gamma, lr, k), 6), replace=True
)
