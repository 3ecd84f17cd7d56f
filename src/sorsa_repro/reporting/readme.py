"""paper_tables/<experiment>/README.md: tables, figures and the setup that produced them.

Everything is read from the run folders (result.json, config.yaml): command, scale, seeds,
budget and wall times. Figures are embedded when their files exist (``sorsa-report plots``);
any other PNG or Markdown file in the folder (e.g. from ``sorsa-report analysis``) is listed under
"Other figures and tables".
"""

from __future__ import annotations

import json
from pathlib import Path

from sorsa_repro.reporting.aggregate import Summary, bench_name
from sorsa_repro.reporting.claims_report import CLAIMS_FILE
from sorsa_repro.reporting.figures import CAPTIONS
from sorsa_repro.reporting.lr_report import SENSITIVITY, SENSITIVITY_CAPTION, STUDY_FILE
from sorsa_repro.reporting.protocol import EVAL_KEYS, shared_protocol
from sorsa_repro.reporting.reproducibility import VERDICT_FILE
from sorsa_repro.reporting.runs import Run
from sorsa_repro.reporting.table_format import Table, to_markdown
from sorsa_repro.reporting.tables import HEADER, format_params, main_tables, rank_tables
from sorsa_repro.results import atomic_write_text


def _find_key(tree, name: str):
    """First value stored under key ``name`` anywhere in a nested dict (breadth first)."""
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if name in node:
                return node[name]
            queue.extend(node.values())
    return None


def _unique(values) -> list[str]:
    """Distinct values as text, numbers in numeric order."""
    values = {v if isinstance(v, int | float | str) else json.dumps(v) for v in values if v not in (None, "")}
    return [str(v) for v in sorted(values, key=lambda v: (not isinstance(v, int | float), v))]


def _seconds(s) -> str:
    return "–" if s is None else (f"{s:.0f} s" if s < 120 else f"{s:.0f} s ({s / 3600:.2f} h)")


def _eval_wall(run: Run) -> float | None:
    times = [ev.get("wall_time_s") for ev in run.result.get("eval", {}).values()]
    return sum(t for t in times if t is not None) if any(t is not None for t in times) else None


def _kv_table(rows: list[tuple[str, str]], header=("setting", "value")) -> str:
    table = Table(
        title="", caption="", label="", header=list(header), align="ll", rows=[list(r) for r in rows]
    )
    return to_markdown(table).split("\n\n", 1)[1]  # drop the empty title line


def _setup(summary: Summary, results_dir: str) -> str:
    runs, ok = summary.runs, summary.ok_runs
    prov = [r.result.get("provenance", {}) for r in runs]
    commands = _unique([p.get("command") or r.result.get("command") for p, r in zip(prov, runs, strict=True)])
    train = [r.result.get("train", {}) for r in runs]
    examples = {k: v for k, v in shared_protocol(runs).items() if "example" in k.rsplit(".", 1)[-1]}
    train_wall = [t["wall_time_s"] for t in train if t.get("wall_time_s") is not None]
    eval_wall = [w for w in map(_eval_wall, runs) if w is not None]
    commits = _unique(
        f"{p['git_commit'][:10]}{' (dirty)' if p.get('git_dirty') else ''}"
        for p in prov
        if p.get("git_commit")
    )
    rows = [
        (
            "results",
            f"{results_dir}/{summary.experiment}/ ({len(runs)} run folders, {len(ok)} with eval results)",
        ),
        ("scale", ", ".join(_unique(_find_key(r.config, "scale") for r in runs)) or "not recorded"),
        ("command", "; ".join(f"`{c}`" for c in commands) or "not recorded (result.json provenance.command)"),
        ("methods", ", ".join(summary.groups["label"]) or "–"),
        ("seeds", ", ".join(_unique(r.seed for r in ok)) or "–"),
        ("optimizer steps", ", ".join(_unique(t.get("steps") for t in train)) or "–"),
        ("train examples", ", ".join(f"{k} = {v}" for k, v in examples.items()) or "see protocol below"),
    ]
    for bench in summary.benchmarks:
        evs = [r.result["eval"][bench] for r in ok if bench in r.result.get("eval", {})]
        keys = [*EVAL_KEYS, "backend"]
        rows.append(
            (
                f"eval {bench_name(bench)}",
                ", ".join(f"{k} {'/'.join(_unique(e.get(k) for e in evs))}" for k in keys),
            )
        )
    rows += [
        (
            "wall time, training",
            f"{_seconds(sum(train_wall))} over {len(train_wall)} runs" if train_wall else "–",
        ),
        ("wall time, eval", f"{_seconds(sum(eval_wall))} over {len(eval_wall)} runs" if eval_wall else "–"),
        ("code", ", ".join(commits) or "not recorded"),
    ]
    protocol = [(k, f"`{v}`") for k, v in shared_protocol(ok or runs).items() if k.startswith("protocol.")]
    text = "## Setup\n\n" + _kv_table(rows)
    if protocol:
        text += "\nProtocol shared by every run (result.json `protocol`; checked before any averaging):\n\n"
        text += _kv_table(protocol, ("key", "value"))
    return text


