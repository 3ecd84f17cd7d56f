"""``make replicate-sorsa``: sweep, evaluate, tables and plots at one of three scales.

    python -m sorsa_repro.replicate scale=mini|small|paper [seeds=0,1] [extra Hydra overrides ...]

Each stage runs as its own command (the sweep is a real Hydra multirun), so an interrupted
replication is finished by running the same command again: finished jobs are skipped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sorsa_repro.results import atomic_write_json

# scale -> experiment config, seeds of the paper_table sweep
SCALES = {
    "mini": {"experiment": "mini", "seeds": "0"},
    "small": {"experiment": "small", "seeds": "0,1"},
    "paper": {"experiment": "paper_llama2_7b", "seeds": "42"},
}


def stages(scale: str, seeds: str | None, overrides: list[str], results_dir: str, out_dir: str):
    spec = SCALES[scale]
    exp = spec["experiment"]
    seeds = seeds or spec["seeds"]
    py = sys.executable
    report = [f"experiment={exp}", f"results_dir={results_dir}", f"out_dir={out_dir}", f"seeds={seeds}"]
    return exp, [
        (
            "sweep: train + evaluate",
            [
                py,
                "-m",
                "sorsa_repro.train",
                "+sweep=paper_table",
                f"experiment={exp}",
                f"seed={seeds}",
                f"results_dir={results_dir}",
                *overrides,
            ],
        ),
        ("tables + plots", [py, "-m", "sorsa_repro.reporting.cli", "all", *report]),
        ("spectral analysis", [py, "-m", "sorsa_repro.reporting.cli", "analysis", *report]),
    ]


def main(argv: list[str] | None = None) -> int:
    args = dict(
        a.split("=", 1)
        for a in (argv if argv is not None else sys.argv[1:])
        if "=" in a and a.split("=", 1)[0] in ("scale", "seeds", "results_dir", "out_dir")
    )
    overrides = [a for a in (argv if argv is not None else sys.argv[1:]) if a.split("=", 1)[0] not in args]
    scale = args.get("scale", "mini")
    if scale not in SCALES:
        print(f"error: scale={scale!r}; use one of {', '.join(SCALES)}", file=sys.stderr)
        return 2
    results_dir, out_dir = args.get("results_dir", "results"), args.get("out_dir", "paper_tables")
    exp, commands = stages(scale, args.get("seeds"), overrides, results_dir, out_dir)
    timings = []
    for name, cmd in commands:
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        timings.append({"stage": name, "seconds": round(time.perf_counter() - start, 1), "exit_code": code})
        if code != 0:
            print(f"error: stage '{name}' failed with exit code {code}", file=sys.stderr)
            break
    atomic_write_json(Path(results_dir) / exp / "replicate_timing.json", {"scale": scale, "stages": timings})
    print(f"\nreplicate-sorsa (scale={scale}, experiment={exp})")
    for t in timings:
        print(f"  {t['stage']:<26} {t['seconds']:>8.1f} s{'' if t['exit_code'] == 0 else '  FAILED'}")
    print(f"  {'total':<26} {sum(t['seconds'] for t in timings):>8.1f} s")
    print(f"outputs: {Path(out_dir) / exp}/ (README.md, tables, figures); runs: {Path(results_dir) / exp}/")
    return max(t["exit_code"] for t in timings)


if __name__ == "__main__":
    sys.exit(main())
