"""SVD initialisation of the 224 adapted matrices of Llama-2-7B (32 layers x 7), exact vs randomized.

Random weights, four spectra:
- ``random``: Gaussian entries / sqrt(in), a Marchenko-Pastur spectrum: flat at the top, the hard
  case for a randomized SVD (no gap after the r-th singular value for the subspace iterations to use).
- ``power_law:a``: s_i = i^(-a) with random orthogonal factors, a trained model's decaying spectrum;
  a = 0.25 is about as flat as the packaged SmolLM2-135M's matrices (fits of 0.07-0.31 over their top
  eighth), a = 0.5 the realistic case the targets refer to, a = 1 a steep one.

Error: ||U_r S_r V_r^T - same from the exact SVD||_F / ||exact top-r||_F per matrix (max and median
reported). The exact top r is known by construction for ``power_law``; for ``random`` it is the exact
SVD. Time: ``top_r_svd`` per matrix, summed over the 224; presets that time fewer matrices per shape
extrapolate (mean time per shape x its count) and say so.
"""

from __future__ import annotations

import sys
import time

import torch

from benchmarks.common import device_for, sync
from sorsa_repro.methods.sorsa import top_r_svd

# name -> (out, in, matrices in Llama-2-7B): q, k, v, o; gate, up; down
SHAPES = {
    "attn 4096x4096": (4096, 4096, 128),
    "mlp 11008x4096": (11008, 4096, 64),
    "down 4096x11008": (4096, 11008, 32),
}
SMOKE_SHAPES = {"attn 64x64": (64, 64, 128), "mlp 172x64": (172, 64, 64), "down 64x172": (64, 172, 32)}
SPECTRA = ("random", "power_law:0.25", "power_law:0.5", "power_law:1.0")
# (niter, oversample): None is top_r_svd's default; 16 its former default, for comparison
SETTINGS = [(2, None), (4, None), (8, None), (16, None), (4, 16), (8, 16)]
PRESETS = {
    "cpu": dict(rank=128, samples=1, exact_samples=1, settings=[s for s in SETTINGS if s[0] != 16]),
    "gpu": dict(rank=128, samples=None, exact_samples=8, settings=SETTINGS),
    "smoke": dict(rank=4, samples=1, exact_samples=1, settings=[(2, None)]),
}
COLUMNS = [
    "spectrum",
    "method",
    "niter",
    "oversample",
    "total_s",
    "extrapolated",
    "max_rel_err",
    "median_rel_err",
]


def random_orthonormal(rows: int, cols: int, gen: torch.Generator, device) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, device=device))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed


def weights(out_f: int, in_f: int, seed: int, device):
    """Yields (spectrum, weight, exact (U, S, Vt) or None); the power laws share one pair of factors."""
    gen = torch.Generator(device).manual_seed(seed)
    yield "random", torch.randn(out_f, in_f, generator=gen, device=device) / in_f**0.5, None
    k = min(out_f, in_f)
    u, v = random_orthonormal(out_f, k, gen, device), random_orthonormal(in_f, k, gen, device)
    for spectrum in SPECTRA[1:]:
        s = torch.arange(1, k + 1, device=device, dtype=torch.float32) ** -float(spectrum.split(":")[1])
        yield spectrum, (u * s) @ v.T, (u, s, v.T)


def rel_err(approx, exact, rank: int) -> float:
    """||A_r - B_r||_F / ||B_r||_F from the factors, in float64 (no dense out x in product).

    Every norm goes through the factors' Gram matrices, not sum(s^2): float32 factors are orthonormal
    only to ~1e-7, which would put a floor of ~3e-4 under the error.
    """
    a = [t.double() for t in (approx[0][:, :rank], approx[1][:rank], approx[2][:rank])]
    b = [t.double() for t in (exact[0][:, :rank], exact[1][:rank], exact[2][:rank])]

    def inner(x, y):  # <U_x S_x Vt_x, U_y S_y Vt_y>_F
        return torch.trace((x[1][:, None] * (x[0].T @ y[0])) @ (y[1][:, None] * (y[2] @ x[2].T)))

    diff2 = inner(a, a) + inner(b, b) - 2 * inner(a, b)
    return float(diff2.clamp_min(0).sqrt() / inner(b, b).sqrt())


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def run(preset: str, smoke: bool = False) -> dict:
    device = device_for(preset)
    settings = PRESETS["smoke" if smoke else preset]
    shapes, rank = SMOKE_SHAPES if smoke else SHAPES, settings["rank"]
    methods = [("exact", None, None)] + [("randomized", n, o) for n, o in settings["settings"]]
    keys = [(sp, m) for sp in SPECTRA for m in methods if sp == "random" or m[0] != "exact"]
    errors = {k: [] for k in keys}
    total = dict.fromkeys(keys, 0.0)
    extrapolated = dict.fromkeys(keys, False)
    for s_idx, (out_f, in_f, count) in enumerate(shapes.values()):
        n = count if settings["samples"] is None else min(settings["samples"], count)
        per = {k: [] for k in keys}
        for i in range(n):
            for spectrum, weight, truth in weights(out_f, in_f, 1000 * s_idx + i, device):
                # the exact SVD on the random spectrum only: its cost does not depend on the values
                if truth is None and i < settings["exact_samples"]:
                    truth, seconds = timed(lambda w=weight: top_r_svd(w, rank, "exact"), device)
                    per[(spectrum, methods[0])].append(seconds)
                    errors[(spectrum, methods[0])].append(0.0)
                for m in methods[1:]:
                    approx, seconds = timed(
                        lambda w=weight, m=m: top_r_svd(w, rank, m[0], m[1], m[2]), device
                    )
                    per[(spectrum, m)].append(seconds)
                    if truth is not None:
                        errors[(spectrum, m)].append(rel_err(approx, truth, rank))
                del weight, truth
        print(f"svd_init: {out_f}x{in_f} done ({n} matrices)", file=sys.stderr, flush=True)
        for k, times in per.items():
            total[k] += sum(times) / len(times) * count
            extrapolated[k] |= len(times) < count
    rows = []
    for spectrum, (method, niter, oversample) in keys:
        errs = sorted(errors[(spectrum, (method, niter, oversample))])
        rows.append(
            {
                "spectrum": spectrum,
                "method": method,
                "niter": niter,
                "oversample": "default" if method == "randomized" and oversample is None else oversample,
                "total_s": total[(spectrum, (method, niter, oversample))],
                "extrapolated": extrapolated[(spectrum, (method, niter, oversample))],
                "max_rel_err": errs[-1],
                "median_rel_err": errs[len(errs) // 2],
                "matrices_measured": len(errs),
            }
        )
    n_total = sum(c for _, _, c in shapes.values())
    default = {max(16, min(rank, min(o, i) // 32)) for o, i, _ in shapes.values()}
    notes = [
        f"{n_total} matrices ({', '.join(f'{c} x {k}' for k, (_, _, c) in shapes.items())}), rank {rank}; "
        f"oversample 'default' = top_r_svd's: min(rank, min(out, in) // 32), at least 16 ({sorted(default)} here)",
        "exact SVD run on the random spectrum only; power-law errors are against the known factors",
    ]
    if any(extrapolated.values()):
        notes.append(
            "extrapolated rows: total_s = mean time per shape over the matrices timed x the shape's count "
            f"(randomized: {settings['samples'] or 'all'} per shape, exact: {settings['exact_samples']} per shape); "
            "random-spectrum errors are measured on the matrices with an exact SVD"
        )
    return {"settings": settings, "columns": COLUMNS, "rows": rows, "notes": notes}
