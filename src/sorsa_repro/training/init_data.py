"""The training examples a data-driven init reads (EVA, CorDA: ``methods.DATA_METHODS``), and its record.

They are the first ``method.init_examples`` examples of the run's epoch-0 order (the sampler's seeded
permutation: the examples training starts with), collated in micro-batches of ``train.batch_size``; every
process reads the same ones, so every rank builds the same init. The init's result (the initial adapter
factors) is kept next to the checkpoint, ``checkpoints/initial_adapter.safetensors``: a resumed run restores
it (``apply_method(..., initial_adapter=...)``, CorDA's residual base included) instead of reading the data
again, so it continues from exactly the model the interrupted attempt built.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sorsa_repro.data.sampler import ResumableSampler
from sorsa_repro.methods import DATA_METHODS, MethodConfig

log = logging.getLogger(__name__)

INITIAL_ADAPTER = "checkpoints/initial_adapter.safetensors"


@dataclass
class InitData:
    batches: list[dict]  # input_ids, attention_mask, labels (+ the collator's counts)
    identity: dict  # for result.json: which examples, how many, in which micro-batches


def init_data(data, method: MethodConfig) -> InitData | None:
    """The batches ``method``'s init reads from the data module ``data`` (None for methods without one).

    It reads at most ``method.init_examples`` examples (all of a smaller training set; ``identity`` records
    both numbers). Raises ValueError, before any model loads, when (EVA) a micro-batch has fewer response
    tokens than the rank: EVA's incremental SVD skips such batches."""
    if method.name not in DATA_METHODS:
        return None
    data.setup()
    # at most init_examples: a small experiment's whole training set may be shorter (mini: 20 examples)
    n = min(method.init_examples, len(data.train_dataset))
    size = len(data.train_dataset)
    order = list(ResumableSampler(size, data.seed))[:n]
    batches = [
        data.collator([data.train_dataset[i] for i in order[start : start + data.batch_size]])
        for start in range(0, n, data.batch_size)
    ]
    label_tokens = [int(b["labels"].ne(-100).sum()) for b in batches]
    if method.name == "eva" and min(label_tokens) < method.rank:
        raise ValueError(
            f"EVA at rank {method.rank} needs >= {method.rank} response tokens in every micro-batch of its data pass; "
            f"the first {n} examples in micro-batches of {data.batch_size} have {min(label_tokens)} at least: "
            "raise train.batch_size or lower method.rank"
        )
    ids = [str(data.examples[i]["id"]) for i in order]
    identity = {
        "examples": n,
        "requested": method.init_examples,
        "micro_batches": len(batches),
        "batch_size": data.batch_size,
        "selection": f"the first {n} examples of epoch 0 (seed {data.seed}): where training starts",
        "example_ids": ids,
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
        "label_tokens": sum(label_tokens),
    }
    return InitData(batches, identity)


def save_initial(run_dir: Path, state: dict[str, torch.Tensor]) -> None:
    """Keep the init's result for a resume (written before the first checkpoint)."""
    from safetensors.torch import save_file

    path = Path(run_dir) / INITIAL_ADAPTER
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def load_initial(run_dir: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = Path(run_dir) / INITIAL_ADAPTER
    if not path.exists():
        return None
    return load_file(str(path))
