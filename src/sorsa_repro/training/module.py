"""The LightningModule: a base model adapted by one method, trained under the paper's protocol."""

from __future__ import annotations

import csv
import math
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch

from sorsa_repro.data.tokenize import IGNORE_INDEX
from sorsa_repro.methods.hooks import MethodHooks
from sorsa_repro.methods.sorsa_penalty import (
    orthonormal_penalty,
    penalty_and_grads,
    regularized_layers,
    sorsa_factors,
)
from sorsa_repro.training.distributed import clean_name, fsdp_root, whole_model
from sorsa_repro.training.heldout import HeldOut, heldout_loss
from sorsa_repro.training.optim import OptimSettings, build_optimizer
from sorsa_repro.training.ortho import Regularizer
from sorsa_repro.training.sharded_penalty import sharded_penalty_and_grads

METRIC_COLUMNS = ("step", "loss", "ortho_penalty", "lr", "grad_norm", "tokens_per_s", "heldout_loss")


class NonFiniteLossError(RuntimeError):
    pass


class FineTuneModule(L.LightningModule):
    """Wraps an adapted model (``self.model``), trained with ``optim`` (AdamW, cosine schedule).

    SORSA's orthonormal regularizer (``regularizer``, one of the modes in ``sorsa_repro.training.ortho``)
    acts through its hooks: on each micro-batch's loss, before and after gradient clipping, and after the
    optimizer step. Layers whose singular vectors do not train (SVFit) take no regularizer. ``hooks``: what the
    method adds to training (``methods/hooks.py``: KaSA's loss term, SoMA's weight decay, SST's rounds), called
    on each micro-batch's loss, before and after each optimizer step, and when a checkpoint is saved.
    ``heldout``: the held-out set, whose loss is measured after the optimizer steps it says
    (``training/heldout.py``).
    """

    def __init__(
        self,
        model,
        *,
        optim: OptimSettings,
        total_steps: int,
        regularizer: Regularizer | None = None,
        metrics_path: str | Path | None = None,
        heldout: HeldOut | None = None,
        hooks: MethodHooks | None = None,
    ):
        super().__init__()
        self.model = model.train()
        self.optim, self.total_steps = optim, total_steps
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.heldout = heldout
        self.heldout_seconds = 0.0  # time spent on the held-out loss in this fit (result.json attempts)
        # SORSA layers whose vectors train get the regularizer (SVFit freezes them: nothing to regularize or log)
        self.has_regularized_layers = bool(regularized_layers(model))
        self.regularizer = (regularizer if self.has_regularized_layers else None) or Regularizer(0.0)
        self.hooks = hooks or MethodHooks()
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
        return self.hooks.loss(self.model, self.regularizer.loss(self, loss))

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
        self.regularizer.before_clip(self)
        self._window["grad_norm"] = float(self._clip_grad_norm(self.optim.grad_clip or math.inf))
        self._window["lr"] = optimizer.param_groups[0]["lr"]
        self.regularizer.after_clip(self)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
        self.hooks.before_step(self.model, torch_optimizer, self.last_metrics["step"])
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.regularizer.after_step(self)
        self._record_step()
        self.hooks.after_step(self.model, torch_optimizer, self.last_metrics["step"])

    def fsdp_root(self):
        return fsdp_root(self._trainer)

    def _clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the trainable gradients to ``max_norm`` in total; the total norm before clipping.

        Under DDP every rank holds the all-reduced gradients, so the local norm is the global one. Under
        FSDP each rank holds a shard: FSDP's own clip_grad_norm_ reduces the norm over the shards.
        """
        root = self.fsdp_root()
        if root is not None:
            return root.clip_grad_norm_(max_norm)
        return torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm)

    # ---- the penalty, for the regularizer's hooks: computed once per step, the value logged ----
    def penalty(self) -> torch.Tensor:
        """L_orth of the current factors, differentiable (the loss mode adds it to the loss)."""
        penalty = orthonormal_penalty(self.model)
        self._step_penalty = penalty.detach()
        return penalty

    def penalty_grads(self):
        """(factors, dL_orth/dfactor) in one batched pass (``penalty_and_grads``), whose L_orth is the value
        this step logs. Every rank gets the same values, so DDP ranks stay in sync."""
        root = self.fsdp_root()
        if root is not None:
            value, params, grads = sharded_penalty_and_grads(self.model, root, self.device)
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
        root = self.fsdp_root()
        if root is not None:
            return float(sharded_penalty_and_grads(self.model, root, self.device)[0])
        with torch.no_grad():
            return float(orthonormal_penalty(self.model))

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.optim, self.total_steps)

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
            "heldout_loss": self._heldout_loss()
            if self.heldout and self.heldout.due(step, self.total_steps)
            else None,
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

    def _heldout_loss(self) -> float:
        """Every rank computes it on the whole set, in the training precision (under FSDP on whole parameters,
        gathered for the pass: the adapters' and the base model's, once more in memory)."""
        context = self.trainer.precision_plugin.forward_context if self._trainer is not None else nullcontext
        started = time.perf_counter()
        with whole_model(self.model, self.fsdp_root(), every_rank=True) as model:
            loss = heldout_loss(model, self.heldout.batches, self.device, context)
        self.heldout_seconds += time.perf_counter() - started
        return loss

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
        trainable |= {f"model.{key}" for key in self.hooks.checkpoint_keys(self.model)}  # e.g. SST's vectors
        kept = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        if checkpoint["state_dict"] and not kept:  # a resume would silently restart the adapters
            raise RuntimeError("checkpoint: no trainable parameter matched the state dict's names")
        checkpoint["state_dict"] = kept
