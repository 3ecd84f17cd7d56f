"""The predictions file of a benchmark, ``<out>/predictions/<benchmark>.jsonl``: one graded row per problem.

Rows are written in dataset order, atomically; a row is reused by a later call when it was generated from
the same prompt with the same settings, and graded again when a grader's version changed since.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sorsa_repro.evaluation.summary import grader_versions
from sorsa_repro.evaluation.tasks import DEFAULT_GENERATION
from sorsa_repro.results import atomic_write_text

if TYPE_CHECKING:  # the backends import torch; reading predictions (reports, W&B) must not
    from sorsa_repro.evaluation.backends import Completion

PREDICTIONS_DIR = "predictions"
logger = logging.getLogger(__name__)


def predictions_path(out_dir: str | Path, benchmark: str) -> Path:
    return Path(out_dir) / PREDICTIONS_DIR / f"{benchmark}.jsonl"


def read_predictions(path: Path) -> dict[str, dict]:
    """Rows by id, in file order; unreadable lines (a file cut short by hand) are skipped with a warning.
    Lines end at "\n" only: a completion may hold U+2028 or U+0085 unescaped (``ensure_ascii=False``), which
    ``str.splitlines`` would take for line ends, losing the row."""
    rows: dict[str, dict] = {}
    if not path.exists():
        return rows
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s line %d is not a prediction row; it will be generated again", path, n)
    return rows


def write_predictions(path: Path, rows: list[dict | None], kept: list[dict] = ()) -> None:
    """This call's rows in dataset order, then rows of earlier calls it did not cover (a larger limit)."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in [*rows, *kept] if r is not None]
    atomic_write_text(path, "".join(lines))


def grade(benchmark: str, completion: str, reference: str) -> dict:
    """The graders' verdict; any failure counts as wrong and is logged, so one bad row never stops a run."""
    from sorsa_repro.evaluation.graders import GRADERS, score_completion

    try:
        return score_completion(benchmark, completion, reference)
    except Exception:
        logger.warning("grading failed on %.80r; counted wrong", completion, exc_info=True)
        wrong = {"strict": False, "flexible": False}
        return {
            "strict_answer": None,
            "flexible_answer": None,
            "gold": None,
            "correct": {g: dict(wrong) for g in GRADERS[benchmark]},
        }


def make_row(
    benchmark: str,
    example: dict,
    prompt: str,
    completion: Completion,
    max_new_tokens: int,
    backend: str,
    generation: str = DEFAULT_GENERATION,
):
    graded = grade(benchmark, completion.text, example["reference"])
    return {
        "id": example["id"],
        "prompt": prompt,
        "completion": completion.text,
        "n_tokens": completion.n_tokens,
        "finish_reason": completion.finish_reason,
        "max_new_tokens": max_new_tokens,
        "generation": generation,
        "backend": backend,
        "strict_answer": graded["strict_answer"],
        "flexible_answer": graded["flexible_answer"],
        "gold": graded["gold"],
        "correct": graded["correct"],
        "timeouts": graded.get("timeouts", {}),  # grader -> modes whose check ran out of time (counted wrong)
        "grader_versions": grader_versions(benchmark),
    }


def reusable(row: dict | None, prompt: str, max_new_tokens: int, generation: str) -> bool:
    """A stored row answers this call when it was generated from the same prompt with the same settings
    (rows from before generation protocols were named were generated without stop strings: sorsa-v1)."""
    return (
        row is not None
        and row.get("prompt") == prompt
        and row.get("max_new_tokens") == max_new_tokens
        and row.get("generation", "sorsa-v1") == generation
    )


def regrade(benchmark: str, row: dict, reference: str) -> dict:
    """A reused row graded again when a grader's version changed since it was written."""
    if row.get("grader_versions") == grader_versions(benchmark):
        return row
    graded = grade(benchmark, row["completion"], reference)
    fresh = {
        k: graded.get(k, {}) for k in ("strict_answer", "flexible_answer", "gold", "correct", "timeouts")
    }
    return {**row, **fresh, "grader_versions": grader_versions(benchmark)}
