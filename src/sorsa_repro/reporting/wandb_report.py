"""A W&B report of one experiment's sweep, built with wandb-workspaces (extra ``wandb-report``).

    python -m sorsa_repro.reporting.wandb_report experiment=mini entity=<entity> project=<project>

Online only: needs a W&B API key (``WANDB_API_KEY`` or ``wandb login``) and ``WANDB_MODE`` not
offline/disabled. Offline it touches no network: it prints what it needs and points at the local
report, paper_tables/<experiment>/README.md, and exits 0.

The report holds the accuracy table (from result.json, as in main_table.md), the claims (as in claims.md,
with both learning-rate settings when the experiment has a study), training and held-out loss curves of all
methods (grouped by method: mean and min-max over seeds) and of each method's seeds, the learning-rate
study's sensitivity (held-out loss against the rate, when ``<experiment>_lr`` exists) and a run comparer
showing config differences. W&B key names are arguments; the defaults match Lightning's
WandbLogger (``trainer/global_step``) and the metric names below.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sorsa_repro.cli_args import KeyValueCli
from sorsa_repro.layout import LOCAL_TABLES_DIR, RESULTS_DIR, check_plain_name, refuse_reference
from sorsa_repro.reporting.aggregate import METHOD_ORDER, Summary, load_experiment, method_name, ordered
from sorsa_repro.reporting.claims_report import scale_note
from sorsa_repro.reporting.claims_report import to_markdown as claims_markdown
from sorsa_repro.reporting.lr_study import load_study, study_experiment
from sorsa_repro.reporting.reference import load_reference
from sorsa_repro.reporting.table_format import to_markdown
from sorsa_repro.reporting.tables import accuracy_table
from sorsa_repro.wandb_mode import offline_reason


@dataclass
class WandbArgs:
    experiment: str = ""
    entity: str = ""  # default: $WANDB_ENTITY, else the runs' logger config
    project: str = ""  # default: $WANDB_PROJECT, else the runs' logger config
    results_dir: str = RESULTS_DIR
    out_dir: str = LOCAL_TABLES_DIR
    experiment_key: str = "experiment_name"  # W&B config key holding the experiment name (conf/train.yaml)
    method_key: str = "method.name"  # W&B config key holding the method name
    x_key: str = "trainer/global_step"
    loss_key: str = "train/loss"
    ortho_key: str = "train/ortho_penalty"
    heldout_key: str = "train/heldout_loss"
    lr_key: str = "train.lr_multiplier"  # W&B config key of the learning-rate multiplier
    lr_study_dir: str = ""  # where <experiment>_lr lies (default: results_dir)
    update_reference: str = "false"


def offline_message(args: WandbArgs, reason: str) -> str:
    exp_dir = Path(args.results_dir) / args.experiment
    offline_runs = sorted(
        str(p) for p in [*Path("wandb").glob("offline-run-*"), *exp_dir.glob("*/wandb/offline-run-*")]
    )
    sync = (
        f"wandb sync {' '.join(offline_runs)}" if offline_runs else "wandb sync <wandb/offline-run-* folders>"
    )
    local = Path(args.out_dir) / args.experiment / "README.md"
    return "\n".join(
        [
            f"W&B report for experiment {args.experiment!r} not built: offline ({reason}); no network used.",
            "To build it online you need:",
            "  1. a W&B API key: export WANDB_API_KEY=<key> (or `wandb login`); WANDB_MODE unset or online",
            f"  2. the runs on W&B: {sync}" + ("" if offline_runs else "  (no offline runs found here)"),
            f"  3. python -m sorsa_repro.reporting.wandb_report experiment={args.experiment} "
            f"entity={args.entity or '<entity>'} project={args.project or '<project>'}",
            f"The local report needs no network: {local}",
            f"  (regenerate it with: python -m sorsa_repro.reporting.cli all experiment={args.experiment})",
        ]
    )


def _runset(args: WandbArgs, exp: str, name: str, *filters, groupby=()):
    """The experiment's runs (and ``filters``) in the W&B project."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    in_exp = expr.Config(args.experiment_key) == exp
    return wr.Runset(
        entity=args.entity, project=args.project, name=name, filters=[in_exp, *filters], groupby=list(groupby)
    )


def _line_plot(args: WandbArgs, title: str, y: str, grouped: bool, smoothed: bool):
    import wandb_workspaces.reports.v2 as wr

    extra = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"} if grouped else {}
    if smoothed:
        extra.update(smoothing_type="exponential", smoothing_factor=0.6)
    return wr.LinePlot(title=title, x=args.x_key, y=[y], **extra)


def _loss_blocks(summary: Summary, args: WandbArgs) -> list:
    """All methods' loss (mean, min-max over seeds) and penalty, then one panel per method with its seeds."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    exp = summary.experiment
    blocks = [
        wr.H2(text="Training loss, all methods"),
        wr.PanelGrid(
            runsets=[_runset(args, exp, exp, groupby=[f"config.{args.method_key}"])],
            panels=[
                _line_plot(args, "training loss (mean, min-max over seeds)", args.loss_key, True, True),
                _line_plot(args, "held-out loss (mean, min-max over seeds)", args.heldout_key, True, False),
                _line_plot(args, "SORSA orthonormal penalty", args.ortho_key, True, False),
            ],
        ),
    ]
    for method in ordered(summary.groups["method"], METHOD_ORDER):
        name = method_name(method)
        blocks += [
            wr.H3(text=f"Training loss: {name}"),
            wr.PanelGrid(
                runsets=[_runset(args, exp, name, expr.Config(args.method_key) == method)],
                panels=[_line_plot(args, f"{name}: training loss per seed", args.loss_key, False, True)],
            ),
        ]
    return blocks


def _sensitivity_blocks(args: WandbArgs, study: Summary) -> list:
    """The learning-rate study's runs: held-out loss at the last step against the rate, one colour per method."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    exp = study.experiment
    return [
        wr.H2(text=f"Learning-rate sensitivity ({exp})"),
        wr.PanelGrid(
            runsets=[_runset(args, exp, exp, groupby=[f"config.{args.method_key}"])],
            panels=[
                wr.ScatterPlot(
                    title="held-out loss at the last step against the learning-rate multiplier",
                    x=expr.Config(args.lr_key),
                    y=expr.Summary(args.heldout_key),
                    log_x=True,
                )
            ],
        ),
    ]


