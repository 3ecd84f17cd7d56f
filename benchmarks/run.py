"""Run the benchmarks, print their tables, write one JSON per benchmark.

python -m benchmarks.run --preset cpu                      # all, quick CPU sizes
python -m benchmarks.run --preset gpu                      # all, Llama-2-7B sizes on one GPU
python -m benchmarks.run --only svd_init --out benchmarks/out/svd_init.json
python -m benchmarks.run --smoke                           # tiny sizes: checks the scripts run
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import machine, table

BENCHMARKS = ("adapter_step", "svd_init", "generation", "train_throughput", "cpu_contention")
OUT_DIR = Path("benchmarks/out")


def run_one(name: str, preset: str, smoke: bool, out: Path, command: str) -> dict:
    from sorsa_repro.results import atomic_write_json

    module = importlib.import_module(f"benchmarks.{name}")
    started = time.perf_counter()
    result = module.run(preset, smoke=smoke)
    payload = {
        "benchmark": name,
        "preset": preset,
        "smoke": smoke,
        "command": command,
        "machine": machine(),
        "wall_s": round(time.perf_counter() - started, 1),
        **result,
    }
    print(f"\n## {name} (preset {preset}{', smoke' if smoke else ''}, {payload['wall_s']} s)\n")
    print(table(result["rows"], result["columns"]))
    for note in result.get("notes", []):
        print(f"- {note}")
    atomic_write_json(out, payload)
    print(f"\nwrote {out}")
    return payload


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="repeatable; default: all")
    parser.add_argument(
        "--out", type=Path, help="JSON path (one benchmark only); default benchmarks/out/<name>.json"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds: checks that the scripts run"
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    if args.out and len(names) != 1:
        parser.error("--out needs exactly one --only benchmark")
    command = "python -m benchmarks.run " + " ".join(argv)
    for name in names:
        out = args.out or OUT_DIR / f"{name}{'.smoke' if args.smoke else ''}.json"
        run_one(name, args.preset, args.smoke, out, command)


if __name__ == "__main__":
    main()
