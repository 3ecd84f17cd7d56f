"""``make replicate-sorsa``: sweep, evaluate, tables, plots and a reproducibility verdict at one scale.

    python -m sorsa_repro.replicate scale=mini|small|paper|smoke [seeds=0,1] [extra Hydra overrides ...]

Your runs go to ``results/<experiment>/`` and your report to ``paper_tables/local/<experiment>/`` (both
git-ignored); the committed reference (``reference_runs/``, ``paper_tables/<experiment>/``) is only read,
for the verdict. A maintainer refreshes it with ``update_reference=true``, which writes the runs to
``reference_runs/`` and the report to ``paper_tables/``. Each stage is its own command (the sweep is a real
Hydra multirun), so an interrupted replication is finished by running the same command again: finished
jobs are skipped. Exits non-zero when any job or stage failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sorsa_repro.layout import (
    LOCAL_TABLES_DIR,
    REFERENCE_RUNS_DIR,
    REFERENCE_TABLES_DIR,
    RESULTS_DIR,
    is_reference_location,
)
from sorsa_repro.results import atomic_write_json

# scale -> experiment config, sweep (conf/sweep/), seeds
SCALES = {
    "smoke": {"experiment": "smoke", "sweep": "claims", "seeds": "0"},
    "mini": {"experiment": "mini", "sweep": "claims", "seeds": "0,1,2"},
    "small": {"experiment": "small", "sweep": "claims", "seeds": "0,1,2"},
    "paper": {"experiment": "paper_llama2_7b", "sweep": "paper_table", "seeds": "42"},
}
KEYS = ("scale", "seeds", "results_dir", "out_dir", "reference_runs", "update_reference")


def stages(scale: str, seeds: str | None, overrides: list[str], dirs: dict, verdict: bool):
    spec = SCALES[scale]
    exp = spec["experiment"]
    seeds = seeds or spec["seeds"]
    py = sys.executable
    report = [
        f"experiment={exp}",
        f"results_dir={dirs['results']}",
        f"out_dir={dirs['out']}",
        f"seeds={seeds}",
    ]
    sweep = [py, "-m", "sorsa_repro.train", f"+sweep={spec['sweep']}", f"experiment={exp}", f"seed={seeds}"]
    steps = [
        ("sweep: train + evaluate", [*sweep, f"results_dir={dirs['results']}", *overrides]),
        ("tables + plots", [py, "-m", "sorsa_repro.reporting.cli", "all", *report]),
        ("spectral analysis", [py, "-m", "sorsa_repro.reporting.cli", "analysis", *report]),
    ]
    if verdict:
        ref = f"reference_runs={dirs['reference']}"
        steps.append(
            ("reproducibility verdict", [py, "-m", "sorsa_repro.reporting.cli", "verdict", *report, ref])
        )
    return exp, steps


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    args = dict(a.split("=", 1) for a in argv if "=" in a and a.split("=", 1)[0] in KEYS)
    overrides = [a for a in argv if a.split("=", 1)[0] not in args]
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    scale = args.get("scale", "mini")
    if scale not in SCALES:
        print(f"error: scale={scale!r}; use one of {', '.join(SCALES)}", file=sys.stderr)
        return 2
    update = args.get("update_reference", "false").lower() in ("1", "true", "yes")
    dirs = {
        "results": args.get("results_dir", REFERENCE_RUNS_DIR if update else RESULTS_DIR),
        "out": args.get("out_dir", REFERENCE_TABLES_DIR if update else LOCAL_TABLES_DIR),
        "reference": args.get("reference_runs", REFERENCE_RUNS_DIR),
    }
    protected = [d for d in (dirs["results"], dirs["out"]) if is_reference_location(d)]
    if protected and not update:
        print(
            f"error: {', '.join(protected)} holds the committed reference, which the main job never writes; "
            "use another results_dir/out_dir, or update_reference=true to refresh the reference on purpose",
            file=sys.stderr,
        )
        return 2
    exp, commands = stages(scale, args.get("seeds"), overrides, dirs, verdict=not update)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    timings = []
    for name, cmd in commands:
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, env=env)
        timings.append({"stage": name, "seconds": round(time.perf_counter() - start, 1), "exit_code": code})
        if code != 0 and not (Path(dirs["results"]) / exp).is_dir():
            break  # nothing ran (the sweep was rejected): no report to make
    if (Path(dirs["results"]) / exp).is_dir():
        atomic_write_json(
            Path(dirs["results"]) / exp / "replicate_timing.json", {"scale": scale, "stages": timings}
        )
    print(f"\nreplicate-sorsa (scale={scale}, experiment={exp})")
    for t in timings:
        print(f"  {t['stage']:<26} {t['seconds']:>8.1f} s{'' if t['exit_code'] == 0 else '  FAILED'}")
    print(f"  {'total':<26} {sum(t['seconds'] for t in timings):>8.1f} s")
    print(f"report: {Path(dirs['out']) / exp}/README.md; runs: {Path(dirs['results']) / exp}/")
    failed = [t["stage"] for t in timings if t["exit_code"] != 0]
    if failed:
        print(
            f"error: failed stage(s): {', '.join(failed)} (the sweep lists its failed jobs above)",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
