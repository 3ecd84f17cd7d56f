"""Whether a claim's verdict survives the learning rate: the claims at every rate of the study's grid (all
arms at one multiplier of their paper rates, paired by seed), and claim 2 at matched held-out loss.

Robustness of one comparison over the grid: **holds across the grid** (the same decisive verdict at every
rate), **holds in part** (one decisive verdict at some rates, inconclusive at the others), **flips**
(supported at some rates, contradicted at others) or **inconclusive at every rate**.

Claim 2 at matched held-out loss: a bigger step changes more weights by construction, so weight change is
also compared where two methods reach the same held-out loss. Per seed, each method's points (held-out loss,
weight change) at the grid's rates, from the smallest rate up to its best one (where a larger rate still
lowers the held-out loss), are joined by straight lines; the matched loss is the higher of the two methods'
best losses (both reach it), and each method's weight change there is read off its line, never extrapolated
(a seed whose smallest rate is already below the matched loss has no value). Paired by seed as every claim.
"""

from __future__ import annotations

import statistics

from sorsa_repro.reporting.aggregate import Summary
from sorsa_repro.reporting.claim_stats import final_heldout, paired_interval, spectral_final
from sorsa_repro.reporting.claims import (
    Row,
    arm_label,
    claim_rows,
    fmt_values,
    one_seed_lean,
    verdict,
    verdict_word,
)
from sorsa_repro.reporting.lr_study import grid_points, multipliers

# each claim's statistics that the one-line robustness summary speaks for
PRIMARY = {
    "1": ("held-out loss, last step",),
    "2": ("ΔΣ relative", "ΔD"),
    "3": ("final orthonormal penalty", "held-out loss, last step"),
}
SPECTRAL = (("d_sigma_rel", "ΔΣ relative"), ("d_d", "ΔD"))


def grid_rows(study: Summary) -> dict[float, list[Row]]:
    """Multiplier -> the claim rows of the study's runs at that multiplier."""
    return {m: claim_rows(study, [r for r in study.runs if r.lr_multiplier == m]) for m in multipliers(study)}


def _rates(ms: list[float]) -> str:
    return ", ".join(f"x{m:g}" for m in ms)


def robustness(by_rate: dict[float, list[Row]], key: tuple) -> str:
    """How the verdict of the row ``key`` behaves over the grid, in words with the rates."""
    words = {}
    for m, rows in by_rate.items():
        found = [r for r in rows if r.key == key]
        if found:
            words[m] = verdict_word(found[0].verdict)
    missing = [m for m in by_rate if m not in words]
    where = {
        w: [m for m, v in words.items() if v == w] for w in ("supported", "contradicted", "inconclusive")
    }
    tail = f"; not measured at {_rates(missing)}" if missing else ""
    if not words:
        return "not measured in the study"
    if where["supported"] and where["contradicted"]:
        text = f"flips: supported at {_rates(where['supported'])}, contradicted at {_rates(where['contradicted'])}"
    elif where["supported"] or where["contradicted"]:
        word = "supported" if where["supported"] else "contradicted"
        if not where["inconclusive"] and not missing:
            return f"holds across the grid ({word})"
        text = (
            f"holds in part: {word} at {_rates(where[word])}, inconclusive at {_rates(where['inconclusive'])}"
        )
    else:  # no interval anywhere: with one seed, the direction at each rate
        leaning = {}
        for m, rows in by_rate.items():
            for r in rows:
                if r.key == key and one_seed_lean(r.verdict):
                    leaning.setdefault(one_seed_lean(r.verdict), []).append(m)
        if leaning:
            parts = [f"{lean} at {_rates(ms)}" for lean, ms in sorted(leaning.items(), reverse=True)]
            text = "inconclusive at every rate (one seed, no interval): " + "; ".join(parts)
        else:
            text = "inconclusive at every rate"
    return text + tail


