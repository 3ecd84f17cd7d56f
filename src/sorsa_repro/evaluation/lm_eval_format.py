"""The scores of an evaluation folder in lm-evaluation-harness's results schema, beside result.json.

``results_lm_eval.json`` (the name matches lm-eval's ``results_*.json``) holds what tools that read
lm-eval output look for: ``results[task]["exact_match,strict-match"]`` and ``"exact_match,flexible-extract"``
with their ``..._stderr`` (lm-eval's: the sample standard deviation over sqrt(n), i.e. sqrt(p (1 - p) / (n - 1));
"N/A" for n < 2), ``n-samples`` (``original``: the test set's size; ``effective``: the problems evaluated),
``configs`` (dataset, prompt, generation settings, filters), ``versions``, ``n-shot``, ``higher_is_better``
and ``config`` (model, backend, limit).

``exact_match`` is the benchmark's first grader, the one the paper's numbers compare with (GSM8K and MATH:
``metamath``; synthetic: ``numeric``); every grader also has its own ``exact_match_<grader>``. Tasks keep this
suite's benchmark names; their configs say how they differ from lm-eval's own tasks of the same name
(zero-shot, the MetaMath prompt, the named generation protocol).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

LM_EVAL_FILE = "results_lm_eval.json"
FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}


def stderr(k: int, n: int) -> float | str:
    """lm-eval's standard error of a mean of 0/1 scores (sample std, ddof=1, over sqrt(n))."""
    if n < 2:
        return "N/A"
    p = k / n
    return math.sqrt(p * (1 - p) / (n - 1))


def _task_results(benchmark: str, entry: dict) -> dict:
    from sorsa_repro.evaluation.tasks import TASKS

    n = entry.get("n") or 0
    scores = entry.get("scores", {})
    graders = [g for g in TASKS[benchmark].graders if g in scores] if benchmark in TASKS else list(scores)
    out: dict = {"alias": benchmark}
    for rank, grader in enumerate(graders):
        names = ["exact_match"] if rank == 0 else []
        names.append(f"exact_match_{grader}")
        for mode, filt in FILTERS.items():
            k = scores[grader].get(f"n_{mode}", 0)
            for name in names:
                out[f"{name},{filt}"] = k / n if n else None
                out[f"{name}_stderr,{filt}"] = stderr(k, n)
    return out


def _task_config(benchmark: str, entry: dict) -> dict:
    from sorsa_repro.data import EVAL_SUFFIX, PROMPT_TEMPLATE
    from sorsa_repro.data.sources import SOURCES

    _, path, name, split = SOURCES.get(
        (benchmark, "test"), (None, "sorsa_repro.data.synthetic", None, "test")
    )
    name = name if isinstance(name, str | None) else list(name)  # MATH: its subject configs
    graders = list(entry.get("scores", {}))
    return {
        "task": benchmark,
        "dataset_path": path,
        "dataset_name": name,
        "test_split": split,
        "doc_to_text": PROMPT_TEMPLATE.replace("{query}", "{{question}}") + EVAL_SUFFIX,
        "num_fewshot": 0,
        "output_type": "generate_until",
        "generation_kwargs": {
            "until": list(entry.get("stop") or []),
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": entry.get("max_new_tokens"),
        },
        "repeats": 1,
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ["exact_match", *(f"exact_match_{g}" for g in graders)]
        ],
        "filter_list": [
            {"name": "strict-match", "filter": [{"function": "sorsa_repro strict: after 'The answer is: '"}]},
            {
                "name": "flexible-extract",
                "filter": [{"function": "sorsa_repro flexible: the last number/boxed"}],
            },
        ],
        "metadata": {
            "version": entry.get("generation_protocol"),
            "generation_protocol": entry.get("generation_protocol"),
            "prompt_version": entry.get("prompt_version"),
            "graders": {g: s.get("version") for g, s in entry.get("scores", {}).items()},
            "exact_match_grader": (graders or [None])[0],
            "source": "sorsa_repro (not lm-evaluation-harness): zero-shot, the MetaMath prompt, greedy",
        },
    }


def lm_eval_results(result: dict) -> dict:
    """lm-eval's results dict for the ``eval`` block (and provenance) of a result.json."""
    from sorsa_repro.evaluation.tasks import TASKS

    evals = result.get("eval") or {}
    first = next(iter(evals.values()), {})
    provenance = result.get("provenance") or {}
    model = first.get("model")
    return {
        "results": {b: _task_results(b, e) for b, e in evals.items()},
        "group_subtasks": {b: [] for b in evals},
        "configs": {b: _task_config(b, e) for b, e in evals.items()},
        "versions": {b: e.get("generation_protocol") for b, e in evals.items()},
        "n-shot": {b: 0 for b in evals},
        "higher_is_better": {
            b: {m["metric"]: True for m in _task_config(b, e)["metric_list"]} for b, e in evals.items()
        },
        "n-samples": {
            b: {
                "original": (TASKS[b].test_size if b in TASKS else None) or e.get("n"),
                "effective": e.get("n"),
            }
            for b, e in evals.items()
        },
        "config": {
            "model": first.get("backend"),
            "model_args": f"pretrained={model}",
            "batch_size": None,
            "limit": {b: e.get("limit") for b, e in evals.items()},
            "dtype": first.get("dtype"),
        },
        "git_hash": (provenance.get("git_commit") or "")[:7] or None,
        "date": time.time(),
        "model_name": model,
        "model_source": first.get("backend"),
        "total_evaluation_time_seconds": str(sum(e.get("wall_time_s") or 0.0 for e in evals.values())),
    }


def write_lm_eval_results(out_dir: str | Path) -> Path | None:
    """Write ``results_lm_eval.json`` beside the folder's result.json (atomically); None without scores."""
    from sorsa_repro.results import atomic_write_json, load_result

    result = load_result(out_dir)
    if not result.get("eval"):
        return None
    path = Path(out_dir) / LM_EVAL_FILE
    atomic_write_json(path, lm_eval_results(result))
    return path
