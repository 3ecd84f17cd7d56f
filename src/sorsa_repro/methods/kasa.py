"""KaSA (Knowledge-aware Singular-value Adaptation, arXiv 2412.06071; official code juyongjiang/KaSA), built by
peft 0.21.2 (``LoraConfig(kasa_config=KasaConfig(beta, gamma))``, peft/tuners/lora/variants.py
``KasaLinearVariant``), with its regularizer entering the training loss here.

The method: the base weight W (out x in, k = min(out, in)) is truncated at init to its top k - r singular
components (its r smallest dropped, an exact SVD in float32), and the update is B diag(d) A with B (out x r) zero,
A (r x in) Kaiming, d (r) standard normal: the trainable parameters are A, B and d, r (in + out) + r per target.
The training objective adds

    beta * sum(d^2) + gamma * (||B^T B - I_r||_F + ||A A^T - I_r||_F)

per adapted matrix. peft computes it (``LoraModel._get_kasa_loss``, variants.py ``_kasa_layer_regularization_loss``)
but cannot add it to the loss itself; ``KasaHooks.loss`` adds it to every micro-batch's loss, so its gradient
enters through the same backward as the task's (the loss logged in metrics.csv stays the task loss).

peft and the official code differ; this suite takes peft's form, for these reasons:

- truncation: peft keeps min(in, out) - r components (variants.py ``_truncate_base_weight``); the official layer
  keeps in_features - r (KaSA peft/src/peft/tuners/lora/layer.py ``update_layer``, ``svd_rank = self.in_features
  - r``), which for a wide matrix (in > out: Llama's down_proj, 4096 x 11008) keeps all 4096 components and drops
  nothing. "Drop the r smallest" is min(in, out) - r.
- the orthogonality terms: peft's r x r Grams B^T B and A A^T (the paper's Eq. 11, Delta U^T Delta U = I_r); the
  official main.py ``loss_fn`` forms the d x d Grams A^T A (in x in) and B B^T (out x out) against I_d, which a
  rank-r factor cannot reach (the norm is at least sqrt(d - r)) and which costs an 11008 x 11008 Gram per
  gate/up/down matrix at Llama-2-7B.
- the sum over matrices: peft sums the per-matrix terms over all adapted matrices; the official ``loss_fn``
  divides the whole by the number of adapted matrices (block_num). The official GLUE values of beta and gamma
  were tuned with that mean: at L adapted matrices (224 for Llama-2-7B, 210 for SmolLM2) the official strength
  is this suite's with beta / L and gamma / L. The yaml keeps peft's defaults (the official GLUE default,
  main.py ``--beta 1e-4 --gemma 1e-3``) with peft's sum.

The value is tested against a hand computation (tests/test_new_methods.py).
"""

from __future__ import annotations

import torch
from torch import nn

from sorsa_repro.methods.hooks import MethodHooks


def kasa_loss(model: nn.Module) -> torch.Tensor:
    """peft's KaSA regularizer of ``model`` (a PeftModel): the sum over adapted matrices of
    beta * sum(d^2) + gamma * (||B^T B - I_r||_F + ||A A^T - I_r||_F), differentiable."""
    loss = model.base_model._get_kasa_loss()
    if not torch.is_tensor(loss):  # peft returns 0.0 when no KaSA layer is active
        raise ValueError("kasa_loss: the model has no KaSA layers")
    return loss


class KasaHooks(MethodHooks):
    def __init__(self, beta: float, gamma: float):
        self.beta, self.gamma = beta, gamma

    def loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        if not (self.beta or self.gamma):
            return loss
        return loss + kasa_loss(model).to(loss.dtype)

    def value(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float(kasa_loss(model))

    def record(self) -> dict:
        return {
            "regularizer": "kasa",
            "beta": self.beta,
            "gamma": self.gamma,
            "form": "peft: r x r Grams, summed over the adapted matrices, added to every micro-batch's loss",
        }


def training_hooks(method: dict, total_steps: int) -> KasaHooks:
    """The registry's ``training`` factory: KaSA's coefficients from the method section (peft's defaults unset)."""
    from sorsa_repro.methods.config import KASA_DEFAULTS

    beta = method.get("kasa_beta")
    gamma = method.get("kasa_gamma")
    return KasaHooks(
        float(KASA_DEFAULTS["kasa_beta"] if beta is None else beta),
        float(KASA_DEFAULTS["kasa_gamma"] if gamma is None else gamma),
    )
