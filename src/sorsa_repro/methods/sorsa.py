"""SORSA (Singular Values and Orthonormal Regularized Singular Vectors Adaptation): the layer, applying it to a
model (``apply_sorsa``) and merging it back into plain Linear layers (``merge_sorsa``).

For a frozen weight W (out x in) with SVD W = U diag(s) V^T and rank r, the layer trains
U_p = U[:, :r], s_p = s[:r], V_p^T = V^T[:r, :] and keeps W_res = W - U_p diag(s_p) V_p^T frozen:

    y = x W_res^T + scale * ((x V_p) * s_p) U_p^T + bias

computed factored, so the dense out x in update is never built in the forward pass. The orthonormal
regularizer is ``sorsa_penalty``; saving and loading adapters, ``sorsa_io``.

SVFit (arXiv 2409.05926) is this layer with ``train_vectors=False``: the same top-r split W = W_res + U S V^T,
only the r singular values train, U and V^T stay as the SVD gave them (frozen parameters, so saving, loading,
merging and the spectral analysis are SORSA's). The orthonormal regularizer skips such layers: their vectors
do not move, so its value and gradient are constant (``sorsa_penalty.regularized_layers``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SVD_SEED = 0  # randomized SVD is seeded, so re-initialising (e.g. on resume) gives the same factors


def top_r_svd(
    weight: torch.Tensor, rank: int, svd: str = "exact", niter: int = 4, oversample: int | None = None
):
    """Top-``rank`` SVD of ``weight`` in float32 whatever its dtype: (U out x r, S r, Vt r x in).

    ``randomized`` sketches ``rank + oversample`` columns. Default oversample: ``rank``, at most 1/32 of
    the smaller dimension, at least 16 (128 for Llama-2-7B at r=128). Measured there (BENCHMARKS.md),
    sketching 2r columns is what brings power-law spectra under 1e-3 top-r error at niter 8; more
    subspace iterations with few extra columns cost more for less.
    """
    w = weight.detach().to(torch.float32)
    if oversample is None:
        oversample = max(16, min(rank, min(w.shape) // 32))
    if svd == "exact":
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        return u[:, :rank], s[:rank], vt[:rank]
    if svd != "randomized":
        raise ValueError(f"svd must be 'exact' or 'randomized', got {svd!r}")
    q = min(rank + oversample, *w.shape)
    devices = [w.device] if w.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(SVD_SEED)
        u, s, v = torch.svd_lowrank(w, q=q, niter=niter)
    return u[:, :rank], s[:rank], v[:, :rank].T


def dense_update(u: torch.Tensor, s: torch.Tensor, vt: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * U diag(s) V^T in float32 (used for merging and the residual, never in forward)."""
    return scale * ((u.float() * s.float()) @ vt.float())


