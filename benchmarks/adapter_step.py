"""Adapter training step: forward, backward and AdamW step at Llama-2-7B width, one rank for all.

Variants, built from the same random weights and timed interleaved in one process: SORSA (ours),
SORSA (the reference package's layer, which builds the dense update in forward), PEFT LoRA,
PEFT PiSSA, full fine-tuning, and the SVD-family methods of issue 26: KaSA (peft's variant, its regularizer
in the step), SoMA (an adapted layer: MiLoRA's init on peft LoRA; its frozen blocks are plain layers), SALT and
SST (this suite's layers; SST's step between rounds: the re-SVD runs once per round, its cost is in
``svd_init``-like terms, not here). Ratios are to PEFT LoRA of the same run. ``init_s``: the time to adapt
the unit (SVDs included: SALT, SST, KaSA and SoMA need the exact SVD, PiSSA runs ``pissa_niter_4``).

The unit's input requires grad and backward starts from a fixed random output gradient, as for a
layer in the middle of a network. Memory:
- cpu: parameters and buffers (SALT's and SST's frozen singular vectors are buffers) + trainable gradients +
  AdamW state + the unique non-parameter storages that autograd saves for backward (``saved_tensors_hooks``),
  measured; transient tensors are not counted.
- gpu: the same static part + ``torch.cuda.max_memory_allocated`` above what was allocated before
  the step (all variants stay resident, so the static part of the others is subtracted).
Denormals are flushed to zero (CPU): see ``run``.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn

from benchmarks.common import (
    MIB,
    TARGETS,
    device_for,
    interleaved_times,
    llama2_7b_config,
    median,
    reference_sorsa_layer_module,
    saved_for_backward,
    static_bytes,
    sync,
)

VARIANTS = ("sorsa", "sorsa_reference", "lora", "pissa", "full", "kasa", "soma", "salt", "sst")
PRESETS = {
    # units: ("linear", out, in, tokens) or ("decoder", n_layers, tokens)
    "cpu": dict(
        units=[
            ("linear", 4096, 4096, 512),
            ("linear", 11008, 4096, 512),
            ("linear", 4096, 11008, 512),
            ("decoder", 1, 256),
        ],
        rank=128,
        dtype="float32",
        repeats=7,
        warmup=1,
    ),
    "gpu": dict(units=[("decoder", 4, 4096)], rank=128, dtype="bfloat16", repeats=20, warmup=3),
    "smoke": dict(
        units=[("linear", 96, 64, 16), ("decoder", 1, 8)], rank=4, dtype="float32", repeats=2, warmup=1
    ),
}
SMOKE_DECODER = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4)
COLUMNS = [
    "unit",
    "tokens",
    "variant",
    "trainable",
    "init_s",
    "step_ms",
    "time_vs_lora",
    "saved_mib",
    "peak_mib",
    "peak_vs_lora",
]


class Linear(nn.Module):
    def __init__(self, out_f: int, in_f: int):
        super().__init__()
        self.proj = nn.Linear(in_f, out_f, bias=False)

    def forward(self, x):
        return self.proj(x)


class Decoder(nn.Module):
    """A stack of Llama decoder layers (causal SDPA attention, rotary positions)."""

    def __init__(self, config, n_layers: int):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(n_layers))
        self.rotary = LlamaRotaryEmbedding(config)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device)[None]
        pe = self.rotary(x, positions)
        for layer in self.layers:
            x = layer(x, position_embeddings=pe, position_ids=positions)
        return x


def build_unit(unit: tuple, smoke: bool) -> tuple[nn.Module, list[str], int, int]:
    """(module, target suffixes, input width, tokens)."""
    if unit[0] == "linear":
        _, out_f, in_f, tokens = unit
        return Linear(out_f, in_f), ["proj"], in_f, tokens
    _, n_layers, tokens = unit
    config = llama2_7b_config(n_layers, **(SMOKE_DECODER if smoke else {}))
    return Decoder(config, n_layers), list(TARGETS), config.hidden_size, tokens


def unit_name(unit: tuple) -> str:
    return f"linear {unit[1]}x{unit[2]}" if unit[0] == "linear" else f"{unit[1]} decoder layer(s)"


def adapt(base: nn.Module, variant: str, targets: list[str], rank: int) -> tuple[nn.Module, bool]:
    """(adapted copy of ``base``, whether its forward runs under bf16 autocast)."""
    from peft import KasaConfig, LoraConfig, get_peft_model

    from sorsa_repro.methods import find_targets
    from sorsa_repro.methods.sorsa import apply_sorsa

    model = copy.deepcopy(base)
    if variant == "full":
        return model.requires_grad_(True), False
    if variant in ("kasa", "soma"):  # peft's KaSA variant; SoMA's adapted layer: MiLoRA's init on a peft LoRA
        from sorsa_repro.methods.peft_inits import init_milora

        kasa = KasaConfig(beta=1e-4, gamma=1e-3) if variant == "kasa" else None
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, kasa_config=kasa)
        model = get_peft_model(model, config)
        return (init_milora(model, marker="soma") if variant == "soma" else model), False
    if variant in ("salt", "sst"):
        from sorsa_repro.method_registry import get, resolve
        from sorsa_repro.methods.config import MethodConfig

        cfg = MethodConfig(name=variant, rank=rank, target_modules=tuple(targets))
        return resolve(get(variant).apply)(model, cfg, find_targets(model, targets), None, None), False
    if variant in ("lora", "pissa"):
        init = True if variant == "lora" else "pissa_niter_4"  # init speed only; the step is the same
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=init)
        return get_peft_model(model, config), False  # bf16 base: peft keeps fp32 adapters
    names = find_targets(model, targets)
    model = apply_sorsa(model, names, rank, svd="randomized", niter=2)
    if variant == "sorsa":
        return model, False
    ref = reference_sorsa_layer_module()
    for name in names:
        ours = model.get_submodule(name)
        layer = ref.Linear(ours.in_features, ours.out_features, r=rank).to(ours.weight.device)
        # the reference names: sorsa_A = Vt (r x in), sorsa_B = U (out x r); same factors and residual
        layer.weight.data = ours.weight.data
        layer.sorsa_A.data, layer.sorsa_S.data, layer.sorsa_B.data = ours.sorsa_Vt, ours.sorsa_S, ours.sorsa_U
        model.set_submodule(name, layer)
    # its forward mixes a bf16 input with the fp32 dense update: it ran under autocast in its trainer
    return model, model.get_submodule(names[0]).weight.dtype != torch.float32


class Step:
    """One training step of ``model`` on a fixed input and output gradient (KaSA: its regularizer added)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, dy: torch.Tensor, autocast: bool, extra=None):
        self.model, self.x, self.dy, self.autocast, self.extra = model, x, dy, autocast, extra
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-6)

    def backward(self, y: torch.Tensor) -> None:
        if self.extra is None:
            y.backward(self.dy)
        else:  # the same gradient of y, plus the method's loss term
            ((y * self.dy).sum() + self.extra()).backward()

    def forward(self) -> torch.Tensor:
        ctx = (
            torch.autocast(self.x.device.type, torch.bfloat16) if self.autocast else contextlib.nullcontext()
        )
        with ctx:
            return self.model(self.x)

    def __call__(self) -> None:
        self.backward(self.forward())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = None

    def memory(self) -> dict[str, float]:
        static = static_bytes(self.model, self.optimizer)
        fixed = sum(static.values())
        out = {"static_mib": fixed / MIB}
        if self.x.device.type == "cuda":
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self()
            torch.cuda.synchronize()
            transient = torch.cuda.max_memory_allocated() - before
            return {**out, "peak_mib": (fixed - static["grads"] + transient) / MIB}
        with saved_for_backward(exclude=[*self.model.parameters(), *self.model.buffers()]) as saved:
            y = self.forward()
        self.backward(y)
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = None
        activations = sum(saved.values())
        return {**out, "saved_mib": activations / MIB, "peak_mib": (fixed + activations) / MIB}