def _runs_table(summary: Summary) -> str:
    rows = []
    for run in summary.runs:
        train = run.result.get("train", {})
        loss = train.get("final_loss")
        mem = train.get("peak_memory_mb")
        rows.append(
            [
                run.name,
                run.status,
                train.get("steps"),
                None if loss is None else float(loss),
                format_params(train.get("trainable_params")),
                _seconds(train.get("wall_time_s")),
                _seconds(_eval_wall(run)),
                None if mem is None else f"{mem:.0f}",
            ]
        )
    header = ["run", "status", "steps", "final loss", "params", "train wall", "eval wall", "peak MiB"]
    table = Table(title="", caption="", label="", header=header, align="llrrrrrr", rows=rows)
    return "## Runs\n\n" + to_markdown(table).split("\n\n", 1)[1]


def write_readme(
    summary: Summary, reference: dict, out_dir: str | Path, results_dir: str = "results"
) -> Path:
    out_dir = Path(out_dir)
    exp = summary.experiment
    parts = [
        f"<!-- {HEADER.format(exp)} -->\n\n# {exp}: results\n\n"
        f"Generated by `python -m sorsa_repro.reporting.cli all experiment={exp} results_dir={results_dir}` "
        f"from the run folders under `{results_dir}/{exp}/` only; the one hand-typed input is the paper's "
        "numbers in `paper_tables/reference.yaml`. Tables: [main_table.md](main_table.md), "
        "[main_table.tex](main_table.tex); per-group statistics: [summary.csv](summary.csv).\n",
        _setup(summary, results_dir),
    ]
    parts.append("## Accuracy\n\n" + "\n".join(map(to_markdown, main_tables(summary, reference))))
    configs = [r.config for r in summary.runs if r.config]
    if configs:
        from sorsa_repro.reporting.protocol_table import protocol_table

        parts.append(
            "## Protocol against the references\n\nEach setting as the SORSA reference code, PiSSA's code and "
            "MetaMath's evaluation ran it (sources cited in `sorsa_repro/reporting/protocol_table.py`), and as "
            "these runs ran it (their config.yaml).\n\n" + protocol_table(configs)
        )
    if ranks := rank_tables(summary):
        parts.append("## Accuracy against rank\n\n" + "\n".join(map(to_markdown, ranks)))
    study = (out_dir / STUDY_FILE).exists()  # a learning-rate study's report shows its own figure
    captions = {**CAPTIONS, **({} if study else {SENSITIVITY: SENSITIVITY_CAPTION})}
    figures = [s for s in captions if (out_dir / f"{s}.png").exists()]
    if figures:
        parts.append(
            "## Figures\n\n"
            + "\n".join(f"![{s}]({s}.png)\n\n*{captions[s]}* ([PDF]({s}.pdf))\n" for s in figures)
        )
    # the study's selection and grid, the paper's claims, your runs against the reference
    for section in (STUDY_FILE, CLAIMS_FILE, VERDICT_FILE):
        if (out_dir / section).exists():
            parts.append((out_dir / section).read_text().rstrip() + "\n")
    # outputs of other tools (sorsa-report analysis): shown, not described here
    ours = {"README.md", "main_table.md", "rank_table.md", VERDICT_FILE, CLAIMS_FILE, STUDY_FILE}
    captions = {**captions, SENSITIVITY: SENSITIVITY_CAPTION}
    tables = [f"- [{n}]({n})\n" for n in sorted(p.name for p in out_dir.glob("*.md") if p.name not in ours)]
    others = [
        f"![{n}]({n})\n" for n in sorted(p.name for p in out_dir.glob("*.png") if p.stem not in captions)
    ]
    if tables or others:
        parts.append(
            "## Other figures and tables\n\n"
            + "".join(tables)
            + "\n" * bool(tables and others)
            + "\n".join(others)
        )
    parts.append(_runs_table(summary))
    path = out_dir / "README.md"
    atomic_write_text(path, "\n".join(parts))
    return path
