"""SORSA's orthonormal regularizer: L_orth, the mean over the adapted matrices of ||U^T U - I||_F and
||Vt Vt^T - I||_F, and its gradient.

SVFit's layers (``train_vectors=False``) are skipped: their vectors do not move, so the value and gradient of
their terms are constant (``regularized_layers``).
"""

from __future__ import annotations

import torch
from torch import nn

from sorsa_repro.methods.sorsa import SORSALinear, sorsa_layers


def regularized_layers(model: nn.Module) -> dict[str, SORSALinear]:
    """The SORSA layers whose singular vectors train: those the orthonormal regularizer acts on (not SVFit's)."""
    return {name: m for name, m in sorsa_layers(model).items() if m.train_vectors}


def sorsa_factors(model: nn.Module) -> tuple[list[torch.Tensor], list[bool]]:
    """U and Vt of every SORSA layer whose vectors train (``regularized_layers``), and for each whether its Gram
    matrix is X X^T (Vt) or X^T X (U)."""
    factors, transposed = [], []
    for layer in regularized_layers(model).values():
        factors += [layer.sorsa_U, layer.sorsa_Vt]
        transposed += [False, True]
    return factors, transposed


def _batches(factors, transposed) -> dict[tuple, list[int]]:
    """Indices of the factors that stack into one batch: same shape, orientation, dtype and device."""
    groups: dict[tuple, list[int]] = {}
    for i, (x, t) in enumerate(zip(factors, transposed, strict=True)):
        groups.setdefault((tuple(x.shape), t, x.dtype, x.device), []).append(i)
    return groups


def _gram_minus_eye(stacked: torch.Tensor, transposed: bool) -> torch.Tensor:
    """k x r x r: U^T U - I for stacked U (k x out x r), Vt Vt^T - I for stacked Vt (k x r x in)."""
    x = stacked.float()
    gram = x @ x.mT if transposed else x.mT @ x
    return gram - torch.eye(gram.shape[-1], device=gram.device)


def penalty_terms(factors: list[torch.Tensor], transposed: list[bool]) -> torch.Tensor:
    """The norms ||U^T U - I||_F and ||Vt Vt^T - I||_F of ``factors`` (in their order), differentiable.

    Factors of one shape are stacked and go through one batched Gram product and one batched norm, so a
    32-layer model's 448 terms take a few dozen kernels, not thousands."""
    terms = torch.empty(len(factors), device=factors[0].device if factors else "cpu")
    parts, order = [], []
    for (_, t, _, _), idx in _batches(factors, transposed).items():
        parts.append(torch.linalg.matrix_norm(_gram_minus_eye(torch.stack([factors[i] for i in idx]), t)))
        order += idx
    if not parts:
        return terms
    return torch.cat(parts)[torch.argsort(torch.tensor(order, device=parts[0].device))]


@torch.no_grad()
def penalty_and_grads(factors: list[torch.Tensor], transposed: list[bool]) -> tuple[torch.Tensor, list]:
    """L_orth (the mean of the terms) and its gradient with respect to each factor, in one batched pass
    without autograd: d||G - I||_F / dU = 2 U (G - I) / ||G - I||_F for G = U^T U (and (G - I) Vt for
    G = Vt Vt^T). A term that is exactly 0 gets a zero gradient."""
    count = len(factors)
    grads: list = [None] * count
    total = torch.zeros((), device=factors[0].device)
    for (_, t, dtype, _), idx in _batches(factors, transposed).items():
        x = torch.stack([factors[i] for i in idx]).float()
        diff = _gram_minus_eye(x, t)
        norms = torch.linalg.matrix_norm(diff)
        total += norms.sum()
        scale = (2 / count) / torch.where(norms > 0, norms, torch.inf)
        g = (diff @ x if t else x @ diff) * scale[:, None, None]
        for j, i in enumerate(idx):
            grads[i] = g[j].to(dtype)
    return total / count, grads


def orthonormal_penalty(model: nn.Module) -> torch.Tensor:
    """Mean over all adapted matrices of ||U^T U - I||_F and ||Vt Vt^T - I||_F (2 terms per matrix)."""
    factors, transposed = sorsa_factors(model)
    if not factors:
        raise ValueError("orthonormal_penalty: the model has no SORSA layers with trainable singular vectors")
    return penalty_terms(factors, transposed).mean()
