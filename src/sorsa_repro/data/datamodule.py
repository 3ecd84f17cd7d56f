"""LightningDataModule for supervised fine-tuning on math word problems."""

from __future__ import annotations

import os

import lightning as L
from torch.utils.data import DataLoader, Dataset

from .custom import check_fields, check_train_source, is_builtin
from .heldout import split_train_heldout
from .identity import data_identity
from .sampler import ResumableSampler
from .tokenize import LONG_PROMPT_MODES, PadCollator, check_modes, encode_examples, pad_token_id


class EncodedDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class ResumableLoader(DataLoader):
    """Tells Lightning the loader resumes mid-epoch (its sampler skips what was consumed)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MathDataModule(L.LightningDataModule):
    """Builds the training set once (load -> encode with prompt masking) and serves seeded shuffled batches.

    Arguments mirror the Hydra `data` config group. `seed` seeds the shuffling; `data_seed` (default:
    `seed`) picks the synthetic problems, so a seed sweep can keep the data fixed if it wants.
    `long_prompts="drop"` skips prompts longer than max_length (98 of MATH train's 7500 at 512 tokens
    with SmolLM2's tokenizer) instead of raising. The constructor only validates; data is loaded on
    `setup()` or on first access to `num_train_examples` (which the trainer needs for optimizer steps).
    Your own data: `name` is a .json/.jsonl file or a hub dataset id (`split`, `config`), `fields` maps
    query and response to its field names (custom.load_train_examples). `heldout_size` rows right after the
    training subset are held out for the held-out loss (``heldout.py``; ``heldout_batches``).
    """

    def __init__(
        self,
        tokenizer,
        name: str = "synthetic",
        limit: int | None = None,
        max_length: int = 512,
        truncation: str = "joint",
        tokenization: str = "concatenated",
        long_prompts: str = "error",
        seed: int = 42,
        data_seed: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        data_dir: str | os.PathLike | None = None,
        pad_to_multiple_of: int | None = None,
        drop_last: bool = False,
        fields=None,
        split: str | None = None,
        config: str | None = None,
        heldout_size: int = 0,
    ):
        super().__init__()
        check_train_source(name, fields)  # unknown names, missing or non-JSON files, bad field mappings
        check_modes(tokenization, truncation)
        if long_prompts not in LONG_PROMPT_MODES:
            raise ValueError(f"unknown long_prompts {long_prompts!r}; expected one of {LONG_PROMPT_MODES}")
        for key, value in (("max_length", max_length), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.tokenizer = tokenizer
        self.name, self.limit, self.max_length, self.truncation = name, limit, max_length, truncation
        self.tokenization = tokenization
        self.seed, self.batch_size, self.num_workers, self.data_dir = seed, batch_size, num_workers, data_dir
        self.data_seed = seed if data_seed is None else data_seed  # picks the synthetic problems
        self.long_prompts, self.drop_last = long_prompts, drop_last
        self.num_dropped = 0
        self.fields = None if is_builtin(name) else check_fields(fields)
        self.split, self.config = split or "train", config
        self.collator = PadCollator(pad_token_id(tokenizer), pad_to_multiple_of)
        self.heldout_size = heldout_size
        self.examples: list[dict] | None = None
        self.heldout_examples: list[dict] = []
        self.train_dataset: EncodedDataset | None = None
        self.heldout_encoded: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        examples, heldout = split_train_heldout(
            self.name,
            self.limit,
            self.heldout_size,
            self.data_dir,
            self.data_seed,
            self.fields,
            self.split,
            self.config,
        )
        encoded = self._encode(examples)
        kept = {e["id"] for e in encoded}
        self.examples = [e for e in examples if e["id"] in kept]
        self.num_dropped = len(examples) - len(self.examples)
        self.heldout_encoded = self._encode(heldout)
        held = {e["id"] for e in self.heldout_encoded}
        self.heldout_examples = [e for e in heldout if e["id"] in held]
        self.train_dataset = EncodedDataset(encoded)

    def _encode(self, examples: list[dict]) -> list[dict]:
        return encode_examples(
            self.tokenizer,
            examples,
            self.max_length,
            self.truncation,
            self.long_prompts,
            tokenization=self.tokenization,
        )

    def heldout_batches(self, batch_size: int = 8) -> list[dict]:
        """The held-out examples, collated into fixed batches in row order (the held-out loss's input)."""
        self.setup()
        items = self.heldout_encoded
        return [self.collator(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]

    @property
    def num_train_examples(self) -> int:
        self.setup()
        return len(self.train_dataset)

    def identity(self) -> dict:
        """Provenance of the training data (for result.json)."""
        self.setup()
        ident = data_identity(
            self.name,
            self.split,
            self.limit,
            self.data_dir,
            self.data_seed,
            self.examples,
            self.fields,
            self.config,
        )
        extra = {
            "max_length": self.max_length,
            "truncation": self.truncation,
            "tokenization": self.tokenization,
            "dropped_long_prompts": self.num_dropped,
        }
        heldout = data_identity(
            self.name,
            self.split,
            None,
            self.data_dir,
            self.data_seed,
            self.heldout_examples,
            self.fields,
            self.config,
        )
        extra["heldout"] = {k: heldout[k] for k in ("rows", "content_sha256") if k in heldout}
        extra["heldout"]["first_id"] = self.heldout_examples[0]["id"] if self.heldout_examples else None
        return {**ident, **extra}

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        sampler = ResumableSampler(len(self.train_dataset), self.seed, rank, world)
        # only whole accumulation windows are trained: floor(micro-batches / accumulation) steps per epoch
        micro_batches = -(-len(sampler) // self.batch_size)
        sampler.per_epoch = (micro_batches // accumulate) * accumulate * self.batch_size
        if trainer is not None:
            # Lightning restores the loop's progress before asking for the loader: on resume, skip the
            # batches of this epoch that were already consumed, so the run continues on the same data.
            # A checkpoint from an epoch's last batch resumes at the next epoch with the count not yet
            # reset: nothing of that epoch is consumed.
            consumed = trainer.fit_loop.epoch_loop.batch_progress.current.ready
            per_epoch = (
                len(sampler) // self.batch_size if self.drop_last else -(-len(sampler) // self.batch_size)
            )
            sampler.skip(consumed * self.batch_size if consumed < per_epoch else 0)
        return ResumableLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            persistent_workers=self.num_workers > 0,
        )
