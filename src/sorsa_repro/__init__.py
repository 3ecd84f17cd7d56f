"""SORSA replication suite: SORSA, LoRA, PiSSA, full fine-tuning and other SVD-family PEFT
methods trained and evaluated under one protocol."""

__version__ = "0.1.0"
