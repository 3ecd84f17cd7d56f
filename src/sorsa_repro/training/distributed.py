"""Multi-process training: the DDP/FSDP strategies built from the trainer config, and reading a model
that FSDP shards (whole parameters on rank 0, names as in the unwrapped model)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

# what FSDP (and activation-checkpoint wrappers) insert into parameter names
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def clean_name(name: str) -> str:
    """A parameter name as the unwrapped model (and a full FSDP state dict) spells it."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def fsdp_root(trainer) -> nn.Module | None:
    """The root FullyShardedDataParallel module when ``trainer`` trains under FSDP, else None."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = trainer.strategy.model if trainer is not None else None
    return model if isinstance(model, FullyShardedDataParallel) else None


@contextmanager
def whole_model(model: nn.Module, root: nn.Module | None, every_rank: bool = False) -> Iterator[nn.Module]:
    """``model`` as a plain module with whole parameters, to read (not train) inside the block.

    ``root`` is the FSDP root that shards ``model`` (``fsdp_root``), or None, when ``model`` is yielded as it
    is. Under FSDP every rank must enter (the parameters are all-gathered) and only global rank 0 gets the
    whole parameters, on the CPU when training on GPUs (``every_rank``: every rank gets them, where they
    train: the held-out loss's forward pass); the FSDP wrappers inside ``model`` are lifted out of the module
    tree for the block, so names, ``state_dict``, ``save_pretrained`` and ``forward`` are the unwrapped
    model's. Changes to parameter values inside the block are not written back to the shards.
    """
    if root is None:
        yield model
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    offload = next(root.parameters()).device.type != "cpu" and not every_rank
    with FullyShardedDataParallel.summon_full_params(
        root, writeback=False, rank0_only=not every_rank, offload_to_cpu=offload
    ):
        lifted = _lift_wrappers(model, FullyShardedDataParallel)
        try:
            yield model
        finally:
            for parent, attr, wrapper in reversed(lifted):
                parent._modules[attr] = wrapper


def _lift_wrappers(model: nn.Module, wrapper_type: type) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every ``wrapper_type`` submodule by the module it wraps; (parent, attribute, wrapper) of each."""
    lifted = []
    stack = [model]
    while stack:
        parent = stack.pop()
        for attr, child in list(parent._modules.items()):
            while isinstance(child, wrapper_type):
                lifted.append((parent, attr, child))
                child = child.module
                parent._modules[attr] = child
            if child is not None:
                stack.append(child)
    return lifted


def is_global_zero() -> bool:
    """Whether this process is global rank 0 (also after the trainer is gone, and before one exists)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def release_process_group() -> None:
    """End the training's process group and free cached GPU memory (before evaluation starts vLLM)."""
    import gc

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_strategy(cfg: DictConfig):
    """A Lightning strategy from ``trainer.strategy``: a name ("auto", "ddp", ...) passes through; a
    mapping with ``name: ddp | fsdp`` and the strategy's keyword arguments builds the object."""
    spec = cfg.trainer.strategy
    if isinstance(spec, str):
        return spec
    kwargs = OmegaConf.to_container(spec, resolve=True)
    name = kwargs.pop("name", None)
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(**kwargs)
    if name == "fsdp":
        if cfg.method.name in ("kasa", "sst"):  # outside forward, FSDP holds each rank's shards only
            raise ValueError(
                f"trainer=fsdp with method={cfg.method.name}: "
                + ("KaSA's regularizer reads whole factors" if cfg.method.name == "kasa" else
                   "SST's rounds rewrite whole singular vectors")
                + " between forward passes, where FSDP holds shards: use trainer=ddp (or one device)"
            )  # fmt: skip
        own_layers = cfg.method.name in ("sorsa", "svfit")  # SORSA's layer: its factors are adapter_dtype
        bf16_adapters = own_layers and cfg.method.get("adapter_dtype") in ("bfloat16", "bf16")
        if cfg.train.precision == "reference" and cfg.method.get("residual_dtype") not in (
            None,
            "float32",
            "fp32",
        ):
            raise ValueError(
                "trainer=fsdp with train.precision=reference stores the residual in "
                f"{cfg.method.residual_dtype} beside fp32 adapters in one FSDP unit, which torch's FSDP cannot "
                "flatten: use method.residual_dtype=float32 (the same forward under bf16 autocast, as PiSSA's "
                "own code ran), train.precision=bf16-mixed, or trainer=ddp"
            )
        if cfg.train.precision == "bf16-true" and not (cfg.method.name == "full" or bf16_adapters):
            # torch FSDP flattens a unit's parameters into one tensor of one dtype: bf16 frozen weights and
            # fp32 adapters (SORSA's factors, PEFT's autocast LoRA) cannot share a decoder-layer unit
            raise ValueError(
                "trainer=fsdp with train.precision=bf16-true mixes bf16 weights and fp32 adapters in one FSDP "
                "unit, which torch's FSDP cannot flatten: use train.precision=bf16-mixed (fp32 storage, bf16 "
                "compute), method.adapter_dtype=bfloat16 (SORSA), or trainer=ddp"
            )
        from functools import partial

        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        wrap = set(kwargs.pop("auto_wrap", None) or ())
        if wrap:  # by class name, so one config serves Llama, Mistral and Gemma
            kwargs["auto_wrap_policy"] = partial(lambda_auto_wrap_policy, lambda_fn=_ClassNamed(wrap))
        from sorsa_repro.training.fsdp_strategy import CpuCapableFSDP  # imports Lightning

        return CpuCapableFSDP(**kwargs)
    raise ValueError(f"trainer.strategy.name={name!r}: use ddp or fsdp (or a Lightning strategy name string)")


class _ClassNamed:
    """Picklable predicate: is the module's class named one of ``names``."""

    def __init__(self, names: set[str]):
        self.names = names

    def __call__(self, module) -> bool:
        return type(module).__name__ in self.names
