"""What to evaluate and how: ``EvalConfig``, the one schema of an evaluation (its fields are the keys of
conf/eval.yaml and of the ``evaluate`` section of a training config), validated before anything loads.

conf/eval.yaml is the single source of the defaults and their explanations; the dataclass adds the types
and the checks."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sorsa_repro.evaluation.backends import BACKENDS
from sorsa_repro.evaluation.tasks import (
    BENCHMARKS,
    DEFAULT_GENERATION,
    GENERATION_PROTOCOLS,
    generation_protocol,
)
from sorsa_repro.layout import CONF_DIR

DEFAULT_MAX_NEW_TOKENS = GENERATION_PROTOCOLS[DEFAULT_GENERATION].max_new_tokens
VLLM_CHUNK_SIZE = 256


def _eval_yaml_defaults() -> dict:
    """conf/eval.yaml's option values (its comments explain each): the one place the defaults are written."""
    node = yaml.safe_load((CONF_DIR / "eval.yaml").read_text(encoding="utf-8"))
    return {k: v for k, v in node.items() if k not in ("defaults", "hydra")}


DEFAULTS = _eval_yaml_defaults()


def _default(name: str):
    value = DEFAULTS[name]  # a KeyError here: a field conf/eval.yaml does not set
    if isinstance(value, list | dict):
        return field(default_factory=lambda: copy.deepcopy(value))
    return field(default=value)


@dataclass
class EvalConfig:
    """What to evaluate and how: the keys of conf/eval.yaml (which explains them and holds their defaults)."""

    run: str | None = _default("run")  # a run folder: evaluates <run>/merged/, writes into it
    model: str | None = _default("model")  # or a model (conf/model option, folder, hub id, offline name)
    out_dir: str | None = _default("out_dir")
    adapter: str | None = _default("adapter")
    benchmarks: list[str] = _default("benchmarks")
    limit: int | dict | None = _default("limit")  # one int for all, or per benchmark
    generation: str = _default("generation")
    max_new_tokens: int | dict | None = _default("max_new_tokens")  # one int for all, or per benchmark
    backend: str = _default("backend")
    batch_size: int | None = _default("batch_size")
    chunk_size: int | None = _default("chunk_size")
    dtype: str | None = _default("dtype")
    device: str | None = _default("device")
    tensor_parallel_size: int = _default("tensor_parallel_size")
    gpu_memory_utilization: float | None = _default("gpu_memory_utilization")
    kv_cache_gib: float | None = _default("kv_cache_gib")
    enforce_eager: bool | None = _default("enforce_eager")
    max_model_len: int | None = _default("max_model_len")
    data_dir: str | None = _default("data_dir")
    seed: int = _default("seed")
    overwrite: bool = _default("overwrite")
    update_reference: bool = _default("update_reference")  # write into the committed reference on purpose

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


def eval_config_for_training(run_dir, cfg) -> EvalConfig:
    """The evaluation after training, as conf/train.yaml's ``evaluate`` section says: EvalConfig keys
    (benchmarks, limit, backend, max_new_tokens, batch_size, ...); the model's dtype and the data folder
    come from ``model`` and ``data``. Raises ValueError for options evaluation would reject."""
    from omegaconf import DictConfig, OmegaConf

    def plain(node):
        return (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        )

    section = plain(cfg["evaluate"])
    model, data = plain(cfg.get("model")), plain(cfg.get("data"))
    section.setdefault("dtype", model.get("dtype"))
    section.setdefault("data_dir", data.get("data_dir"))
    return EvalConfig.from_mapping(
        section,
        run=str(Path(run_dir).resolve()),
        model=None,
        # the training's: it writes into the same folder
        update_reference=bool(cfg.get("update_reference", False)),
    )


def check_target(cfg: EvalConfig, backend: str, have_model: bool = False) -> tuple[str | None, Path]:
    """``resolve_target`` (the model and the output folder, their files readable) and the reference guard:
    an evaluation writes into the committed reference only with ``update_reference=true``."""
    from sorsa_repro.evaluation.targets import resolve_target
    from sorsa_repro.layout import refuse_reference

    model_ref, out_dir = resolve_target(cfg, backend, have_model)
    refuse_reference({"run" if cfg.run else "out_dir": out_dir}, cfg.update_reference, "evaluation")
    return model_ref, out_dir


class ValidateEvaluation:
    """A Hydra callback (conf/eval.yaml): check the options and the target before Hydra creates its output
    folder, so that a rejected command writes nothing."""

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from sorsa_repro.evaluation.run import _backend_name

        try:
            options = OmegaConf.masked_copy(
                config, [k for k in config if k != "hydra"]
            )  # Hydra's: unresolvable yet
            cfg = EvalConfig.from_mapping(OmegaConf.to_container(options, resolve=True))
            check_target(cfg, _backend_name(cfg, given_model=False))
        except Exception as err:  # Hydra turns a callback's Exception into a warning; SystemExit stops
            from sorsa_repro.cli_errors import UsageExit, one_line

            raise UsageExit(one_line(err), err) from None  # one line, exit code 2 (run_entry_point)

    def __getattr__(self, name):  # Hydra calls every hook; the others do nothing
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)
