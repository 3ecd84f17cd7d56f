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

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sorsa_repro.cli_args import KeyValueCli
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
CLI = KeyValueCli(
    prog="python -m sorsa_repro.replicate",
    summary="The main job (make replicate-sorsa): the scale's sweep (train + evaluate), tables, plots, claims, "
    "spectral analysis and the reproducibility verdict against the committed reference. Running it again "
    "skips finished jobs and resumes interrupted ones.",
    keys={
        "scale": "mini (default), smoke, small or paper: "
        + "; ".join(
            f"{name} = experiment {spec['experiment']}, seeds {spec['seeds']}"
            for name, spec in SCALES.items()
        ),
        "seeds": "comma-separated seeds (default: the scale's)",
        "results_dir": f"where the runs go (default {RESULTS_DIR}/; {REFERENCE_RUNS_DIR}/ with update_reference)",
        "out_dir": f"where the report goes (default {LOCAL_TABLES_DIR}/)",
        "reference_runs": f"the committed runs the verdict compares with (default {REFERENCE_RUNS_DIR}/)",
        "update_reference": "true: regenerate the committed reference on purpose (maintainers)",
    },
    passthrough="Hydra overrides for every training job, e.g. trainer=gpu evaluate.backend=hf "
    "(python -m sorsa_repro.train --help lists them)",
)


def stages(
    scale: str, seeds: str | None, overrides: list[str], dirs: dict, verdict: bool, update: bool = False
):
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
    if update:  # every stage refuses the reference folders unless told, as this command was
        report.append("update_reference=true")
        sweep.append("update_reference=true")
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


def outcome(report_dir: Path, runs_dir: Path) -> str:
    """What the user came for, from the files the stages wrote: the main table, each claim's verdict and the
    runs that did not finish."""
    lines = []
    main_table = report_dir / "main_table.md"
    if main_table.is_file():  # its first table: accuracy with strict answer extraction
        blocks = main_table.read_text(encoding="utf-8").split("\n\n")
        table = next((b for b in blocks if b.startswith("|")), "")
        lines += ["", "main table (accuracy %, strict extraction; all tables: main_table.md):", table]
    claims = report_dir / "claims.md"
    if claims.is_file():
        lines += ["", "the paper's claims at this scale (claims.md):"]
        for row in claims.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            if (
                len(cells) == 8 and cells[0].isdigit()
            ):  # claim, comparison, statistic, A, B, diff, seeds, verdict
                lines.append(
                    f"  {cells[0]}  {cells[1]:<34} {cells[2].split(';')[0]:<48} {cells[7].replace('**', '')}"
                )
    unfinished = []
    for result in sorted(runs_dir.glob("*/result.json")):
        stages = json.loads(result.read_text(encoding="utf-8"))
        bad = [
            f"{s} {stages[s]['status']}"
            for s in ("train", "evaluation")
            if stages.get(s, {}).get("status") not in (None, "finished")
        ]
        if bad:
            unfinished.append(f"  {result.parent.name}: {', '.join(bad)}")
    if unfinished:
        lines += ["", "runs that did not finish (run the same command again to resume them):", *unfinished]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    _, args, overrides = CLI.parse(sys.argv[1:] if argv is None else argv)
    scale = args.get("scale", "mini")
    if scale not in SCALES:
        CLI.fail(f"scale={scale!r}; use one of {', '.join(SCALES)}")
    update = args.get("update_reference", "false").lower() in ("1", "true", "yes")
    dirs = {
        "results": args.get("results_dir", REFERENCE_RUNS_DIR if update else RESULTS_DIR),
        "out": args.get("out_dir", REFERENCE_TABLES_DIR if update else LOCAL_TABLES_DIR),
        "reference": args.get("reference_runs", REFERENCE_RUNS_DIR),
    }
    # the checkout each folder lies in, whichever it is (not only the one the package was installed from)
    protected = [d for d in (dirs["results"], dirs["out"]) if is_reference_location(d)]
    if protected and not update:
        print(
            f"error: {', '.join(protected)} holds the committed reference, which the main job never writes; "
            "use another results_dir/out_dir, or update_reference=true to refresh the reference on purpose",
            file=sys.stderr,
        )
        return 2
    exp, commands = stages(scale, args.get("seeds"), overrides, dirs, verdict=not update, update=update)
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
    print(outcome(Path(dirs["out"]) / exp, Path(dirs["results"]) / exp))
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