def claim_lines(by_rate: dict[float, list[Row]]) -> dict[str, str]:
    """Claim -> one line: across the grid its primary statistics hold, hold only in part, or flip."""
    keys = list(dict.fromkeys(r.key for rows in by_rate.values() for r in rows))
    out = {}
    for claim, stats in PRIMARY.items():
        mine = [k for k in keys if k[0] == claim and k[2] in stats]
        if not mine:
            continue
        each = {k: robustness(by_rate, k) for k in mine}
        if any(v.startswith("flips") for v in each.values()):
            overall = "**flips** within the grid"
        elif all(v.startswith("holds across") for v in each.values()):
            overall = "**holds across the whole grid**"
        elif all("(one seed, no interval)" in v for v in each.values()):
            overall = "**no verdict: one seed** (directions only)"
        else:
            overall = "**holds only in part of the grid**"
        detail = "; ".join(f"{k[1]} ({k[2]}): {v}" for k, v in each.items())
        out[claim] = f"{overall} ({_rates(list(by_rate))}): {detail}"
    return out


# ------------------------------------------------------------------------------- claim 2, matched loss


def _branch(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(loss, change) from the smallest rate up to the lowest loss."""
    best = min(range(len(points)), key=lambda i: points[i][0])
    return points[: best + 1]


def value_at(points: list[tuple[float, float]], loss: float) -> float | None:
    """The change where the line through ``points`` (smallest rate first) first reaches ``loss``."""
    branch = _branch(points)
    if not branch or loss > branch[0][0] or loss < branch[-1][0]:
        return None
    if len(branch) == 1 or loss == branch[0][0]:
        return branch[0][1]
    for (l0, w0), (l1, w1) in zip(branch, branch[1:], strict=False):
        if l1 <= loss <= l0 or l0 <= loss <= l1:
            return w0 if l0 == l1 else w0 + (w1 - w0) * (l0 - loss) / (l0 - l1)
    return None


def matched_rows(study: Summary, a: str = "sorsa", others=("lora", "pissa", "full")) -> list[Row]:
    """Claim 2's weight changes of ``a`` and each other method at their matched held-out loss, per seed."""
    points = {arm[0]: by_rate for arm, by_rate in grid_points(study).items() if not arm[2]}
    seeds = sorted({s for by_rate in points.values() for p in by_rate.values() for s in p.runs})
    rows = []
    for b in others:
        if a not in points or b not in points:
            continue
        for column, name in SPECTRAL:
            pairs, matched = [], []
            for seed in seeds:
                curves = [_curve(points[m], seed, column) for m in (a, b)]
                if any(len(c) < 1 for c in curves):
                    continue
                loss = max(min(point[0] for point in c) for c in curves)
                va, vb = (value_at(c, loss) for c in curves)
                if va is not None and vb is not None:
                    pairs.append((va, vb))
                    matched.append(loss)
            if pairs:
                rows.append(_row(a, b, name, pairs, matched))
    return rows


def _curve(by_rate: dict, seed: int, column: str) -> list[tuple[float, float]]:
    out = []
    for _, point in sorted(by_rate.items()):
        run = point.runs.get(seed)
        loss = final_heldout(run) if run is not None else None
        change = spectral_final(run, column) if run is not None else None
        if loss is None or change is None:
            return []  # a missing rate would change the line: no value for this seed
        out.append((loss, change))
    return out


def _row(a: str, b: str, name: str, pairs: list, matched: list) -> Row:
    interval = paired_interval([x - y for x, y in pairs])
    diff = "–" if interval is None else f"{interval[0]:+.5f} [{interval[1]:+.5f}, {interval[2]:+.5f}]"
    loss = statistics.fmean(matched)
    return Row("2", f"{arm_label(a)} < {arm_label(b)}", f"{name} at matched held-out loss ({loss:.4f})",
               fmt_values([x for x, _ in pairs], 5), fmt_values([y for _, y in pairs], 5), diff, len(pairs),
               verdict(interval, lower_is_claim=True))  # fmt: skip
