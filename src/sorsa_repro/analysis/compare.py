"""Spectral change between two saved Hugging Face causal LMs, one layer at a time.

    python -m sorsa_repro.analysis.compare base=<path or hub id> tuned=<path> [out=spectral_final.csv]
        [modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj|all] [k=10] [eps=0.1,0.3,0.5]
        [dtype=float32|float64] [device=cpu]

The Linear layers are found on a weightless (meta-device) copy of the base model. Their weights are then
read one tensor at a time from the checkpoints' safetensors files (memory-mapped), so only one pair of
matrices and its SVDs is in memory at once: a 7B pair needs a few GiB, not two whole models. A checkpoint
without safetensors, or whose tensor names differ from the module names, is loaded whole with
AutoModelForCausalLM (float32, CPU) instead. The tuned model must be a plain (merged) HF model.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from torch import nn

from sorsa_repro.analysis.spectral import DEFAULT_EPS, DEFAULT_K, layer_row, rows_to_frame, spectral_metrics
from sorsa_repro.results import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def linear_names(model_path: str, modules: Sequence[str] | None) -> list[str]:
    """Names of the nn.Linear layers whose last name component is in ``modules`` (all if None)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and (modules is None or name.rsplit(".", 1)[-1] in modules)
    ]


def _safetensors_files(model_path: str) -> list[Path]:
    path = Path(model_path)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model_path, allow_patterns=["*.safetensors", "*.json"]))
        except Exception as err:  # no hub access or no such repo: from_pretrained will say why
            log.warning("could not resolve %s to a local snapshot (%s)", model_path, err)
            return []
    return sorted(path.glob("*.safetensors"))


def weight_reader(model_path: str, names: Sequence[str], lazy: bool = True) -> Callable[[str], torch.Tensor]:
    """A function from a Linear layer's name to its float32 weight."""
    if lazy:
        where = {}
        for file in _safetensors_files(model_path):
            with safe_open(file, framework="pt") as f:
                where.update(dict.fromkeys(f.keys(), file))
        if all(f"{n}.weight" in where for n in names):

            def read(name: str) -> torch.Tensor:
                with safe_open(where[f"{name}.weight"], framework="pt") as f:
                    return f.get_tensor(f"{name}.weight").float()

            return read
        log.warning("%s: no safetensors with the module names; loading the whole model", model_path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    modules = dict(model.named_modules())
    return lambda name: modules[name].weight.detach()


def compare_models(
    base: str,
    tuned: str,
    *,
    modules: Sequence[str] | None = DEFAULT_MODULES,
    k: int = DEFAULT_K,
    eps: Sequence[float] = DEFAULT_EPS,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    lazy: bool = True,
) -> pd.DataFrame:
    """Spectral metrics of every target Linear layer, tuned against base (see ``spectral.py``)."""
    names = linear_names(base, modules)
    if not names:
        raise ValueError(f"no Linear layers named {modules} in {base}")
    read0, read_t = weight_reader(base, names, lazy), weight_reader(tuned, names, lazy)
    rows = []
    for i, name in enumerate(names, 1):
        start = time.perf_counter()
        w0, wt = read0(name).to(device), read_t(name).to(device)
        rows.append(layer_row(name, spectral_metrics(w0, wt, k=k, eps=eps, dtype=dtype)))
        log.info("[%d/%d] %s %s %.1fs", i, len(names), name, tuple(w0.shape), time.perf_counter() - start)
    return rows_to_frame(rows)


def main(argv: Sequence[str] | None = None) -> Path:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv) if "=" in a)
    unknown = set(args) - {"base", "tuned", "out", "modules", "k", "eps", "dtype", "device"}
    if unknown or not {"base", "tuned"} <= set(args):
        sys.exit(__doc__ + (f"\nunknown arguments: {sorted(unknown)}" if unknown else ""))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    modules = args.get("modules", ",".join(DEFAULT_MODULES))
    df = compare_models(
        args["base"],
        args["tuned"],
        modules=None if modules == "all" else modules.split(","),
        k=int(args.get("k", DEFAULT_K)),
        eps=[float(e) for e in args.get("eps", ",".join(map(str, DEFAULT_EPS))).split(",")],
        dtype=_DTYPES[args.get("dtype", "float32")],
        device=args.get("device", "cpu"),
    )
    out = Path(args.get("out", "spectral_final.csv"))
    atomic_write_text(out, df.to_csv())
    log.info("wrote %s (%d layers)", out, len(df))
    return out


if __name__ == "__main__":
    main()