def build_report(
    summary: Summary, args: WandbArgs, reference: dict | None = None, study: Summary | None = None
):
    """The ``wandb_workspaces`` Report object (not saved: ``report.save()`` needs the network); ``study``: the
    experiment's learning-rate study (its sensitivity panel, and claims.md's two settings)."""
    import wandb_workspaces.reports.v2 as wr

    exp = summary.experiment
    table = accuracy_table(summary, "strict", reference or {})
    blocks = [
        wr.P(
            text=f"Experiment {exp}: {len(summary.ok_runs)} runs with eval results. Accuracies come from the "
            f"runs' result.json files, the same numbers as paper_tables/{exp}/main_table.md."
        ),
        wr.H2(text="Accuracy"),
        wr.MarkdownBlock(text=to_markdown(table)),
        wr.H2(text="The paper's claims"),
        wr.MarkdownBlock(text=claims_markdown(summary, scale_note(summary), study)),
        *_loss_blocks(summary, args),
        *(_sensitivity_blocks(args, study) if study is not None else []),
        wr.H2(text="Runs and config differences"),
        wr.PanelGrid(
            runsets=[_runset(args, exp, exp, groupby=[f"config.{args.method_key}"])],
            panels=[wr.RunComparer(diff_only="split")],
        ),
    ]
    return wr.Report(
        entity=args.entity,
        project=args.project,
        title=f"SORSA replication: {exp}",
        description="Loss curves, accuracies and config differences per method.",
        blocks=blocks,
    )


def _from_configs(summary: Summary, key: str) -> str:
    for run in summary.runs:
        logger = run.config.get("logger") or {}
        for node in [logger, *[v for v in logger.values() if isinstance(v, dict)]]:
            if node.get(key):
                return str(node[key])
    return ""


CLI = KeyValueCli(
    prog="python -m sorsa_repro.reporting.wandb_report",
    summary="A W&B report of an experiment's runs (accuracy and claims tables, loss curves, config "
    "differences). Needs a W&B API key (WANDB_API_KEY or `wandb login`); offline it says so and exits 0.",
    keys={
        "experiment": "the experiment (required), e.g. mini",
        "entity": "W&B entity (default $WANDB_ENTITY, else the runs' logger config, else your user)",
        "project": "W&B project (default $WANDB_PROJECT, else the runs' logger config)",
        "results_dir": f"the run folders are <results_dir>/<experiment>/ (default {RESULTS_DIR})",
        "out_dir": f"the local report it points at offline (default {LOCAL_TABLES_DIR})",
        "experiment_key": "W&B config key holding the experiment name (default experiment_name)",
        "method_key": "W&B config key holding the method name (default method.name)",
        "x_key": "W&B step key (default trainer/global_step, Lightning's)",
        "loss_key": "W&B loss key (default train/loss)",
        "ortho_key": "W&B orthonormal-penalty key (default train/ortho_penalty)",
        "heldout_key": "W&B held-out loss key (default train/heldout_loss)",
        "lr_key": "W&B config key of the learning-rate multiplier (default train.lr_multiplier)",
        "lr_study_dir": f"the folder holding <experiment>{study_experiment('')} (default: results_dir)",
        "update_reference": "true: allow running inside the committed reference (wandb writes its wandb/ log "
        "folder into the current folder), maintainers only",
    },
)


def main(argv: list[str] | None = None) -> int:
    _, values, _ = CLI.parse(sys.argv[1:] if argv is None else argv)
    args = WandbArgs(**values)
    if not args.experiment:
        CLI.fail("experiment=<name> is required")
    try:  # the report goes to W&B; what it writes here is wandb's own log folder, in the current folder
        check_plain_name("experiment", args.experiment)
        update = args.update_reference.lower() in ("1", "true", "yes")
        refuse_reference({"cwd": Path.cwd() / "wandb"}, update, "the W&B report")
    except ValueError as err:
        print(f"{CLI.prog}: error: {err}", file=sys.stderr)
        return 2
    args.entity = args.entity or os.environ.get("WANDB_ENTITY", "")
    args.project = args.project or os.environ.get("WANDB_PROJECT", "")
    reason = offline_reason()
    if reason:
        print(offline_message(args, reason))
        return 0
    summary = load_experiment(args.results_dir, args.experiment)
    args.project = args.project or _from_configs(summary, "project")
    if not args.project:
        raise SystemExit(
            "project=<project> is required (or WANDB_PROJECT, or logger.project in the runs' config)"
        )
    args.entity = args.entity or _from_configs(summary, "entity")
    if not args.entity:
        import wandb

        args.entity = wandb.Api().default_entity  # the API key's user
    study = load_study(args.lr_study_dir or args.results_dir, args.experiment)
    report = build_report(summary, args, load_reference(), study).save()
    print(f"W&B report: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