def bench_unit(unit: tuple, settings: dict, device: torch.device, smoke: bool) -> list[dict]:
    dtype = getattr(torch, settings["dtype"])
    torch.manual_seed(0)
    base, targets, width, tokens = build_unit(unit, smoke)
    base = base.to(device=device, dtype=dtype)
    steps, init_s = {}, {}
    for variant in VARIANTS:
        sync(device)
        started = time.perf_counter()
        model, autocast = adapt(base, variant, targets, settings["rank"])
        sync(device)
        init_s[variant] = time.perf_counter() - started
        gen = torch.Generator(device).manual_seed(1)
        x = torch.randn(1, tokens, width, device=device, dtype=dtype, generator=gen).requires_grad_(True)
        out_width = unit[1] if unit[0] == "linear" else width
        dy = torch.randn(1, tokens, out_width, device=device, dtype=dtype, generator=gen)
        extra = None
        if variant == "kasa":
            from sorsa_repro.methods.kasa import kasa_loss

            extra = lambda m=model: kasa_loss(m)  # noqa: E731
        steps[variant] = Step(model, x, dy, autocast, extra)
    del base
    times = interleaved_times(steps, settings["repeats"], settings["warmup"], device)
    rows = []
    for variant, step in steps.items():
        trainable = sum(p.numel() for p in step.model.parameters() if p.requires_grad)
        rows.append(
            {
                "unit": unit_name(unit),
                "tokens": tokens,
                "variant": variant,
                "trainable": trainable,
                "init_s": round(init_s[variant], 4),
                "step_ms": 1000 * median(times[variant]),
                "step_ms_all": [round(1000 * t, 2) for t in times[variant]],
                **step.memory(),
            }
        )
    lora = next(r for r in rows if r["variant"] == "lora")
    for row in rows:
        row["time_vs_lora"] = row["step_ms"] / lora["step_ms"]
        row["peak_vs_lora"] = row["peak_mib"] / lora["peak_mib"]
        if "saved_mib" in row:
            row["saved_vs_lora"] = row["saved_mib"] / lora["saved_mib"]
    return rows