class SORSALinear(nn.Module):
    """A Linear layer whose top-r singular triplets are trainable.

    ``init_factors`` (U, S, Vt) skips the SVD: the adapter loader passes the factors the layer was
    initialised with, which rebuilds the same residual bit for bit. ``train_vectors=False`` (SVFit) freezes
    ``sorsa_U`` and ``sorsa_Vt``: only the r singular values ``sorsa_S`` train.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        adapter_dtype: torch.dtype = torch.float32,
        svd: str = "exact",
        niter: int = 4,
        init_factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        train_vectors: bool = True,
    ):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = rank
        self.train_vectors = train_vectors
        self.alpha = alpha
        self.scale = 1.0 if alpha is None else alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.base_dtype = None
        w = base.weight
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)
        if w.device.type == "meta":  # shapes only, for parameter counts
            self.weight = nn.Parameter(w.detach(), requires_grad=False)
            u = torch.empty(self.out_features, rank, device="meta", dtype=adapter_dtype)
            s = torch.empty(rank, device="meta", dtype=adapter_dtype)
            vt = torch.empty(rank, self.in_features, device="meta", dtype=adapter_dtype)
        else:
            if init_factors is None:
                init_factors = top_r_svd(w, rank, svd, niter)
            u, s, vt = (t.to(device=w.device, dtype=adapter_dtype) for t in init_factors)
            # residual from the factors as stored, so W_res + update reproduces W as closely as the dtype allows
            residual = (w.detach().float() - dense_update(u, s, vt, self.scale)).to(w.dtype)
            self.weight = nn.Parameter(residual, requires_grad=False)
            self.base_dtype = w.dtype  # what the residual was computed from (it may be cast afterwards)
            # CPU copy of the initial factors: the adapter file stores them to rebuild W_res without an SVD
            self.init_factors = tuple(t.detach().to("cpu", copy=True) for t in (u, s, vt))
        self.sorsa_U = nn.Parameter(u.contiguous(), requires_grad=train_vectors)
        self.sorsa_S = nn.Parameter(s.contiguous())
        self.sorsa_Vt = nn.Parameter(vt.contiguous(), requires_grad=train_vectors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        if self.merged:
            return result
        h = F.linear(self.dropout(x).to(self.sorsa_Vt.dtype), self.sorsa_Vt)  # x V_p: (..., r)
        h = h * (self.sorsa_S * self.scale if self.scale != 1.0 else self.sorsa_S)
        return result + F.linear(h, self.sorsa_U).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        return dense_update(self.sorsa_U, self.sorsa_S, self.sorsa_Vt, self.scale)

    def effective_weight(self) -> torch.Tensor:
        """The dense weight this layer applies now, in float32."""
        w = self.weight.detach().float()
        return w if self.merged else w + self.delta_weight().detach()

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.data = (self.weight.float() + self.delta_weight()).to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.data = (self.weight.float() - self.delta_weight()).to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        shape = f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}"
        return shape if self.train_vectors else shape + ", vectors frozen"


def sorsa_layers(model: nn.Module) -> dict[str, SORSALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SORSALinear)}


def apply_sorsa(
    model: nn.Module,
    targets: list[str],
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    adapter_dtype: torch.dtype = torch.float32,
    svd: str = "exact",
    niter: int = 4,
    train_vectors: bool = True,
) -> nn.Module:
    """Replace the named Linear layers by SORSA layers (SVFit: ``train_vectors=False``); freeze everything else."""
    from sorsa_repro.progress import Progress

    for param in model.parameters():
        param.requires_grad_(False)
    progress = Progress(f"SVD init ({svd}, r={rank})", len(targets), "matrices")  # a line every ~10 s
    for name in targets:
        base = model.get_submodule(name)
        layer = SORSALinear(
            base, rank, alpha, dropout, adapter_dtype, svd, niter, train_vectors=train_vectors
        )
        model.set_submodule(name, layer)
        progress.update()
    progress.close()
    return model


@torch.no_grad()
def merge_sorsa(model: nn.Module) -> nn.Module:
    """Fold every SORSA layer into a plain nn.Linear (in place); the result needs no project code."""
    for name, layer in sorsa_layers(model).items():
        plain = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        plain.weight.copy_(layer.effective_weight().to(layer.weight.dtype))
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        model.set_submodule(name, plain)
    return model


def apply_entry(model: nn.Module, cfg, targets: list[str], batches=None, initial=None) -> nn.Module:
    """The registry's entry for SORSA and SVFit (``sorsa_repro.method_registry``): SVFit is SORSA's layer with
    the singular vectors frozen. On the meta device it builds the shapes only (parameter counts)."""
    from sorsa_repro.models import resolve_dtype

    return apply_sorsa(
        model,
        targets,
        cfg.rank,
        cfg.alpha,
        cfg.dropout,
        resolve_dtype(cfg.adapter_dtype),
        cfg.svd,
        cfg.niter,
        train_vectors=cfg.name == "sorsa",
    )
