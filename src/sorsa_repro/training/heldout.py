"""The held-out loss: the model's mean cross-entropy on the response tokens of rows it never trains on.

Training loss at micro-batch 2 is too noisy to rank methods on its own, and a bigger learning rate lowers it
partly by fitting the very batches it reports; the held-out loss is a forward pass over a fixed set (the
rows right after the training subset: ``data/heldout.py``), at fixed steps (``train.heldout_every``) and
always at the last step. Token-weighted: the sum of every response token's loss over the whole set divided
by the number of response tokens, so the value does not depend on how the set is cut into batches. The
model is put in eval mode (no dropout) and back, and no random number is drawn, so computing it leaves
training exactly as it would have been without it.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sorsa_repro.data.tokenize import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask")


def heldout_loss(model, batches: list[dict], device=None, context=nullcontext) -> float:
    """Token-weighted mean cross-entropy of the labelled (response) tokens of ``batches``; NaN for none."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    try:
        with torch.no_grad(), context():
            for batch in batches:
                inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
                labels = batch["labels"].to(device)
                # logits only from the position before the batch's first response token on (the prompt's
                # logits predict nothing that is scored): the output layer's work on the prompt is skipped
                first = (
                    int(labels.ne(IGNORE_INDEX).int().argmax(dim=1).min())
                    if labels.ne(IGNORE_INDEX).any()
                    else 1
                )
                keep = torch.arange(max(first - 1, 0), labels.shape[1] - 1, device=device)
                logits = model(**inputs, logits_to_keep=keep).logits
                targets = labels[:, keep + 1]
                total += F.cross_entropy(
                    logits.float().flatten(0, 1),
                    targets.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                ).double()
                tokens += int(targets.ne(IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return float(total) / tokens if tokens else float("nan")


@dataclass
class HeldOut:
    """The held-out set of a run and when to measure it: every ``every`` optimizer steps (0: only at the end)
    and at the last step."""

    batches: list[dict]
    every: int = 0

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"train.heldout_every must be >= 0, got {self.every}")

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.batches) and (step == total_steps or (self.every > 0 and step % self.every == 0))

    @property
    def rows(self) -> int:
        return sum(len(b["input_ids"]) for b in self.batches)


def heldout_set(cfg, data) -> HeldOut:
    """A run's held-out rows (its data module's) in fixed batches, and when to measure them (``cfg.train``)."""
    batches = data.heldout_batches(int(cfg.train.get("heldout_batch_size", 16)))
    return HeldOut(batches, int(cfg.train.get("heldout_every", 0)))
