"""SST (Sparse Spectral Training, arXiv 2405.15481), a PRE-training method, as this suite's FINE-TUNING
adaptation. No official code was available to this suite; every step below names the part of the paper it
follows, as this suite reads the paper (its section titles: 4.2 "Gradient update of U, V^T with Sigma", 4.3 "Why
SVD initialization is important", 4.4 "SST balances exploitation and exploration", 4.5 "Memory-efficient
implementation", Appendix A "Algorithm of Sparse Spectral Training", Appendix D "Advantage of enhanced gradient").

For a target W (out x in, k = min(out, in)):

1. SVD initialization (Sec. 4.3; App. E "zero distortion"): W = U diag(s) V^T, the exact thin SVD in float32; the
   layer applies U diag(s) V^T, so it starts as the pretrained W (here the pretrained weight, in the paper a
   random initial one).
2. All k singular values train at every step (Sec. 4.1-4.2, App. A): ``sst_S``.
3. Each round, r singular vectors (columns of U with the matching rows of V^T) are sampled without replacement
   with probability proportional to their singular values (Sec. 4.4, App. A): exploitation of the large ones,
   exploration of the rest. Only the sampled vectors train in that round (``sst_U`` out x r, ``sst_Vt`` r x in);
   the others are frozen (``sst_Uf``, ``sst_Vtf``, the sampled slots zeroed).
4. The sampled vectors' gradient without the sigma factor (Sec. 4.2, App. D, the "enhanced gradient"): autograd
   gives dL/dU_i = (dL/dW) v_i s_i; SST steps with (dL/dW) v_i, i.e. the gradient divided by s_i (and likewise
   for v_i). Under AdamW, which normalises each coordinate, this mainly changes the relative weight against eps
   and the global gradient-norm clip.
5. Periodic re-SVD (App. A): at the end of every round the layer's current U diag(s) V^T is decomposed again, which
   restores orthonormal singular vectors (they drift while trained), then the next round samples.

This suite's fine-tuning adaptation (the differences from the paper's pre-training setting):

- the start is the pretrained weight's SVD; only the target linears are SST layers, every other weight stays
  frozen (in pre-training the paper trains embeddings and norms fully);
- the number of rounds per run is set (``method.rounds``, training key): a round is ceil(steps / rounds) optimizer
  steps, so mini (16 steps), small and the paper's 781 steps all see the same number of resamplings; the
  re-SVD runs at every round boundary;
- the optimizer state (AdamW moments and step count) of the resampled vectors is reset at each round (they are
  other vectors now), and that of the singular values too (the re-SVD reorders and changes them);
- the sampling is seeded: each layer draws a seed from the run's RNG at init, round j samples with seed + j, so a
  resumed run samples what the uninterrupted one did; the frozen vectors, the sampled indices and the seed are
  buffers kept in the checkpoint (``SSTHooks.checkpoint_keys``): the re-SVD changes them, the base weight cannot
  rebuild them.

Memory and compute: the layer keeps U (out x k) and V^T (k x in) instead of W: (out + in) k - out x in extra frozen
values per matrix, for a 4096 x 4096 matrix 4096^2 = 16.8M values = 64 MiB in float32 (32 MiB in bfloat16). The
forward is y = ((x V_f) * s) U_f^T + ((x V_s) * s_s) U_s^T, two k-wide products instead of W's one: about twice
the frozen matmul's FLOPs; the dense U diag(s) V^T is formed only at the re-SVD, once per round.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sorsa_repro.methods.hooks import MethodHooks, reset_optimizer_state
from sorsa_repro.methods.layers_io import AdapterLayer
from sorsa_repro.methods.salt import canonical_svd

SIGMA_FLOOR = 1e-6  # the enhanced gradient divides by s_i: at most 1e6 x autograd's (a singular value near 0)
BUFFERS = ("Uf", "Vtf", "index", "seed")  # state a checkpoint keeps besides the trainable parameters


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (the enhanced gradient's 1 / s)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class SSTLinear(AdapterLayer):
    kind = "sst"

    def __init__(
        self, base: nn.Linear, rank: int, dropout: float = 0.0, adapter_dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        self._init_shapes(base)
        self.rank = rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        k = min(self.out_features, self.in_features)
        kw = {"device": w.device, "dtype": adapter_dtype}
        if w.device.type == "meta":
            u, s, vt = (torch.empty(self.out_features, k, **kw), torch.empty(k, **kw),
                        torch.empty(k, self.in_features, **kw))  # fmt: skip
            seed = torch.zeros((), dtype=torch.long, device=w.device)
        else:
            u, s, vt = (t.to(**kw) for t in canonical_svd(w))
            seed = torch.randint(0, 2**31 - 1, ()).to(w.device)  # from the run's seeded RNG
        self.register_buffer("sst_Uf", u.contiguous())
        self.register_buffer("sst_Vtf", vt.contiguous())
        self.register_buffer("sst_index", torch.zeros(rank, dtype=torch.long, device=w.device))
        self.register_buffer("sst_seed", seed)
        self.sst_S = nn.Parameter(s.contiguous())
        self.sst_U = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        self.sst_Vt = nn.Parameter(torch.zeros(rank, self.in_features, **kw))
        if w.device.type != "meta":
            self._sample(0)

    # ---- rounds ----
    @torch.no_grad()
    def _sample(self, round_index: int) -> None:
        """Sample r vectors with probability proportional to |s| (seed + round), move them into the trainable
        parameters and zero their slots in the frozen ones."""
        generator = torch.Generator(device="cpu").manual_seed(int(self.sst_seed) + round_index)
        weights = self.sst_S.detach().abs().float().cpu() + 1e-30  # all zero: uniform
        index = torch.multinomial(weights, self.rank, replacement=False, generator=generator).sort().values
        index = index.to(self.sst_index.device)
        self.sst_index.copy_(index)
        self.sst_U.copy_(self.sst_Uf[:, index])
        self.sst_Vt.copy_(self.sst_Vtf[index])
        self.sst_Uf[:, index] = 0
        self.sst_Vtf[index] = 0

    @torch.no_grad()
    def _write_back(self) -> None:
        self.sst_Uf[:, self.sst_index] = self.sst_U.to(self.sst_Uf.dtype)
        self.sst_Vtf[self.sst_index] = self.sst_Vt.to(self.sst_Vtf.dtype)

    @torch.no_grad()
    def new_round(self, round_index: int, resvd: bool = True) -> None:
        """End the current round: the sampled vectors back into U, V^T, the re-SVD of U diag(s) V^T (``resvd``),
        then round ``round_index``'s sample."""
        self._write_back()
        if resvd:
            dense = (self.sst_Uf.float() * self.sst_S.float()) @ self.sst_Vtf.float()
            u, s, vt = canonical_svd(dense)
            self.sst_Uf.copy_(u)
            self.sst_Vtf.copy_(vt)
            self.sst_S.copy_(s)
        self._sample(round_index)

    # ---- the weight it applies ----
    def effective_weight(self) -> torch.Tensor:
        with torch.no_grad():
            u, vt = self.sst_Uf.float().clone(), self.sst_Vtf.float().clone()
            u[:, self.sst_index] = self.sst_U.float()
            vt[self.sst_index] = self.sst_Vt.float()
            return (u * self.sst_S.float()) @ vt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.sst_S.dtype
        h = self.dropout(x).to(dtype)
        s = self.sst_S
        s_sampled = s[self.sst_index]
        inv = 1.0 / s_sampled.detach().abs().clamp_min(SIGMA_FLOOR)
        u = _ScaleGrad.apply(self.sst_U, inv[None, :])  # the enhanced gradient (step 4)
        vt = _ScaleGrad.apply(self.sst_Vt, inv[:, None])
        frozen = F.linear(F.linear(h, self.sst_Vtf.to(dtype)) * s, self.sst_Uf.to(dtype))
        sampled = F.linear(F.linear(h, vt) * s_sampled, u)
        result = frozen + sampled
        if self.bias is not None:
            result = result + self.bias.to(dtype)
        return result.to(x.dtype)

    # ---- precision, saving ----
    @torch.no_grad()
    def cast_frozen(self, dtype: torch.dtype) -> None:
        self.sst_Uf = self.sst_Uf.to(dtype)
        self.sst_Vtf = self.sst_Vtf.to(dtype)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The whole factorization (frozen and sampled vectors, singular values, indices, seed): after a re-SVD the
        base weight no longer gives it, so the adapter holds it all ((out + in) k + k values per matrix)."""
        return {
            "S": self.sst_S,
            "U": self.sst_U,
            "Vt": self.sst_Vt,
            **{k: getattr(self, f"sst_{k}") for k in BUFFERS},
        }

    def layer_config(self) -> dict:
        return {
            "kind": self.kind,
            "rank": self.rank,
            "dropout": getattr(self.dropout, "p", 0.0),
            "adapter_dtype": str(self.sst_S.dtype).removeprefix("torch."),
        }

    @classmethod
    @torch.no_grad()
    def restore(cls, base: nn.Linear, config: dict, tensors: dict) -> SSTLinear:
        """The layer from its saved factorization: no SVD, no sampling."""
        with torch.device("meta"):
            shape = nn.Linear(base.in_features, base.out_features, bias=False)
        layer = cls(shape, config["rank"], config["dropout"], getattr(torch, config["adapter_dtype"]))
        layer.to_empty(device=base.weight.device)
        layer._init_shapes(base)  # the real bias and dtype
        for key, value in tensors.items():
            target = getattr(layer, f"sst_{key}")
            if isinstance(target, nn.Parameter):
                target.data = value.to(device=base.weight.device, dtype=target.dtype)
            else:
                setattr(layer, f"sst_{key}", value.to(base.weight.device))
        return layer

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, sampled={self.rank}, k={self.sst_S.numel()}"


def sst_layers(model: nn.Module) -> dict[str, SSTLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SSTLinear)}


def apply_entry(model: nn.Module, cfg, targets: list[str], batches=None, initial=None) -> nn.Module:
    """The registry's entry: every target becomes an SST layer (exact SVD, float32; round 0 sampled)."""
    from sorsa_repro.models import resolve_dtype
    from sorsa_repro.progress import Progress

    for param in model.parameters():
        param.requires_grad_(False)
    progress = Progress(f"SST init (exact SVD, {cfg.rank} sampled)", len(targets), "matrices")
    for name in targets:
        base = model.get_submodule(name)
        model.set_submodule(name, SSTLinear(base, cfg.rank, cfg.dropout, resolve_dtype(cfg.adapter_dtype)))
        progress.update()
    progress.close()
    return model


