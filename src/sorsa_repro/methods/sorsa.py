"""SORSA: Singular Values and Orthonormal Regularized Singular Vectors Adaptation.

For a frozen weight W (out x in) with SVD W = U diag(s) V^T and rank r, the layer trains
U_p = U[:, :r], s_p = s[:r], V_p^T = V^T[:r, :] and keeps W_res = W - U_p diag(s_p) V_p^T frozen:

    y = x W_res^T + scale * ((x V_p) * s_p) U_p^T + bias

computed factored, so the dense out x in update is never built in the forward pass.

Saving: ``save_sorsa_adapter`` writes this project's format (trained and initial factors, exact round trip);
``save_sorsa_as_lora`` exports the same weight change as a standard peft LoRA adapter that plain peft, and
vLLM with ``--enable-lora``, load on the unmodified base model. With W0 = W_res + scale U0 S0 V0^T:

    W - W0 = scale U S V^T - scale U0 S0 V0^T = [scale U S | -scale U0 S0] [V^T ; V0^T]    (rank <= 2r)

so lora_B (out x 2r) = [scale U S | -scale U0 S0], lora_A (2r x in) = [V^T ; V0^T], r = lora_alpha = 2r
(peft's scaling alpha / r = 1).

SVFit (arXiv 2409.05926) is this layer with ``train_vectors=False``: the same top-r split W = W_res + U S V^T,
only the r singular values train, U and V^T stay as the SVD gave them (frozen parameters, so saving, loading,
merging and the spectral analysis are SORSA's). The orthonormal regularizer skips such layers: their vectors
do not move, so its value and gradient are constant (``regularized_layers``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_WEIGHTS = "sorsa_adapter.safetensors"
ADAPTER_CONFIG = "sorsa_config.json"
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


def regularized_layers(model: nn.Module) -> dict[str, SORSALinear]:
    """The SORSA layers whose singular vectors train: those the orthonormal regularizer acts on (not SVFit's)."""
    return {name: m for name, m in sorsa_layers(model).items() if m.train_vectors}


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
    for param in model.parameters():
        param.requires_grad_(False)
    for name in targets:
        base = model.get_submodule(name)
        layer = SORSALinear(
            base, rank, alpha, dropout, adapter_dtype, svd, niter, train_vectors=train_vectors
        )
        model.set_submodule(name, layer)
    return model


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


def save_sorsa_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """Adapter only: trained and initial factors (safetensors) plus a small JSON config."""
    layers = sorsa_layers(model)
    if not layers:
        raise ValueError("save_sorsa_adapter: the model has no SORSA layers")
    tensors = {}
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"unmerge layer {name} before saving the adapter")
        for key, value in zip(("U", "S", "Vt"), (layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vt), strict=True):
            tensors[f"{name}.sorsa_{key}"] = value.detach().cpu().contiguous()
        for key, value in zip(("U", "S", "Vt"), layer.init_factors, strict=True):
            tensors[f"{name}.init_{key}"] = value.contiguous()
    first = next(iter(layers.values()))
    config = {
        "format": "sorsa_repro.sorsa",
        "version": 1,
        "rank": first.rank,
        "alpha": first.alpha,
        "dropout": getattr(first.dropout, "p", 0.0),
        "adapter_dtype": str(first.sorsa_U.dtype).removeprefix("torch."),
        "residual_dtype": str(first.weight.dtype).removeprefix("torch."),
        "base_dtype": str(first.base_dtype).removeprefix("torch."),
        "layers": sorted(layers),
        "base_model": base_model,
        "train_vectors": first.train_vectors,  # false: SVFit (only the singular values train)
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / ADAPTER_WEIGHTS))
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_sorsa_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild SORSA layers on a freshly loaded base model from an adapter folder (no SVD)."""
    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    adapter_dtype = getattr(torch, config["adapter_dtype"])
    for param in model.parameters():
        param.requires_grad_(False)
    residual_dtype = getattr(torch, config["residual_dtype"])
    base_dtype = config.get(
        "base_dtype", config["residual_dtype"]
    )  # adapters saved before base_dtype existed
    for name in config["layers"]:
        base = model.get_submodule(name)
        if str(base.weight.dtype).removeprefix("torch.") != base_dtype:
            raise ValueError(f"load the base model in {base_dtype} to restore this adapter exactly")
        init = tuple(tensors[f"{name}.init_{k}"] for k in ("U", "S", "Vt"))
        layer = SORSALinear(
            base,
            config["rank"],
            config["alpha"],
            config["dropout"],
            adapter_dtype,
            init_factors=init,
            train_vectors=config.get("train_vectors", True),  # adapters saved before SVFit: SORSA
        )
        layer.weight.data = layer.weight.data.to(residual_dtype)  # as training cast it (precision=reference)
        with torch.no_grad():
            for key in ("U", "S", "Vt"):
                getattr(layer, f"sorsa_{key}").copy_(tensors[f"{name}.sorsa_{key}"])
        model.set_submodule(name, layer)
    return model


@torch.no_grad()
def save_sorsa_as_lora(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> None:
    """The SORSA weight change as a rank-2r peft LoRA adapter (module docstring), in float32."""
    from peft import LoraConfig

    layers = sorsa_layers(model)
    if not layers:
        raise ValueError("save_sorsa_as_lora: the model has no SORSA layers")
    tensors = {}
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"unmerge layer {name} before saving the adapter")
        u, s, vt = (t.detach().float().cpu() for t in (layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vt))
        u0, s0, vt0 = (t.float() for t in layer.init_factors)
        prefix = f"base_model.model.{name}"  # peft's key names (peft.utils.save_and_load)
        tensors[f"{prefix}.lora_A.weight"] = torch.cat([vt, vt0]).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = torch.cat([layer.scale * u * s, -layer.scale * u0 * s0], 1)
    first = next(iter(layers.values()))
    config = LoraConfig(
        r=2 * first.rank,
        lora_alpha=2 * first.rank,
        lora_dropout=getattr(first.dropout, "p", 0.0),
        target_modules=sorted({name.rsplit(".", 1)[-1] for name in layers}),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))
