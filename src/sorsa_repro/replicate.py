"""``make replicate-sorsa``: sweep, evaluate, tables, plots and a reproducibility verdict at one scale.

    python -m sorsa_repro.replicate scale=mini|small|paper|smoke [seeds=0,1] [extra Hydra overrides ...]
    python -m sorsa_repro.replicate scale=mini_lr|small_lr      (make lr-study: the learning-rate study)
    python -m sorsa_repro.replicate scale=mini_methods|small_methods   (make methods-study: every method)

Your runs go to ``results/<experiment>/`` and your report to ``paper_tables/local/<experiment>/`` (both
git-ignored); the committed reference (``reference_runs/``, ``paper_tables/<experiment>/``) is only read,
for the verdict. A maintainer refreshes it with ``update_reference=true``, which writes the runs to
``reference_runs/`` and the report to ``paper_tables/``. Each stage is its own command (the sweep is a real
Hydra multirun), so an interrupted replication is finished by running the same command again: finished
jobs are skipped. Exits non-zero when any job or stage failed. The claims report reads the committed
learning-rate study of the scale (``reference_runs/<experiment>_lr``: the study whose selected rates the
sweep trains at) for the verdicts at the paper's rates and across the grid.
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

# scale -> experiment config, sweep (conf/sweep/), seeds; <scale>_lr: the scale's learning-rate study, on
# seeds of its own (the claims' are 0-2), whose selection sets the scale's rates (conf/experiment/<scale>.yaml)
SCALES = {
    "smoke": {"experiment": "smoke", "sweep": "claims", "seeds": "0"},
    "mini": {"experiment": "mini", "sweep": "claims", "seeds": "0,1,2"},
    "small": {"experiment": "small", "sweep": "claims", "seeds": "0,1,2"},
    "paper": {"experiment": "paper_llama2_7b", "sweep": "paper_table", "seeds": "42"},
    "mini_lr": {"experiment": "mini_lr", "sweep": "lr_study", "seeds": "100,101,102"},
    # small's study: one seed and the minimum grid, x1-x30 (~3 min a job on 2 cores: 21 jobs, ~1 h)
    "small_lr": {"experiment": "small_lr", "sweep": "lr_study", "seeds": "100", "multipliers": "1,3,10,30"},
    # <scale>_methods: every method of the suite under the scale's protocol (make methods-study)
    "mini_methods": {"experiment": "mini_methods", "sweep": "methods", "seeds": "0,1,2"},
    "small_methods": {"experiment": "small_methods", "sweep": "methods", "seeds": "0"},
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
        f"lr_study_dir={dirs['reference']}",  # the committed study, whose selected rates the sweep trains at
    ]
    sweep = [py, "-m", "sorsa_repro.train", f"+sweep={spec['sweep']}", f"experiment={exp}", f"seed={seeds}"]
    if "multipliers" in spec:  # the scale's own learning-rate grid, replacing the sweep file's
        sweep.append(f"train.lr_multiplier={spec['multipliers']}")
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
    study = report_dir / "lr_study.md"  # a learning-rate study: its held-out losses and selection
    if study.is_file():
        table = next((b for b in study.read_text(encoding="utf-8").split("\n\n") if b.startswith("|")), "")
        lines += [
            "",
            "held-out loss per arm and learning-rate multiplier, selected in bold (lr_study.md):",
            table,
        ]
    lines += _claims_outcome(report_dir / "claims.md")
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


def _claims_outcome(claims: Path) -> list[str]:
    """Each claim's verdict (at both learning-rate settings when the scale has a study) and, per claim,
    whether it holds across the study's grid."""
    if not claims.is_file():
        return []
    lines = ["", "the paper's claims at this scale (claims.md):"]
    text = claims.read_text(encoding="utf-8")
    both = "### Each claim at both learning-rate settings" in text
    if both:
        text = text.split("### Each claim at both learning-rate settings", 1)[1]
        lines.append(
            f"  {'':3}{'comparison':<30} {'statistic':<34} {'paper rates':<14} {'selected rates':<14} grid"
        )
    for row in text.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not cells[0].isdigit():
            continue
        if both and len(cells) == 6:  # claim, comparison, statistic, paper's rates, selected rates, grid
            paper, chosen = (c.split(":")[0].replace("*", "") for c in cells[3:5])
            lines.append(
                f"  {cells[0]}  {cells[1]:<30} {cells[2][:34]:<34} {paper:<14} {chosen:<14} {cells[5]}"
            )
        elif not both and len(cells) == 8:  # claim, comparison, statistic, A, B, diff, seeds, verdict
            lines.append(
                f"  {cells[0]}  {cells[1]:<34} {cells[2].split(';')[0]:<48} {cells[7].replace('**', '')}"
            )
    if both:
        across = (
            text.split("### Across the learning-rate grid", 1)[-1].split("###", 1)[0].strip().splitlines()
        )
        lines += [
            "",
            "across the learning-rate grid:",
            *[f"  {line.replace('**', '')}" for line in across if line],
        ]
    return lines


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
    print(
        f"report: {(Path(dirs['out']) / exp).resolve()}/README.md; runs: {(Path(dirs['results']) / exp).resolve()}/"
    )
    failed = [t["stage"] for t in timings if t["exit_code"] != 0]
    if failed:
        print(
            f"error: failed stage(s): {', '.join(failed)} (the sweep lists its failed jobs above)",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
