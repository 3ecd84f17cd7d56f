"""The paper's claims, checked on the run folders of one experiment, with a verdict each (``claims.md``).

Statistics fixed before any result was seen (and written into claims.md):

1. Convergence: per run, the held-out loss at its last step (rows never trained on: training/heldout.py),
   the mean training loss over the last quarter of its optimizer steps, and the first step at which the
   loss is at most half its step-1 value (a run that never gets there counts as its last step + 1). SORSA
   against PiSSA, LoRA and full FT; lower is the claim.
2. Weight change in the SVD view (spectral.csv at each run's last recorded step, mean over the adapted
   matrices): d_sigma_rel (mean |change of singular values| / mean singular value) and d_d (1 - mean
   alignment of singular vectors). SORSA against LoRA, PiSSA and full FT; lower is the claim.
3. The regularizer: each SORSA variant with gamma > 0 against SORSA with gamma = 0 (the ``gamma0``
   variant): final orthonormal penalty (lower), held-out loss and last-quarter loss (lower), accuracy
   (higher).
4. Accuracy (strict extraction, each benchmark's first grader): SORSA > PiSSA > full FT > LoRA, as
   consecutive pairs; per method the pooled accuracy with a Wilson 95% interval.

Every comparison pairs runs of the same seed (same data order, same evaluation problems): the paired
difference A - B over seeds with a two-sided 95% Student-t interval (sample std, ddof=1). Verdict:
**supported** when the interval lies entirely on the claimed side of zero, **contradicted** when entirely
on the other, **inconclusive** otherwise, with fewer than 2 paired seeds, or for accuracies at a floor or
ceiling (every run 0% or 100%). Accuracy rows also give an exact McNemar test on the same problems,
pooled over seeds. Generated only from the run folders; deterministic. The claims file itself, with each
verdict at the paper's and at the selected learning rates, is written by ``claims_report``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from sorsa_repro.evaluation.summary import wilson
from sorsa_repro.reporting.aggregate import Summary, group_label
from sorsa_repro.reporting.claim_stats import (
    final_heldout,
    final_penalty,
    last_quarter_loss,
    mcnemar_p,
    outcomes,
    paired_interval,
    spectral_final,
    steps_to_half_loss,
)
from sorsa_repro.reporting.runs import Run

GAMMA0 = "variant=gamma0"
MCNEMAR_ALPHA = 0.05  # an accuracy verdict also needs the paired test on the same problems below this


def verdict_word(text: str) -> str:
    """supported | contradicted | inconclusive, from a verdict as the tables write it."""
    return text.strip("*").split(" ")[0] if text.startswith("**") else "inconclusive"


ONE_SEED_FOR, ONE_SEED_AGAINST = "one seed: the claim's direction", "one seed: against the claim"


def one_seed_lean(text: str) -> str | None:
    """ "the claim's direction" | "against the claim" for a one-seed verdict, else None."""
    lean = next((w for w in (ONE_SEED_FOR, ONE_SEED_AGAINST) if w in text), None)
    return lean.removeprefix("one seed: ") if lean else None


def verdict(
    interval: tuple[float, float, float] | None, lower_is_claim: bool, diffs: list[float] = ()
) -> str:
    if interval is None:
        if len(diffs) == 1 and diffs[0] != 0:  # no interval, but the direction is worth saying
            return f"inconclusive ({ONE_SEED_FOR if (diffs[0] < 0) == lower_is_claim else ONE_SEED_AGAINST})"
        return "inconclusive (fewer than 2 paired seeds)"
    _, low, high = interval
    better, worse = (high < 0, low > 0) if lower_is_claim else (low > 0, high < 0)
    return (
        "**supported**" if better else "**contradicted**" if worse else "inconclusive (interval includes 0)"
    )


# ---------------------------------------------------------------------------------------------- claims


@dataclass
class Row:
    claim: str
    comparison: str
    statistic: str
    a: str
    b: str
    difference: str
    seeds: int
    verdict: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What the row tests, the same at every learning rate: claim, comparison, statistic's name."""
        return self.claim, self.comparison, self.statistic.split(";")[0]


def groups(runs: list[Run]) -> dict[str, dict[int, Run]]:
    """Label -> seed -> run, for finished runs: "sorsa", "pissa", ..., "sorsa [variant=gamma0]" (the arm:
    the variant without a learning rate, so that runs at one rate of a study compare as the claims sweep's)."""
    ranks = [r.rank for r in runs if r.rank and r.method != "base"]
    main_rank = max(set(ranks), key=ranks.count) if ranks else 0
    out: dict[str, dict[int, Run]] = {}
    for run in runs:
        if run.result.get("train", {}).get("status") != "finished" or run.seed is None or run.divergence:
            continue  # (a diverged run: the README's run table says why it is left out)
        if run.rank and run.rank != main_rank:
            continue
        label = run.method + (f" [{run.arm}]" if run.arm else "")
        out.setdefault(label, {})[run.seed] = run
    return out


def arm_label(group: str) -> str:
    method, _, variant = group.partition(" [")
    return group_label(method, variant=variant.removesuffix("]"))


