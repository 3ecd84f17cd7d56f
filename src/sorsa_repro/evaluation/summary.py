"""Scores of graded predictions: the ``result.json`` eval entry of a benchmark, and the table a command prints.

``score_table`` prints what lm-evaluation-harness users look for at the end of an evaluation: one row per
benchmark and grader with the accuracy, k/n and a Wilson 95% interval.
"""

from __future__ import annotations

import math

Z975 = 1.959964  # the 97.5% normal quantile


def grader_versions(benchmark: str) -> dict[str, str]:
    from sorsa_repro.evaluation.graders import GRADER_VERSIONS, GRADERS

    return {g: GRADER_VERSIONS[g] for g in GRADERS[benchmark]}


def benchmark_summary(benchmark: str, rows: list[dict]) -> dict:
    """Counts and accuracies per grader (strict and flexible extraction) of graded prediction rows."""
    n = len(rows)
    scores = {}
    for grader, version in grader_versions(benchmark).items():
        n_strict = sum(bool(r["correct"][grader]["strict"]) for r in rows)
        n_flexible = sum(bool(r["correct"][grader]["flexible"]) for r in rows)
        scores[grader] = {
            "version": version,
            "strict": n_strict / n if n else None,
            "flexible": n_flexible / n if n else None,
            "n_strict": n_strict,
            "n_flexible": n_flexible,
            # checks that ran out of time even on retry: counted wrong, reported apart from wrong answers
            "n_timeouts": sum("strict" in (r.get("timeouts") or {}).get(grader, ()) for r in rows),
        }
    return {
        "n": n,
        "scores": scores,
        "n_length_cut": sum(r.get("finish_reason") == "length" for r in rows),  # hit max_new_tokens
        "mean_new_tokens": sum(r["n_tokens"] for r in rows) / n if n else None,
    }


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = k / n, Z975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the interval contains p; the clamps only remove rounding (k = 0 gave a low end of +1e-17 above p = 0)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def score_table(evals: dict[str, dict]) -> str:
    """``result.json["eval"]`` as a Markdown table: benchmark, grader, extraction, accuracy, k/n, 95% CI."""
    lines = [
        "| benchmark | grader | extraction | accuracy | k/n | 95% CI (Wilson) |",
        "|:--|:--|:--|--:|--:|--:|",
    ]
    for benchmark, entry in evals.items():
        n = entry.get("n") or 0
        for grader, score in entry.get("scores", {}).items():
            for mode in ("strict", "flexible"):
                k = score.get(f"n_{mode}", 0)
                low, high = wilson(k, n)
                accuracy = f"{100 * k / n:.2f}%" if n else "–"
                interval = f"[{100 * low:.1f}, {100 * high:.1f}]" if n else "–"
                lines.append(f"| {benchmark} | {grader} | {mode} | {accuracy} | {k}/{n} | {interval} |")
    return "\n".join(lines)
