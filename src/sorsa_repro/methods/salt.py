"""SALT (Singular value Adaptation with Low-rank Transformation, arXiv 2503.16055; official code
BioMedIA-MBZUAI/SALT, ``prompt_adapted_segment_anything/modeling/SALT.py`` ``SALTLinear``, published for SAM's
image encoder), as a factored layer.

For a frozen W (out x in, k = min(out, in)) with thin SVD W = U diag(s) V^T, split into the top r components
(U_r, s_r, V_r) and the remaining k - r (U_c, s_c, V_c), SALT trains

- a scale a (r, init 1) and a shift b (r, init 0) of the top singular values: s_r -> a * s_r + b
  (official ``trainable_scale_A``, ``trainable_shift_B``, SALT.py lines 44-46, 86-88);
- a low-rank update X Y of the remaining singular block: diag(s_c) -> diag(s_c) + X Y, X ((k - r) x r_lora),
  Y (r_lora x (k - r)) (official ``trainable_X``, ``trainable_Y``, lines 48-51, 90-96),

with U, s, V frozen: 2 r + 2 (k - r) r_lora parameters per matrix (official count, lines 33-36).

The official forward builds the dense W' = U ReLU(Sigma') V^T (a k x k Sigma', then an out x in product) on every
call (lines 118-122). Here it is computed factored, from the unmodified W:

    y = x W^T + ((x V_r) * delta) U_r^T + (x (Y V_c^T)^T) (U_c X)^T,   delta = relu(a * s_r + b) - s_r

so the largest tensors per step are Y V_c^T (r_lora x in) and U_c X (out x r_lora): never an out x in matrix.

Deliberate differences from the official layer:

- ReLU: the official ``F.relu`` acts elementwise on the whole k x k Sigma' (line 119): it keeps the modified top
  singular values >= 0, and it also zeroes every negative entry of the dense (k - r) x (k - r) block s_c + X Y,
  which is no longer low rank after it. That cannot be kept in factored form (it needs the whole block). What
  replaces it: the ReLU on the top-r diagonal only (relu(a * s_r + b), the modified singular values stay
  non-negative, as the official ReLU keeps them); the X Y block enters unclamped (a low-rank update of the
  remaining singular block, the paper's description).
- init: X as the official (standard normal x 0.01) but Y = 0 (official: also standard normal x 0.01), so that the
  adapted model is the pretrained one at init (the official X Y is about 1e-4 x sqrt(r_lora) per entry, nonzero);
  LoRA's zero-factor convention, the first step's gradient reaches Y.
- the official layer returns a regularizer ||scale-shift term||_F + ||X Y||_F (lines 124-127); its config
  multiplies it by ``reg_multiplier: 0`` (SALT_config.yml), so it is not used here either.
- the SVD: exact, float32 (the official one runs in the weight's dtype), with a fixed sign per component (the
  entry of largest magnitude of each left singular vector positive), so that an adapter's X and Y mean the same on
  a fresh SVD of the same weight; ``method.svd`` is ignored (the complement needs the full thin SVD).

Memory: the frozen U (out x k) and V (in x k) are kept besides W: (out + in) k extra frozen values per matrix,
for a 4096 x 4096 matrix 2 x 4096^2 = 33.6M values = 128 MiB in float32 (64 MiB in bfloat16: ``cast_frozen``),
twice the matrix itself (tests/test_new_methods.py measures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sorsa_repro.methods.layers_io import AdapterLayer

X_INIT_STD = 0.01  # official: torch.randn(...) * 0.01 (SALT.py line 50)
SIGMA_RTOL = 1e-4  # a loaded adapter's base must have these singular values (the same weight)


@torch.no_grad()
def canonical_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin exact SVD in float32 (U out x k, s k, Vt k x in), each component's sign fixed: the entry of largest
    magnitude of each column of U is positive (V^T's row flipped with it, U diag(s) V^T unchanged)."""
    u, s, vt = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    pivot = u.abs().argmax(dim=0)
    signs = torch.sign(u[pivot, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs, s, vt * signs[:, None]


class SALTLinear(AdapterLayer):
    kind = "salt"

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        lora_rank: int,
        dropout: float = 0.0,
        adapter_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self._init_shapes(base)
        self.rank, self.lora_rank = rank, lora_rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        k = min(self.out_features, self.in_features)
        self.weight = nn.Parameter(w.detach(), requires_grad=False)  # the unmodified W
        device = w.device
        if device.type == "meta":  # shapes only, for parameter counts
            u, s, vt = (torch.empty(self.out_features, k, device=device), torch.empty(k, device=device),
                        torch.empty(k, self.in_features, device=device))  # fmt: skip
        else:
            u, s, vt = canonical_svd(w)
        frozen = {"U_r": u[:, :rank], "U_c": u[:, rank:], "Vt_r": vt[:rank], "Vt_c": vt[rank:], "S": s}
        for key, value in frozen.items():  # rebuilt from W on a resume: not checkpointed
            self.register_buffer(f"salt_{key}", value.contiguous(), persistent=False)
        kw = {"device": device, "dtype": adapter_dtype}
        self.salt_scale = nn.Parameter(torch.ones(rank, **kw))
        self.salt_shift = nn.Parameter(torch.zeros(rank, **kw))
        x = torch.empty(k - rank, lora_rank, **kw)
        self.salt_X = nn.Parameter(x if device.type == "meta" else torch.randn_like(x) * X_INIT_STD)
        self.salt_Y = nn.Parameter(torch.zeros(lora_rank, k - rank, **kw))

    # ---- the weight it applies ----
    def delta(self) -> torch.Tensor:
        """relu(a * s_r + b) - s_r: the change of the top r singular values (the ReLU keeps them >= 0)."""
        s_r = self.salt_S[: self.rank].to(self.salt_scale.dtype)
        return F.relu(self.salt_scale * s_r + self.salt_shift) - s_r

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B out x (r + r_lora), A (r + r_lora) x in), float32, with B A = W' - W: SALT's weight change as a LoRA
        relative to the unmodified W (``adapter_lora/``)."""
        f32 = {k: getattr(self, f"salt_{k}").float() for k in ("U_r", "U_c", "Vt_r", "Vt_c")}
        b = torch.cat([f32["U_r"] * self.delta().float(), f32["U_c"] @ self.salt_X.float()], dim=1)
        a = torch.cat([f32["Vt_r"], self.salt_Y.float() @ f32["Vt_c"]], dim=0)
        return b.detach(), a.detach()

    def effective_weight(self) -> torch.Tensor:
        b, a = self.lora_factors()
        return self.weight.detach().float() + b @ a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        dtype = self.salt_scale.dtype
        h = self.dropout(x).to(dtype)
        top = F.linear(h, self.salt_Vt_r.to(dtype)) * self.delta()  # (..., r)
        a_c = self.salt_Y @ self.salt_Vt_c.to(dtype)  # Y V_c^T: r_lora x in
        b_c = self.salt_U_c.to(dtype) @ self.salt_X  # U_c X: out x r_lora
        update = F.linear(top, self.salt_U_r.to(dtype)) + F.linear(F.linear(h, a_c), b_c)
        return result + update.to(result.dtype)

    # ---- precision, saving ----
    @torch.no_grad()
    def cast_frozen(self, dtype: torch.dtype) -> None:
        """W and the frozen singular vectors to ``dtype`` (train.precision=reference's residual_dtype)."""
        self.weight.data = self.weight.data.to(dtype)
        for key in ("U_r", "U_c", "Vt_r", "Vt_c"):
            setattr(self, f"salt_{key}", getattr(self, f"salt_{key}").to(dtype))

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters and the base's singular values (checked on load: the same base weight)."""
        keys = ("scale", "shift", "X", "Y", "S")
        return {k: getattr(self, f"salt_{k}") for k in keys}

    def layer_config(self) -> dict:
        return {
            "kind": self.kind,
            "rank": self.rank,
            "lora_rank": self.lora_rank,
            "dropout": getattr(self.dropout, "p", 0.0),
            "adapter_dtype": str(self.salt_scale.dtype).removeprefix("torch."),
            "frozen_dtype": str(self.salt_U_r.dtype).removeprefix("torch."),
        }

    @classmethod
    @torch.no_grad()
    def restore(cls, base: nn.Linear, config: dict, tensors: dict) -> SALTLinear:
        """The layer on a freshly loaded base: the same exact SVD of W (signs fixed), then the trained values."""
        layer = cls(base, config["rank"], config["lora_rank"], config["dropout"],
                    getattr(torch, config["adapter_dtype"]))  # fmt: skip
        if not torch.allclose(layer.salt_S, tensors["S"].to(layer.salt_S), rtol=SIGMA_RTOL, atol=0):
            raise ValueError(
                "this SALT adapter was trained on another base model (its singular values differ)"
            )
        for key in ("scale", "shift", "X", "Y"):
            getattr(layer, f"salt_{key}").copy_(tensors[key])
        if config.get("frozen_dtype") and config["frozen_dtype"] != "float32":
            layer.cast_frozen(getattr(torch, config["frozen_dtype"]))
        return layer

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, lora_rank={self.lora_rank}"


def salt_layers(model: nn.Module) -> dict[str, SALTLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SALTLinear)}


def apply_entry(model: nn.Module, cfg, targets: list[str], batches=None, initial=None) -> nn.Module:
    """The registry's entry: every target becomes a SALT layer (exact SVD, float32), everything else frozen."""
    from sorsa_repro.models import resolve_dtype
    from sorsa_repro.progress import Progress

    for param in model.parameters():
        param.requires_grad_(False)
    progress = Progress(
        f"SALT init (exact SVD, r={cfg.rank}, lora_rank={cfg.lora_rank})", len(targets), "matrices"
    )
    for name in targets:
        base = model.get_submodule(name)
        layer = SALTLinear(base, cfg.rank, cfg.lora_rank, cfg.dropout, resolve_dtype(cfg.adapter_dtype))
        model.set_submodule(name, layer)
        progress.update()
    progress.close()
    return model
