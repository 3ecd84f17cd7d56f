"""Training-step time on the CPU, alone and beside one competing CPU-bound process, under OpenMP's default
wait policy and under ``OMP_WAIT_POLICY=PASSIVE`` (what ``sorsa_repro.cpu_threads`` sets).

Each setting runs in a subprocess of its own (OpenMP reads its settings once): load the model, one warm-up
step, then ``steps`` timed forward + backward + AdamW steps on a fixed batch; the median is reported. The
competing process is a Python busy loop. Rounds are interleaved, so drift in the machine's speed hits every
setting. slowdown = median step time beside the competitor / alone, same policy; fair share on n cores with
one competitor is about n / (n - 1) ... 2x (2 cores).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "cpu": dict(model="smollm2-135m-instruct", batch=4, tokens=150, steps=4, rounds=3),
    "gpu": dict(model="smollm2-135m-instruct", batch=4, tokens=150, steps=4, rounds=3),  # a CPU benchmark
    "smoke": dict(model="tiny-random", batch=2, tokens=16, steps=2, rounds=1),
}
POLICIES = {"default": None, "passive": "PASSIVE"}
COLUMNS = ["policy", "competitor", "step_s", "slowdown", "vs_default"]


def worker(model: str, batch: int, tokens: int, steps: int) -> float:
    import torch

    from sorsa_repro.models import load_base_model

    torch.manual_seed(0)
    m, _ = load_base_model(model)
    m.train()
    x = torch.randint(0, m.config.vocab_size, (batch, tokens))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)

    def step():
        m(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(policy: str | None, competitor: bool, settings: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    args = [str(settings[k]) for k in ("model", "batch", "tokens", "steps")]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competitor else None
    try:
        cmd = [sys.executable, "-m", "benchmarks.cpu_contention", *args]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=True)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    return float(out.stdout.strip().splitlines()[-1])


def run(preset: str, smoke: bool = False) -> dict:
    settings = PRESETS["smoke" if smoke else preset]
    times: dict[tuple[str, bool], list[float]] = {(p, c): [] for p in POLICIES for c in (False, True)}
    for _ in range(settings["rounds"]):
        for policy, competitor in times:
            times[(policy, competitor)].append(measure(POLICIES[policy], competitor, settings))
    median = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {
            "policy": policy,
            "competitor": competitor,
            "step_s": median[(policy, competitor)],
            "slowdown": median[(policy, competitor)] / median[(policy, False)],
            "vs_default": median[(policy, competitor)] / median[("default", competitor)],
        }
        for policy, competitor in times
    ]
    notes = [f"{os.cpu_count()} cores; one competing busy loop; medians over {settings['rounds']} rounds"]
    return {"settings": settings, "columns": COLUMNS, "rows": rows, "notes": notes}


if __name__ == "__main__":
    model, batch, tokens, steps = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps(worker(model, batch, tokens, steps)))