def fmt_values(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{sd}"


def compare(groups, a: str, b: str, stat, name: str, claim: str, lower: bool, digits: int = 4) -> Row | None:
    if a not in groups or b not in groups:
        return None
    seeds = sorted(set(groups[a]) & set(groups[b]))
    pairs = [(stat(groups[a][s]), stat(groups[b][s])) for s in seeds]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not pairs:
        return None
    diffs = [x - y for x, y in pairs]
    interval = paired_interval(diffs)
    if interval is not None:
        diff = f"{interval[0]:+.{digits}f} [{interval[1]:+.{digits}f}, {interval[2]:+.{digits}f}]"
    else:  # one seed: its difference, no interval
        diff = f"{diffs[0]:+.{digits}f} (one seed)"
    sign = "<" if lower else ">"
    return Row(claim, f"{arm_label(a)} {sign} {arm_label(b)}", name, fmt_values([x for x, _ in pairs], digits),
               fmt_values([y for _, y in pairs], digits), diff, len(pairs), verdict(interval, lower, diffs))  # fmt: skip


def accuracy_rows(groups, summary: Summary, a: str, b: str, claim: str) -> list[Row]:
    from sorsa_repro.evaluation.tasks import TASKS

    rows = []
    for bench in summary.benchmarks:
        grader = TASKS[bench].graders[0] if bench in TASKS else summary.graders(bench)[0]
        if a not in groups or b not in groups:
            continue
        seeds = sorted(set(groups[a]) & set(groups[b]))
        per_seed = [
            (outcomes(groups[a][s], bench, grader), outcomes(groups[b][s], bench, grader)) for s in seeds
        ]
        per_seed = [(x, y) for x, y in per_seed if x and y and set(x) == set(y)]
        if not per_seed:
            continue
        diffs = [100 * (sum(x.values()) - sum(y.values())) / len(x) for x, y in per_seed]
        a_only = sum(x[i] and not y[i] for x, y in per_seed for i in x)
        b_only = sum(y[i] and not x[i] for x, y in per_seed for i in x)
        p = mcnemar_p(a_only, b_only)

        interval = paired_interval(diffs)
        every = [v for pair in per_seed for side in pair for v in side.values()]
        if all(every) or not any(every):
            outcome = (
                "inconclusive (floor: every answer wrong)" if not any(every) else "inconclusive (ceiling)"
            )
        else:
            outcome = verdict(interval, lower_is_claim=False)
            if outcome.startswith("**") and p >= MCNEMAR_ALPHA:  # a few problems can give a 0-width interval
                outcome = f"inconclusive (paired test on the same problems: McNemar p = {p:.2f})"
        diff = "–" if interval is None else f"{interval[0]:+.1f} [{interval[1]:+.1f}, {interval[2]:+.1f}] pp"
        rows.append(Row(claim, f"{arm_label(a)} > {arm_label(b)}", f"{bench} accuracy ({grader}, strict); McNemar "
                        f"p = {p:.3f} ({a_only} vs {b_only} discordant)", _pooled(per_seed, 0), _pooled(per_seed, 1), diff,
                        len(per_seed), outcome))  # fmt: skip
    return rows


def _pooled(per_seed: list[tuple[dict, dict]], side: int) -> str:
    """Accuracy over every (seed, problem) of one side, with its Wilson 95% interval."""
    k = sum(sum(pair[side].values()) for pair in per_seed)
    n = sum(len(pair[side]) for pair in per_seed)
    low, high = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({k}/{n})"


def claim_rows(summary: Summary, runs: list[Run] | None = None) -> list[Row]:
    """Every claim's rows on ``runs`` (default: all of the summary's; a learning-rate study passes the runs of
    one rate)."""
    g = groups(summary.runs if runs is None else runs)
    rows: list[Row | None] = []
    for other in ("pissa", "lora", "full"):
        rows.append(compare(g, "sorsa", other, final_heldout, "held-out loss, last step", "1", True))
        rows.append(
            compare(g, "sorsa", other, last_quarter_loss, "mean loss, last quarter of steps", "1", True)
        )
        rows.append(
            compare(g, "sorsa", other, steps_to_half_loss, "steps to half the step-1 loss", "1", True, 1)
        )
    for other in ("lora", "pissa", "full"):
        for column, name in (("d_sigma_rel", "ΔΣ relative"), ("d_d", "ΔD")):
            rows.append(
                compare(g, "sorsa", other, lambda r, c=column: spectral_final(r, c), name, "2", True, 5)
            )
    for variant in sorted(k for k in g if k.startswith("sorsa") and GAMMA0 not in k):
        gamma0 = f"sorsa [{GAMMA0}]"
        rows.append(compare(g, variant, gamma0, final_penalty, "final orthonormal penalty", "3", True, 5))
        rows.append(compare(g, variant, gamma0, final_heldout, "held-out loss, last step", "3", True))
        rows.append(
            compare(g, variant, gamma0, last_quarter_loss, "mean loss, last quarter of steps", "3", True)
        )
        rows += accuracy_rows(g, summary, variant, gamma0, "3")
    for a, b in (("sorsa", "pissa"), ("pissa", "full"), ("full", "lora")):
        rows += accuracy_rows(g, summary, a, b, "4")
    return [r for r in rows if r is not None]
