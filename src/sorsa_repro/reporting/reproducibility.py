"""The reproducibility verdict: your runs of an experiment against the committed reference runs.

Runs are matched by (method, variant, rank, seed). A reference run is reproduced when yours trained the same
config (same config hash) for the same number of steps, every per-step training loss is within
``LOSS_RTOL`` (relative) of the reference's, and every accuracy (strict, per benchmark and grader, on the
same problems) is within ``accuracy_tolerance(n)`` problems. Why these bounds: the same code on another CPU
gives losses that differ by ~1e-5 relative at step 1 (0.9735901 vs 0.9735977 observed), growing over steps
through the optimizer; greedy decoding on weights that differ that little can flip a handful of answers.
Writes ``reproducibility.md`` (embedded in the experiment's README) and ``reproducibility.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sorsa_repro.reporting.aggregate import group_label, sort_key
from sorsa_repro.reporting.runs import Run, collect_runs
from sorsa_repro.results import atomic_write_json, atomic_write_text

LOSS_RTOL = 1e-3
ACCURACY_TOLERANCE = (1, 0.02)  # at most max(1 problem, 2% of the problems)
VERDICT_FILE = "reproducibility.md"


def accuracy_tolerance(n: int) -> int:
    """Correct answers by which a run may differ from the reference on ``n`` problems."""
    least, fraction = ACCURACY_TOLERANCE
    return max(least, math.ceil(fraction * n))


@dataclass
class RunCheck:
    label: str
    reference: str | None  # folder names
    ours: str | None
    verdict: str  # reproduced | differs | missing | extra
    steps: str = "–"
    max_loss_rel_diff: float | None = None
    at_step: int | None = None
    accuracy: list[dict] = field(default_factory=list)  # benchmark, grader, n, reference, ours, within
    reasons: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    experiment: str
    verdict: str  # REPRODUCED | DIFFERS | NO REFERENCE
    summary: str
    ours_dir: str
    reference_dir: str
    runs: list[RunCheck]


def _key(run: Run) -> tuple:
    return run.method, run.rank, run.variant, run.seed


def _label(run: Run) -> str:
    return f"{group_label(run.method, run.rank, run.variant)} seed {run.seed}"


def _trained(run: Run) -> bool:
    return run.result.get("train", {}).get("status") == "finished"


def _losses(run: Run) -> dict[int, float]:
    m = run.metrics
    if m is None or "loss" not in m:
        return {}
    m = m.dropna(subset=["loss"]).drop_duplicates("step", keep="last")
    return dict(zip(m["step"].astype(int), m["loss"].astype(float), strict=True))


def _compare_losses(check: RunCheck, ref: Run, ours: Run) -> None:
    ref_loss, our_loss = _losses(ref), _losses(ours)
    check.steps = f"{len(our_loss)} / {len(ref_loss)}"
    if sorted(ref_loss) != sorted(our_loss):
        check.reasons.append(f"logged steps differ ({len(our_loss)} here, {len(ref_loss)} in the reference)")
    diffs = {
        s: abs(our_loss[s] - ref_loss[s]) / max(abs(ref_loss[s]), 1e-12) for s in ref_loss if s in our_loss
    }
    if diffs:
        check.at_step = max(diffs, key=diffs.get)
        check.max_loss_rel_diff = diffs[check.at_step]
        if check.max_loss_rel_diff > LOSS_RTOL:
            check.reasons.append(
                f"training loss differs by {check.max_loss_rel_diff:.2e} (relative) at step {check.at_step}"
            )


def _compare_accuracy(check: RunCheck, ref: Run, ours: Run) -> None:
    for bench, ref_eval in sorted(ref.result.get("eval", {}).items()):
        our_eval = ours.result.get("eval", {}).get(bench)
        if our_eval is None:
            check.reasons.append(f"{bench}: not evaluated here")
            continue
        for grader, ref_score in sorted(ref_eval.get("scores", {}).items()):
            our_score = our_eval.get("scores", {}).get(grader)
            n = ref_eval.get("n")
            if our_score is None or our_eval.get("n") != n:
                check.reasons.append(f"{bench}/{grader}: not graded on the same {n} problems here")
                continue
            a, b = ref_score.get("n_strict"), our_score.get("n_strict")
            within = a is not None and b is not None and abs(a - b) <= accuracy_tolerance(n)
            check.accuracy.append(
                {"benchmark": bench, "grader": grader, "n": n, "reference": a, "ours": b, "within": within}
            )
            if not within:
                check.reasons.append(f"{bench}/{grader}: {b} of {n} correct here, {a} in the reference")


def compare_runs(ref: Run | None, ours: Run | None) -> RunCheck:
    run = ref or ours
    check = RunCheck(_label(run), ref and ref.name, ours and ours.name, "reproduced")
    if ref is None:
        check.verdict = "extra"
        return check
    if ours is None or not _trained(ours):
        check.verdict = "missing"
        check.reasons.append("no finished run here" if ours is None else f"here: {ours.status}")
        return check
    if ref.result.get("config_hash") != ours.result.get("config_hash"):
        check.reasons.append(
            f"another config (hash {ours.result.get('config_hash')} here, {ref.result.get('config_hash')} "
            "in the reference)"
        )
    _compare_losses(check, ref, ours)
    _compare_accuracy(check, ref, ours)
    check.verdict = "differs" if check.reasons else "reproduced"
    return check


def reproducibility_verdict(results_dir: str | Path, reference_dir: str | Path, experiment: str) -> Verdict:
    """Compare ``results_dir/<experiment>`` with ``reference_dir/<experiment>``."""
    ours_dir, ref_dir = Path(results_dir) / experiment, Path(reference_dir) / experiment
    if not ref_dir.is_dir():
        summary = f"no committed reference runs for experiment {experiment} ({ref_dir} does not exist)"
        return Verdict(experiment, "NO REFERENCE", summary, str(ours_dir), str(ref_dir), [])
    refs = {_key(r): r for r in collect_runs(ref_dir) if _trained(r)}
    ours = {_key(r): r for r in collect_runs(ours_dir)} if ours_dir.is_dir() else {}
    keys = sorted(set(refs) | set(ours), key=lambda k: (sort_key(k[0], k[1], k[2]), k[3] or 0))
    checks = [compare_runs(refs.get(k), ours.get(k)) for k in keys]
    compared = [c for c in checks if c.verdict != "extra"]
    good = sum(c.verdict == "reproduced" for c in compared)
    verdict = "REPRODUCED" if compared and good == len(compared) else "DIFFERS"
    summary = (
        f"{good} of {len(compared)} reference runs reproduced (per-step training loss within {LOSS_RTOL:g} "
        f"relative, accuracy within max({ACCURACY_TOLERANCE[0]} problem, "
        f"{ACCURACY_TOLERANCE[1]:.0%} of the problems) of the reference)"
    )
    return Verdict(experiment, verdict, summary, str(ours_dir), str(ref_dir), checks)


def to_markdown(verdict: Verdict) -> str:
    lines = [
        "## Reproducibility against the committed reference\n",
        f"**{verdict.verdict}**: {verdict.summary}. Compared `{verdict.ours_dir}/` with "
        f"`{verdict.reference_dir}/`; generated by `sorsa_repro.reporting.reproducibility`.\n",
    ]
    if verdict.runs:
        lines += [
            "| run | verdict | steps (here / ref) | max loss diff (rel) | at step | accuracy, strict (here / ref) |",
            "|:--|:--|--:|--:|--:|:--|",
        ]
        for c in verdict.runs:
            diff = "–" if c.max_loss_rel_diff is None else f"{c.max_loss_rel_diff:.1e}"
            acc = "; ".join(
                f"{a['benchmark']} {a['grader']} {a['ours']}/{a['reference']} of {a['n']}" for a in c.accuracy
            )
            lines.append(
                f"| {c.label} | {c.verdict} | {c.steps} | {diff} | {c.at_step or '–'} | {acc or '–'} |"
            )
        why = [f"- {c.label}: {'; '.join(c.reasons)}" for c in verdict.runs if c.reasons]
        if why:
            lines += ["", "Differences:", "", *why]
    return "\n".join(lines) + "\n"


def write_verdict(verdict: Verdict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    md, js = out_dir / VERDICT_FILE, out_dir / "reproducibility.json"
    atomic_write_text(md, to_markdown(verdict))
    atomic_write_json(js, json.loads(json.dumps(asdict(verdict))))
    return [md, js]
