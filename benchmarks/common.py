"""Shared by the benchmarks: Llama-2-7B shapes, interleaved timing, memory accounting, tables."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MIB = 2**20


def llama2_7b_config(layers: int = 32, **overrides):
    """Llama-2-7B's shape (hidden 4096, intermediate 11008, 32 heads, vocab 32000), any depth."""
    from transformers import LlamaConfig

    shape = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=layers,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    config = LlamaConfig(**{**shape, **overrides})
    config._attn_implementation = "sdpa"
    return config


def device_for(preset: str) -> torch.device:
    if preset == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--preset gpu needs a CUDA GPU (torch.cuda.is_available() is False here)")
        return torch.device("cuda")
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each fn, calls interleaved (order reversed every round) so load drifts hit all."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name in list(fns)[:: 1 if i % 2 == 0 else -1]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


@contextlib.contextmanager
def saved_for_backward(exclude: Iterable[torch.Tensor] = ()):
    """Yields {storage pointer: bytes} of the tensors autograd saves for backward inside the block.

    Unique storages are counted once (views share one); storages of ``exclude`` (the parameters,
    which exist whether or not autograd saves them) are left out.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def static_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Parameters (all), buffers (SALT's and SST's frozen singular vectors), gradients (trainable ones) and
    optimizer state, in bytes."""
    params = {p.untyped_storage().data_ptr(): p for p in model.parameters()}.values()
    trainable = [p for p in params if p.requires_grad]
    state = 0
    if optimizer is not None:
        for entry in optimizer.state.values():
            state += sum(t.nbytes for t in entry.values() if torch.is_tensor(t))
    buffers = {b.untyped_storage().data_ptr(): b for b in model.buffers()}.values()
    return {
        "params": sum(p.nbytes for p in params),
        "buffers": sum(b.nbytes for b in buffers),
        "grads": sum(p.nbytes for p in trainable),
        "optimizer": state,
    }


def reference_sorsa_layer_module():
    """The reference package's ``sorsa/layer.py``, loaded by path (its ``__init__`` fails to import)."""
    spec = importlib.util.find_spec("sorsa")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the reference package is missing: pip install --no-deps sorsa==1.0.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "layer.py"
    layer_spec = importlib.util.spec_from_file_location("sorsa_reference_layer", path)
    module = importlib.util.module_from_spec(layer_spec)
    layer_spec.loader.exec_module(module)
    return module


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError, ValueError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