def round_steps(total_steps: int, rounds: int) -> int:
    return max(1, math.ceil(total_steps / rounds))


class SSTHooks(MethodHooks):
    """After each optimizer step that ends a round (and is not the last step): the re-SVD and the next sample in
    every SST layer, and the optimizer state of their trainable parameters reset."""

    def __init__(self, rounds: int, total_steps: int):
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"method.rounds must be an integer >= 1, got {rounds!r}")
        self.rounds, self.total_steps = rounds, total_steps
        self.every = round_steps(total_steps, rounds)

    def after_step(self, model: nn.Module, optimizer, step: int) -> None:
        if step % self.every or step >= self.total_steps:
            return
        layers = sst_layers(model).values()
        for layer in layers:
            layer.new_round(step // self.every)
        reset_optimizer_state(
            optimizer, [p for layer in layers for p in (layer.sst_S, layer.sst_U, layer.sst_Vt)]
        )

    def checkpoint_keys(self, model: nn.Module) -> set[str]:
        return {k for k in model.state_dict() if k.rsplit(".", 1)[-1] in {f"sst_{b}" for b in BUFFERS}}

    def record(self) -> dict:
        return {
            "rounds": self.rounds,
            "round_steps": self.every,
            "resvd": "every round",
            "sampling": "prop. to |s|",
        }


def training_hooks(method: dict, total_steps: int) -> SSTHooks:
    return SSTHooks(method.get("rounds", 1), total_steps)