def run(preset: str, smoke: bool = False) -> dict:
    device = device_for(preset)
    # x86 runs float ops on denormals ~100x slower; with lr 1e-6 AdamW's second moments of LoRA's tiny
    # gradients land there and the optimizer step of one variant alone took 7x longer: flush them
    torch.set_flush_denormal(True)
    settings = PRESETS["smoke" if smoke else preset]
    try:
        rows = [row for unit in settings["units"] for row in bench_unit(unit, settings, device, smoke)]
    finally:
        torch.set_flush_denormal(False)  # the default; a caller's process is left as it was
    sorsa = [r for r in rows if r["variant"] == "sorsa"]
    ref = {r["unit"]: r for r in rows if r["variant"] == "sorsa_reference"}
    targets = {
        r["unit"]: {
            "time_vs_lora<=1.10": r["time_vs_lora"] <= 1.10,
            "peak_vs_lora<=1.05": r["peak_vs_lora"] <= 1.05,
            "faster_than_reference": r["step_ms"] < ref[r["unit"]]["step_ms"],
            "leaner_than_reference": r["peak_mib"] < ref[r["unit"]]["peak_mib"],
        }
        for r in sorsa
    }
    return {
        "settings": settings,
        "memory": "cpu: params + grads + AdamW state + autograd-saved activations; "
        "gpu: params + AdamW state + max_memory_allocated above the pre-step level",
        "columns": COLUMNS,
        "rows": rows,
        "targets": targets,
    }
