"""What to evaluate and how: ``EvalConfig``, the one schema of an evaluation (its fields are the keys of
conf/eval.yaml and of the ``evaluate`` section of a training config), validated before anything loads."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from sorsa_repro.evaluation.backends import BACKENDS
from sorsa_repro.evaluation.tasks import (
    BENCHMARKS,
    DEFAULT_GENERATION,
    GENERATION_PROTOCOLS,
    generation_protocol,
)

DEFAULT_MAX_NEW_TOKENS = GENERATION_PROTOCOLS[DEFAULT_GENERATION].max_new_tokens
VLLM_CHUNK_SIZE = 256


@dataclass
class EvalConfig:
    """What to evaluate and how; the fields are the keys of conf/eval.yaml."""

    run: str | None = None  # a run folder: reads <run>/merged/, writes predictions/ and result.json there
    model: str | None = (
        None  # or a model: local folder, hub id, smollm2-135m-instruct (or tiny-random, hf only)
    )
    out_dir: str | None = None  # for model=: where to write; default results/eval/<model or adapter name>/
    adapter: str | None = None  # with model=: a peft or SORSA adapter folder, merged into the model first
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k", "math"])
    limit: int | dict | None = None  # first N problems: one int for all, or per benchmark; None = all
    # stop strings and token budgets of a reference's evaluation (evaluation/tasks.py): sorsa-v1 |
    # metamath-v1 | wizardmath-v1
    generation: str = DEFAULT_GENERATION
    max_new_tokens: int | dict | None = None  # one int for all, or per benchmark; None = the protocol's
    backend: str = "auto"  # vllm | hf | auto (vllm when installed)
    batch_size: int | None = None  # hf: prompts per generate call; None: 64 on a GPU, 8 on CPU
    # prompts generated between two rewrites of the predictions file (an interrupt loses at most one chunk);
    # None: 4 x batch_size for hf, 256 for vllm (which needs many prompts at once to fill its batches)
    chunk_size: int | None = None
    dtype: str | None = None  # None: bfloat16 on a GPU, float32 on CPU
    device: str | None = None  # hf: None = cuda when available
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float | None = None  # vllm: None = 0.9 on GPU; on CPU a fixed KV cache instead
    kv_cache_gib: float | None = None  # vllm: KV-cache size; None = 2 GiB on CPU, from the fraction on GPU
    enforce_eager: bool | None = None  # vllm: None = eager on CPU (start-up ~25 s instead of ~100 s)
    max_model_len: int | None = None  # vllm: None = the model's
    data_dir: str | None = (
        None  # local data (laid out like shared/data); None = $SORSA_DATA_DIR, else the hub
    )
    seed: int = 0  # picks the synthetic benchmark's held-out problems
    overwrite: bool = False  # ignore existing predictions and generate everything again

    def __post_init__(self):
        if isinstance(self.model, Mapping):
            spec = dict(self.model)
            self.model = spec.get("name")
            self.dtype = self.dtype or spec.get("dtype")
        if isinstance(self.benchmarks, str):
            self.benchmarks = [b.strip() for b in self.benchmarks.split(",") if b.strip()]
        self.benchmarks = list(self.benchmarks)
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
        if (self.run is None) == (self.model is None):
            raise ValueError(
                "give exactly one of run=<run folder> or model=<path, hub id or smollm2-135m-instruct>"
            )
        if self.adapter is not None and self.model is None:
            raise ValueError(
                "adapter= goes with model=<its base model> (a run folder's model is already merged)"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        for name in ("batch_size", "chunk_size", "tensor_parallel_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for benchmark in self.benchmarks:
            limit = self.limit_for(benchmark)
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ValueError(f"limit must be >= 1 or null, got {limit} for {benchmark}")
        protocol = generation_protocol(self.generation)
        if isinstance(self.max_new_tokens, Mapping):  # the protocol's for the benchmarks it leaves out
            self.max_new_tokens = {**protocol.max_new_tokens, **self.max_new_tokens}
        for benchmark in self.benchmarks:
            if self.max_new_tokens_for(benchmark) < 1:
                raise ValueError(f"max_new_tokens for {benchmark} must be >= 1")
        if self.dtype is not None:
            from sorsa_repro.models import resolve_dtype

            resolve_dtype(self.dtype)

    @classmethod
    def from_mapping(cls, cfg: Mapping | EvalConfig | None = None, **overrides) -> EvalConfig:
        if isinstance(cfg, EvalConfig):
            cfg = dataclasses.asdict(cfg)
        values = {k: v for k, v in dict(cfg or {}).items() if k != "hydra"}
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"unknown evaluation option(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def hf_batch_size(self) -> int:
        """Prompts per transformers ``generate`` call: 64 fill a GPU with a 7B model's decoding, 8 suit a CPU."""
        import torch

        return self.batch_size or (64 if torch.cuda.is_available() else 8)

    def chunk_size_for(self, backend: str) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return VLLM_CHUNK_SIZE if backend == "vllm" else 4 * self.hf_batch_size

    def limit_for(self, benchmark: str) -> int | None:
        return dict(self.limit).get(benchmark) if isinstance(self.limit, Mapping) else self.limit

    def max_new_tokens_for(self, benchmark: str) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        default = generation_protocol(self.generation).max_new_tokens[benchmark]
        return int((self.max_new_tokens or {}).get(benchmark, default))

    @property
    def stop(self) -> tuple[str, ...]:
        return generation_protocol(self.generation).stop
