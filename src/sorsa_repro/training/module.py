"""The LightningModule: a base model adapted by one method, trained under the paper's protocol."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from sorsa_repro.data.tokenize import IGNORE_INDEX
from sorsa_repro.methods.sorsa import (
    orthonormal_penalty,
    penalty_and_grads,
    regularized_layers,
    sorsa_factors,
)
from sorsa_repro.training.distributed import clean_name, fsdp_root

ORTHO_MODES = ("reference", "decoupled", "loss")
METRIC_COLUMNS = ("step", "loss", "ortho_penalty", "lr", "grad_norm", "tokens_per_s")


class NonFiniteLossError(RuntimeError):
    pass


class FineTuneModule(L.LightningModule):
    """Wraps an adapted model (``self.model``).

    The orthonormal regularizer of SORSA enters in one of three modes (DESIGN.md section 2):
    ``reference``: after clipping, add ``ortho_coef`` x dL_orth to the factors' gradients, as the reference
    trainer does (``ortho_coef`` = gamma / (base lr x 64), see ``sorsa_repro.training.ortho``);
    ``decoupled``: a separate SGD step of size gamma on L_orth after the optimizer step;
    ``loss``: gamma * L_orth added to the training loss.
    """

    def __init__(
        self,
        model,
        *,
        lr: float,
        total_steps: int,
        gamma: float = 0.0,
        ortho_mode: str = "reference",
        ortho_coef: float = 0.0,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        grad_clip: float | None = 1.0,
        metrics_path: str | Path | None = None,
    ):
        super().__init__()
        if ortho_mode not in ORTHO_MODES:
            raise ValueError(f"unknown ortho_mode {ortho_mode!r}; use one of {ORTHO_MODES}")
        self.model = model.train()
        self.lr, self.total_steps = lr, total_steps
        self.gamma, self.ortho_mode, self.ortho_coef = gamma, ortho_mode, ortho_coef
        self.weight_decay, self.warmup_ratio, self.grad_clip = weight_decay, warmup_ratio, grad_clip
        self.metrics_path = Path(metrics_path) if metrics_path else None
        # SORSA layers whose vectors train get the regularizer (SVFit freezes them: nothing to regularize or log)
        self.has_regularized_layers = bool(regularized_layers(model))
        self.strict_loading = False  # checkpoints hold only the trainable parameters
        self.last_metrics: dict = {"step": 0}
        self._step_penalty = None  # L_orth computed during this optimizer step (logged, not recomputed)
        self.start_step: int | None = None  # set when a fit starts (None: it had nothing left to train)
        self._reset_window()

    # ---- training ----
    def training_step(self, batch, batch_idx):
        if self._window["n"] == 0:
            self._window["start"] = time.perf_counter()
        # counts the collator took on the host: reading them from device tensors would sync every micro-batch
        n_tokens, n_labels = batch.pop("n_tokens", None), batch.pop("n_label_tokens", None)
        if n_labels is None:  # a batch from elsewhere (tests, benchmarks)
            n_labels = int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum())
        if n_labels:
            loss = self.model(**batch).loss
        else:  # only prompts too long to leave a response token (long_prompts=keep): nothing to learn
            loss = self.model(**batch).logits.sum() * 0.0
        self._window["loss"] = self._window["loss"] + loss.detach()  # on the device; read once per step
        self._window["n"] += 1
        self._window["tokens"] += int(batch["attention_mask"].sum()) if n_tokens is None else n_tokens
        if (
            self.has_regularized_layers
            and self.ortho_mode == "loss"
            and self.gamma
            and self._fsdp_root() is None
        ):
            penalty = orthonormal_penalty(self.model)
            self._step_penalty = penalty.detach()
            loss = loss + self.gamma * penalty
        return loss

    def _check_finite_loss(self) -> None:
        """Before the optimizer step: a non-finite loss in any micro-batch of the window stops training, so
        that no NaN reaches the weights (the last checkpoint is kept)."""
        loss = self._window["loss"]
        if torch.is_tensor(loss) and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss at optimizer step {self.global_step + 1}; the last checkpoint is kept. "
                "Lower the learning rate or use fp32/bf16-mixed precision."
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self._check_finite_loss()
        max_norm = self.grad_clip if self.grad_clip else math.inf
        if (
            self.has_regularized_layers
            and self.ortho_mode == "loss"
            and self.gamma
            and self._fsdp_root() is not None
        ):
            # FSDP: the factors are sharded outside forward, so training_step cannot add gamma * L_orth to the
            # loss; its gradient enters here instead, before clipping, as the loss would have put it there
            params, grads = self._penalty_grads()
            torch._foreach_add_([p.grad for p in params], grads, alpha=self.gamma)
        self._window["grad_norm"] = float(self._clip_grad_norm(max_norm))
        self._window["lr"] = optimizer.param_groups[0]["lr"]
        if self.has_regularized_layers and self.ortho_mode == "reference" and self.ortho_coef:
            self.add_reference_penalty_grad()

    def _fsdp_root(self):
        return fsdp_root(self._trainer)

    def _clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the trainable gradients to ``max_norm`` in total; the total norm before clipping.

        Under DDP every rank holds the all-reduced gradients, so the local norm is the global one. Under
        FSDP each rank holds a shard: FSDP's own clip_grad_norm_ reduces the norm over the shards.
        """
        root = self._fsdp_root()
        if root is not None:
            return root.clip_grad_norm_(max_norm)
        return torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm)

    def add_reference_penalty_grad(self):
        """grad += ortho_coef * dL_orth: unclipped, then through AdamW with the task gradient."""
        params, grads = self._penalty_grads()
        torch._foreach_add_([p.grad for p in params], grads, alpha=self.ortho_coef)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.has_regularized_layers and self.ortho_mode == "decoupled" and self.gamma:
            self.decoupled_penalty_step()
        self._record_step()

    @torch.no_grad()
    def decoupled_penalty_step(self):
        """W <- W - gamma * dL_orth/dW after the optimizer step (the paper's equation, constant gamma)."""
        params, grads = self._penalty_grads()
        torch._foreach_add_(params, grads, alpha=-self.gamma)

    def _penalty_grads(self):
        """(factors, dL_orth/dfactor) in one batched pass (``penalty_and_grads``), whose L_orth is the value
        this step logs. Every rank gets the same values, so DDP ranks stay in sync."""
        root = self._fsdp_root()
        if root is not None:
            value, params, grads = self._sharded_penalty(root)
        else:
            params, transposed = sorsa_factors(self.model)
            value, grads = penalty_and_grads(params, transposed)
        self._step_penalty = value
        return params, grads

    def _penalty_value(self) -> float:
        """L_orth of this optimizer step: the value its regularizer computed, or (no regularizer step, e.g.
        gamma = 0) the penalty of the current factors."""
        if self._step_penalty is not None:
            value, self._step_penalty = float(self._step_penalty), None
            return value
        root = self._fsdp_root()
        if root is not None:
            return float(self._sharded_penalty(root)[0])
        with torch.no_grad():
            return float(orthonormal_penalty(self.model))

    @torch.no_grad()
    def _sharded_penalty(self, root):
        """L_orth and its gradient for this rank's shards, under FSDP with ``use_orig_params=True``.

        There each factor is a 1-D view of this rank's piece of the flattened factor, and the pieces of the
        ranks of the shard group, in rank order, make up the whole. The penalty needs whole factors (U^T U
        sums over all rows): every factor is gathered, the penalty and its gradient computed on the whole
        factors by ``penalty_and_grads`` (the same code as without FSDP), and this rank keeps its slice of
        each gradient. Memory: the adapters once more, whole. Returns (penalty, local factors, gradients).
        """
        import torch.distributed as dist

        group = root.process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        layers = list(regularized_layers(self.model).values())
        factors = [f for layer in layers for f in self._factors(layer)]
        local = torch.tensor([p.numel() for p, _, _ in factors], device=self.device)
        sizes = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(sizes, local, group=group)
        sizes = torch.stack(sizes).tolist()  # [rank][factor]
        fulls = []
        for i, (param, shape, _) in enumerate(factors):
            counts = [sizes[r][i] for r in range(world)]
            piece = param.detach().reshape(-1).new_zeros(max(counts))
            piece[: counts[rank]] = param.detach().reshape(-1)
            pieces = [torch.empty_like(piece) for _ in range(world)]
            dist.all_gather(pieces, piece, group=group)
            fulls.append(torch.cat([p[:n] for p, n in zip(pieces, counts, strict=True)]).view(shape))
        value, full_grads = penalty_and_grads(fulls, [t for _, _, t in factors])
        params, grads = [], []
        for i, ((param, _, _), grad) in enumerate(zip(factors, full_grads, strict=True)):
            if sizes[rank][i]:
                start = sum(sizes[r][i] for r in range(rank))
                params.append(param)
                grads.append(grad.reshape(-1)[start : start + sizes[rank][i]].to(param.dtype))
        return value, params, grads

    @staticmethod
    def _factors(layer):
        """(parameter, full shape, whether the term uses its transpose) for U and Vt of a SORSA layer."""
        return [
            (layer.sorsa_U, (layer.out_features, layer.rank), False),
            (layer.sorsa_Vt, (layer.rank, layer.in_features), True),
        ]

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        fused = all(p.is_cuda for p in params)  # one kernel for all parameters on GPUs; CPU keeps foreach
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, fused=fused or None)
        warmup = math.ceil(self.warmup_ratio * self.total_steps)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- per optimizer step metrics ----
    def _reset_window(self):
        self._window = {
            "loss": 0.0,
            "n": 0,
            "tokens": 0,
            "start": time.perf_counter(),
            "grad_norm": float("nan"),
            "lr": float("nan"),
        }

    def _record_step(self):
        """Metrics of the optimizer step just taken; written before any checkpoint of this step."""
        step = self.last_metrics["step"] + 1
        elapsed = time.perf_counter() - self._window["start"]
        loss, tokens = float(self._window["loss"]) / max(self._window["n"], 1), self._window["tokens"]
        if self._trainer is not None and self.trainer.world_size > 1:
            # the mean over ranks of their micro-batch losses, as one process with the global batch logs
            # it; tokens summed: the throughput of the whole job
            both = torch.tensor([loss, tokens], dtype=torch.float64, device=self.device)
            both = self.trainer.strategy.reduce(both, reduce_op="sum")
            loss, tokens = float(both[0]) / self.trainer.world_size, int(both[1])
        metrics = {
            "step": step,
            "loss": loss,
            "ortho_penalty": self._penalty_value() if self.has_regularized_layers else None,
            "lr": self._window["lr"],
            "grad_norm": self._window["grad_norm"],
            "tokens_per_s": tokens / elapsed if elapsed > 0 else float("nan"),
        }
        self.last_metrics = metrics
        self._reset_window()
        if self.loggers:
            self.log_dict(
                {f"train/{k}": v for k, v in metrics.items() if k != "step" and v is not None},
                on_step=True,
                prog_bar=False,
                logger=True,
                batch_size=1,
            )
        self.log("loss", metrics["loss"], prog_bar=True, logger=False, batch_size=1)
        if self.metrics_path and self.global_rank == 0:
            self._append_metrics(metrics)

    def _append_metrics(self, metrics: dict):
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in metrics.items()})

    def on_train_start(self):
        # a resumed run drops the rows written after its last checkpoint; they are recomputed
        if self.metrics_path and self.metrics_path.exists() and self.global_rank == 0:
            with open(self.metrics_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.global_step]
            with open(self.metrics_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        self.last_metrics = {"step": self.global_step}
        self.start_step = self.global_step  # > 0: this fit continues from a checkpoint

    # ---- checkpoints: trainable parameters only (the frozen rest is rebuilt from the base model) ----
    def on_save_checkpoint(self, checkpoint):
        # under FSDP the parameter names carry its wrappers; the (full) state dict's keys do not
        trainable = {clean_name(name) for name, p in self.named_parameters() if p.requires_grad}
        kept = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        if checkpoint["state_dict"] and not kept:  # a resume would silently restart the adapters
            raise RuntimeError("checkpoint: no trainable parameter matched the state dict's names")
        checkpoint["state_dict"] = kept
