"""How far fine-tuning moved a weight matrix's singular values and vectors.

For a pretrained ``W0`` and a fine-tuned ``Wt`` of the same shape, with reduced SVDs
``W = U diag(s) V^T`` (n = min(out, in) values, descending), the metrics are:

``d_sigma``           mean_i |s_t,i - s_0,i|, the SORSA paper's Delta Sigma
``d_sigma_rel``       d_sigma / mean_i s_0,i: the change relative to the spectrum's average size. Dividing
                      per i by s_0,i instead would let the near-zero tail of the spectrum dominate.
``d_sigma_topk``      d_sigma over the top k values only
``d_d``               1 - mean_i (|<u_t,i, u_0,i>| + |<v_t,i, v_0,i>|) / 2, the paper's Delta D; the absolute
                      values make sign flips (an SVD's arbitrary choice) count as no change
``d_d_topk``          d_d over the top k vectors only
``intruders_eps<e>``  how many of Wt's top-k left singular vectors have no left singular vector of W0 with
                      |cosine| >= e ("intruder dimensions", Shuttleworth et al. 2024, "LoRA vs Full
                      Fine-tuning: An Illusion of Equivalence")
``k``                 the k used (min(k, n))

Singular vectors of (nearly) equal singular values are defined only up to a rotation within their
subspace, so d_d counts such rotations as change; that is the metric as the paper defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

DEFAULT_K = 10
DEFAULT_EPS = (0.1, 0.3, 0.5)
# path components that name a wrapper, not the projection (PEFT's base_layer, a parameter's .weight)
_WRAPPERS = {"weight", "base_layer", "default"}


class SVD(NamedTuple):
    U: Tensor  # out x n
    S: Tensor  # n, descending
    Vh: Tensor  # n x in

    def to(self, device: torch.device | str) -> SVD:
        return SVD(*(t.to(device) for t in self))


def svd(w: Tensor, dtype: torch.dtype = torch.float32) -> SVD:
    """Reduced SVD of ``w`` computed in ``dtype`` (float32 or float64), whatever ``w`` is stored in."""
    return SVD(*torch.linalg.svd(w.detach().to(dtype), full_matrices=False))


def intruder_eps_column(eps: float) -> str:
    return f"intruders_eps{eps:g}"


def spectral_metrics(
    w0: Tensor | None,
    wt: Tensor,
    *,
    k: int = DEFAULT_K,
    eps: Sequence[float] = DEFAULT_EPS,
    svd0: SVD | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """The metrics above for one matrix pair. Pass ``svd0`` (then ``w0`` may be None) to reuse a cached SVD
    of W0; Wt's SVD is then computed in svd0's dtype and on its device."""
    if svd0 is None:
        if w0 is None:
            raise ValueError("spectral_metrics needs w0 or svd0")
        svd0 = svd(w0, dtype)
    shape0 = (svd0.U.shape[0], svd0.Vh.shape[1])
    if tuple(wt.shape) != shape0:
        raise ValueError(f"shape mismatch: W0 is {shape0}, Wt is {tuple(wt.shape)}")
    st = svd(wt.to(svd0.S.device), svd0.S.dtype)
    k = min(k, svd0.S.numel())

    ds = (st.S - svd0.S).abs()
    align = ((st.U * svd0.U).sum(0).abs() + (st.Vh * svd0.Vh).sum(1).abs()) / 2
    # for each of Wt's top-k left vectors, its best |cosine| with any left vector of W0
    best = (svd0.U.T @ st.U[:, :k]).abs().amax(0)

    out = {
        "d_sigma": ds.mean().item(),
        "d_sigma_rel": (ds.mean() / svd0.S.mean()).item(),
        "d_sigma_topk": ds[:k].mean().item(),
        "d_d": (1 - align.mean()).item(),
        "d_d_topk": (1 - align[:k].mean()).item(),
    }
    out.update({intruder_eps_column(e): int((best < e).sum()) for e in eps})
    out["k"] = k
    return out


def parse_layer_name(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj`` -> (3, "q_proj"); the block number is the first integer
    component (None if there is none), the module the last non-numeric one after dropping wrappers."""
    parts = [p for p in name.split(".") if p not in _WRAPPERS]
    layer = next((int(p) for p in parts if p.isdigit()), None)
    module = next((p for p in reversed(parts) if not p.isdigit()), name)
    return layer, module


def layer_row(name: str, metrics: Mapping[str, float]) -> dict:
    layer_num, module = parse_layer_name(name)
    return {"layer": name, "module": module, "layer_num": layer_num, **metrics}


def rows_to_frame(rows: Sequence[dict], index: str | None = "layer") -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=None if rows else ["layer", "module", "layer_num"])
    df["layer_num"] = df["layer_num"].astype("Int64")  # None for layers outside a numbered block
    return df.set_index(index) if index else df


def spectral_table(
    pairs: Mapping[str, tuple[Tensor, Tensor]] | Iterable[tuple[str, tuple[Tensor, Tensor]]],
    *,
    k: int = DEFAULT_K,
    eps: Sequence[float] = DEFAULT_EPS,
    dtype: torch.dtype = torch.float32,
) -> pd.DataFrame:
    """Metrics for named (W0, Wt) pairs: a dict, or an iterable of (name, (W0, Wt)) so that a generator
    can load one pair at a time. Index ``layer`` (the name); columns ``module``, ``layer_num``, metrics."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    rows = [layer_row(n, spectral_metrics(w0, wt, k=k, eps=eps, dtype=dtype)) for n, (w0, wt) in items]
    return rows_to_frame(rows)
