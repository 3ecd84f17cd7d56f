"""Results -> tables (Markdown, LaTeX) and figures (PNG, PDF), from the run folders only.

    from sorsa_repro.reporting import load_experiment, write_tables, write_figures
    summary = load_experiment("results", "mini")      # aggregate over seeds, protocol-checked
    summary.stats                                     # mean / sample std (ddof=1) / n per group

Command line: ``sorsa-report {tables,plots,all,analysis} experiment=<name>`` (see ``cli``).
"""

from sorsa_repro.reporting.aggregate import Summary, load_experiment, summarize
from sorsa_repro.reporting.figures import write_figures
from sorsa_repro.reporting.protocol import ProtocolMismatchError, check_protocol
from sorsa_repro.reporting.readme import write_readme
from sorsa_repro.reporting.reference import load_reference
from sorsa_repro.reporting.runs import Run, collect_runs
from sorsa_repro.reporting.table_format import to_latex, to_markdown
from sorsa_repro.reporting.tables import write_tables

__all__ = [
    "ProtocolMismatchError",
    "Run",
    "Summary",
    "check_protocol",
    "collect_runs",
    "load_experiment",
    "load_reference",
    "summarize",
    "to_latex",
    "to_markdown",
    "write_figures",
    "write_readme",
    "write_tables",
]
