"""End-to-end training throughput of SORSA and LoRA through the project's Lightning module.

A Llama with random weights (gpu: Llama-2-7B's shape in bf16 with fp32 adapters at rank 128, the
paper's 2 sequences x 512 tokens per micro-batch; cpu: a tiny stand-in of the same architecture in
fp32) is adapted with ``apply_method`` and trained by ``FineTuneModule`` (SORSA: the orthonormal
penalty in reference mode; clipping, AdamW, cosine schedule) on random tokens with ``lightning.Trainer``.
tokens/s = tokens of the timed optimizer steps / their wall time, after warm-up steps.

Model FLOPs utilisation (GPU): FLOPs per token / the GPU's dense bf16 peak. Full fine-tuning: 6 N
(N parameters). Adapters: frozen weights run forward (2 N_frozen) and pass the input gradient back
(2 N_frozen) but get no weight gradient; adapter weights need all three (6 N_adapter): so
4 N_frozen + 6 N_adapter per token. Attention-score FLOPs are left out, as the 6 N rule does.
"""

from __future__ import annotations

import gc
import time

import torch

from benchmarks.common import device_for, llama2_7b_config, median

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM parts
TINY = dict(
    hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4, vocab_size=2048
)
SMOKE = dict(
    hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4, vocab_size=512
)
PRESETS = {
    "cpu": dict(
        model=TINY,
        layers=4,
        dtype="float32",
        rank=16,
        batch=2,
        seq=128,
        accumulate=2,
        warmup=1,
        steps=3,
        rounds=3,
    ),
    "gpu": dict(
        model={},
        layers=32,
        dtype="bfloat16",
        rank=128,
        batch=2,
        seq=512,
        accumulate=4,
        warmup=2,
        steps=8,
        rounds=1,
    ),
    "smoke": dict(
        model=SMOKE,
        layers=2,
        dtype="float32",
        rank=4,
        batch=1,
        seq=16,
        accumulate=1,
        warmup=1,
        steps=2,
        rounds=1,
    ),
}
METHODS = ("sorsa", "lora")
COLUMNS = ["method", "params", "trainable", "tokens_per_step", "step_s", "tokens_per_s", "vs_lora", "mfu"]


def step_clock(device: torch.device):
    """A Lightning callback noting the wall time at the end of every optimizer step."""
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.step = 0

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step != self.step:  # an optimizer step was just taken
                self.step = trainer.global_step
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())

    return StepClock()


def build(method: str, settings: dict, device: torch.device):
    from transformers import AutoModelForCausalLM

    from sorsa_repro.methods import apply_method

    config = llama2_7b_config(settings["layers"], **settings["model"])
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, settings["dtype"]))
    cfg = {"name": method, "rank": settings["rank"], "svd": "randomized", "niter": 4}
    if method == "lora":
        cfg["alpha"] = settings["rank"]
    return apply_method(model, cfg)


def train_steps(model, method: str, settings: dict, device: torch.device) -> tuple[float, int]:
    """(seconds per optimizer step after warm-up, tokens per optimizer step)."""
    import lightning as L

    from sorsa_repro.training.module import FineTuneModule

    steps = settings["warmup"] + settings["steps"]
    shape = (settings["batch"], settings["seq"])
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps * settings["accumulate"]):
        ids = torch.randint(3, model.config.vocab_size, shape, generator=gen)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    from sorsa_repro.training.optim import OptimSettings
    from sorsa_repro.training.ortho import regularizer

    reg = regularizer("reference", 4e-4, 3e-5, 64) if method == "sorsa" else None  # coefficient 0.208
    module = FineTuneModule(model, optim=OptimSettings(2e-5), total_steps=steps, regularizer=reg)
    clock = step_clock(device)
    trainer = L.Trainer(
        accelerator=device.type if device.type == "cpu" else "gpu",
        devices=1,
        precision="32-true",  # bf16 weights stay bf16, fp32 adapters fp32 (the suite's bf16-true)
        max_steps=steps,
        accumulate_grad_batches=settings["accumulate"],
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, loader)
    timed = clock.times[settings["warmup"] - 1 :] if settings["warmup"] else clock.times
    seconds = (timed[-1] - timed[0]) / (len(timed) - 1) if len(timed) > 1 else float("nan")
    return seconds, settings["batch"] * settings["seq"] * settings["accumulate"]


def flops_per_token(model) -> float:
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * frozen + 6 * trainable


def run(preset: str, smoke: bool = False) -> dict:
    device = device_for(preset)
    settings = PRESETS["smoke" if smoke else preset]
    name = torch.cuda.get_device_name() if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    # cpu: both tiny models stay resident and alternate per round; gpu: one 7B model at a time
    resident = {m: build(m, settings, device) for m in METHODS} if device.type == "cpu" else {}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    info: dict[str, dict] = {}
    for r in range(settings["rounds"]):
        for method in METHODS[:: 1 if r % 2 == 0 else -1]:
            model = resident[method] if method in resident else build(method, settings, device)
            seconds, tokens = train_steps(model, method, settings, device)
            times[method].append(seconds)
            info[method] = {
                "params": sum(p.numel() for p in model.parameters()),
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "flops_per_token": flops_per_token(model),
                "tokens_per_step": tokens,
            }
            if method not in resident:
                del model
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    rows = []
    for method in METHODS:
        step_s = median(times[method])
        tps = info[method]["tokens_per_step"] / step_s
        mfu = info[method]["flops_per_token"] * tps / peak if peak else None
        rows.append(
            {
                "method": method,
                **info[method],
                "step_s": step_s,
                "step_s_all": times[method],
                "tokens_per_s": tps,
                "mfu": mfu,
            }
        )
    lora = next(r for r in rows if r["method"] == "lora")
    for row in rows:
        row["vs_lora"] = row["tokens_per_s"] / lora["tokens_per_s"]
    notes = [
        "FLOPs per token: 4 N_frozen + 6 N_trainable (6 N for full fine-tuning); MFU against the dense bf16 peak"
    ]
    if device.type == "cpu":
        notes.append(
            "cpu: a tiny stand-in of the Llama architecture, not Llama-2-7B (that needs a GPU); no MFU"
        )
    return {"settings": settings, "columns": COLUMNS, "rows": rows, "notes": notes}
