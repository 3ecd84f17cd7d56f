"""``sorsa-report {tables,plots,all,analysis,verdict} experiment=<name> [key=value ...]``.

    python -m sorsa_repro.reporting.cli all experiment=mini                 # your runs -> paper_tables/local/mini/
    python -m sorsa_repro.reporting.cli verdict experiment=mini             # your runs against reference_runs/mini/
    python -m sorsa_repro.reporting.cli all experiment=mini results_dir=reference_runs out_dir=paper_tables

Keys: experiment (required), results_dir=results, out_dir=paper_tables/local (outputs go to
<out_dir>/<experiment>/), reference=paper_tables/reference.yaml (the paper's numbers),
reference_runs=reference_runs (the committed runs ``verdict`` compares with), seeds=<expected seeds, e.g. 0,1,2>.
Every command also rewrites <out_dir>/<experiment>/README.md.

``analysis`` writes the spectral-analysis figures and table (``reporting.spectral_figures``) from the runs'
spectral.csv; the README then lists them under "Other figures and tables".
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from sorsa_repro.cli_args import KeyValueCli
from sorsa_repro.layout import (
    LOCAL_TABLES_DIR,
    PAPER_NUMBERS,
    REFERENCE_RUNS_DIR,
    RESULTS_DIR,
    check_plain_name,
    refuse_reference,
)
from sorsa_repro.reporting.aggregate import load_experiment
from sorsa_repro.reporting.claims_report import scale_note, write_claims
from sorsa_repro.reporting.figures import STYLE, save_figure, write_figures
from sorsa_repro.reporting.lr_report import SENSITIVITY, sensitivity_figure, write_study_report
from sorsa_repro.reporting.lr_study import load_study, study_experiment
from sorsa_repro.reporting.protocol import ProtocolMismatchError
from sorsa_repro.reporting.readme import write_readme
from sorsa_repro.reporting.reference import load_reference
from sorsa_repro.reporting.reproducibility import reproducibility_verdict, to_markdown, write_verdict
from sorsa_repro.reporting.spectral_figures import write_spectral_figures
from sorsa_repro.reporting.tables import write_tables

COMMANDS = ("tables", "plots", "all", "analysis", "verdict")


@dataclass
class ReportArgs:
    experiment: str = ""
    results_dir: str = RESULTS_DIR
    out_dir: str = LOCAL_TABLES_DIR
    reference: str = str(PAPER_NUMBERS)
    reference_runs: str = REFERENCE_RUNS_DIR
    seeds: str = ""
    # where <experiment>_lr lies; default: results_dir if it holds one, else reference_runs
    lr_study_dir: str = ""
    update_reference: str = "false"


CLI = KeyValueCli(
    prog="sorsa-report",
    summary="Tables, figures, claims and the reproducibility verdict of an experiment, generated only from its "
    "run folders; every command also rewrites <out_dir>/<experiment>/README.md.",
    commands={
        "tables": "main (and rank) tables in Markdown and LaTeX, summary.csv, claims.md",
        "plots": "loss and orthonormal-penalty curves (mean over seeds with a band)",
        "all": "tables + plots",
        "analysis": "spectral-change figures and tables from the runs' spectral.csv",
        "verdict": "your runs against the committed reference runs: REPRODUCED or not, and where they differ",
    },
    keys={
        "experiment": "the experiment (required): mini, smoke, small, paper_llama2_7b, ...",
        "results_dir": f"the run folders are <results_dir>/<experiment>/ (default {RESULTS_DIR})",
        "out_dir": f"outputs go to <out_dir>/<experiment>/ (default {LOCAL_TABLES_DIR})",
        "reference": "the paper's numbers (default paper_tables/reference.yaml)",
        "reference_runs": f"the committed runs verdict compares with (default {REFERENCE_RUNS_DIR})",
        "seeds": "the seeds you expect, e.g. 0,1,2 (a missing one is reported)",
        "lr_study_dir": "the folder holding <experiment>_lr, the learning-rate study whose paper-rate runs and grid "
        "claims.md reports (default: results_dir when it holds one, else reference_runs)",
        "update_reference": "true: write into the committed reference (paper_tables/<experiment>/), maintainers "
        "only; without it such an out_dir is refused",
    },
)


def parse_args(argv: list[str]) -> tuple[str, ReportArgs]:
    command, values, _ = CLI.parse(argv)
    args = ReportArgs(**values)
    if not args.experiment:
        CLI.fail("experiment=<name> is required")
    return command, args


def run_command(command: str, args: ReportArgs) -> list[Path]:
    """Do ``command``; returns the files written."""
    out_dir = Path(args.out_dir) / args.experiment
    seeds = [int(s) for s in args.seeds.strip("[]").split(",") if s.strip()] or None
    summary = load_experiment(args.results_dir, args.experiment, seeds)
    reference = load_reference(args.reference)
    is_study = any(r.lr_split for r in summary.runs)  # one method at several rates: a learning-rate study
    study = None if is_study else load_study(study_dir(args), args.experiment)
    written = []
    if command in ("tables", "all"):
        written += write_tables(summary, reference, out_dir)
        if is_study:
            written += write_study_report(summary, out_dir)
        else:
            written.append(write_claims(summary, out_dir, scale_note(summary), study))
    if command in ("plots", "all"):
        written += write_figures(summary, out_dir)
        if study is not None:  # the study's sensitivity figure beside this experiment's curves
            import matplotlib.style

            with matplotlib.style.context(["default", STYLE]):
                written += save_figure(sensitivity_figure(study), out_dir, SENSITIVITY)
    if command == "analysis":
        written += write_spectral_figures(summary, out_dir)
    if command == "verdict":
        verdict = reproducibility_verdict(args.results_dir, args.reference_runs, args.experiment)
        written += write_verdict(verdict, out_dir)
        print(to_markdown(verdict))
    return [*written, write_readme(summary, reference, out_dir, args.results_dir)]


def study_dir(args: ReportArgs) -> str:
    """Where the experiment's learning-rate study is read from (see ``ReportArgs.lr_study_dir``)."""
    if args.lr_study_dir:
        return args.lr_study_dir
    own = Path(args.results_dir) / study_experiment(args.experiment)
    return args.results_dir if own.is_dir() else args.reference_runs


def main(argv: list[str] | None = None) -> int:
    command, args = parse_args(sys.argv[1:] if argv is None else argv)
    try:  # before anything is read or written: the output folder
        check_plain_name("experiment", args.experiment)
        update = args.update_reference.lower() in ("1", "true", "yes")
        refuse_reference({"out_dir": Path(args.out_dir) / args.experiment}, update, "sorsa-report")
    except ValueError as err:
        print(f"sorsa-report: error: {err}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:  # missing seeds, failed runs: shown plainly
            warnings.simplefilter("always")
            paths = run_command(command, args)
    except (ProtocolMismatchError, FileNotFoundError) as err:
        print(f"sorsa-report: {err}", file=sys.stderr)
        return 1
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    folders = sorted({str(path.parent.resolve()) for path in paths})  # absolute: wherever it was run from
    names = ", ".join(path.name for path in paths[:-1])
    print(f"wrote {len(paths)} files into {', '.join(folders)}: {names}; report: {paths[-1].resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
