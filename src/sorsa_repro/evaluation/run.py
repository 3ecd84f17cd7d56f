"""Evaluate a run folder or a model: generate, grade, write predictions and scores (DESIGN.md 3, 6).

For every benchmark: ``<out>/predictions/<benchmark>.jsonl`` (one row per problem, in dataset order)
and ``result.json["eval"][<benchmark>]`` (see ``sorsa_repro.results``), both written atomically.
``<out>`` is the run folder (``run=``; the model is its ``merged/`` export) or, for ``model=``,
``out_dir`` (default ``results/eval/<model name>/``).

Resuming: rows already in the predictions file are kept when their prompt and max_new_tokens match;
only the missing problems are generated, in chunks of ``chunk_size`` after each of which the file is
rewritten, so an interrupt loses at most one chunk. The chunks (and, for hf, the batches inside them)
are cut from the missing problems in dataset order, so a resumed evaluation generates exactly what an
uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

from sorsa_repro.evaluation.backends import (
    default_dtype,
    make_backend,
    resolve_backend,
    timed_generate,
)
from sorsa_repro.evaluation.config import EvalConfig, check_target, eval_config_for_training
from sorsa_repro.evaluation.lm_eval_format import write_lm_eval_results
from sorsa_repro.evaluation.predictions import (
    make_row,
    predictions_path,
    read_predictions,
    regrade,
    reusable,
    write_predictions,
)
from sorsa_repro.evaluation.summary import benchmark_summary
from sorsa_repro.evaluation.targets import MERGED_DIR, merged_with_adapter
from sorsa_repro.results import (
    LOCK_HELD_ENV,
    atomic_dir,
    atomic_write_json,
    load_result,
    run_folder_lock,
    stage,
    update_result,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- the loop


def backend_options(cfg: EvalConfig) -> dict:
    """The settings the configured backend is built with (``make_backend`` hands each backend its own)."""
    # seed picks synthetic problems (vLLM's own seed stays 0); update_reference is the caller's guard
    skip = ("run", "model", "seed", "update_reference")
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None and k not in skip}
    options["batch_size"] = cfg.hf_batch_size
    return options


class _LazyBackend:
    """Loads the model on first use, so a fully answered evaluation never loads one."""

    def __init__(self, name: str, factory):
        self.name, self._factory, self._backend, self.load_time_s = name, factory, None, None

    def get(self):
        if self._backend is None:
            start = time.perf_counter()
            self._backend = self._factory()
            self.load_time_s = time.perf_counter() - start
        return self._backend

    def close(self):
        if self._backend is not None:
            self._backend.close()


def _generate_missing(
    cfg: EvalConfig, benchmark: str, examples: list[dict], backend: _LazyBackend, path: Path
):
    """Reuse the predictions that still match, generate the rest chunk by chunk, rewriting the file after each.

    Returns (rows in dataset order, number generated, generation seconds, generated tokens)."""
    from sorsa_repro.data import build_prompt

    max_new = cfg.max_new_tokens_for(benchmark)
    old = {} if cfg.overwrite else read_predictions(path)
    wanted = {ex["id"] for ex in examples}
    kept = [row for pid, row in old.items() if pid not in wanted]  # beyond this call's limit: never dropped
    prompts = [build_prompt(ex["query"], for_eval=True) for ex in examples]
    rows: list[dict | None] = [
        regrade(benchmark, old[ex["id"]], ex["reference"])
        if reusable(old.get(ex["id"]), p, max_new, cfg.generation)
        else None
        for ex, p in zip(examples, prompts, strict=True)
    ]
    todo = [i for i, row in enumerate(rows) if row is None]
    logger.info(
        "%s: %d problems, %d already answered, %d to generate",
        benchmark,
        len(rows),
        len(rows) - len(todo),
        len(todo),
    )
    gen_s, gen_tokens = 0.0, 0
    chunk = cfg.chunk_size_for(backend.name)
    for start in range(0, len(todo), chunk):
        idx = todo[start : start + chunk]
        completions, seconds = timed_generate(backend.get(), [prompts[i] for i in idx], max_new, cfg.stop)
        gen_s += seconds
        gen_tokens += sum(c.n_tokens for c in completions)
        for i, completion in zip(idx, completions, strict=True):
            rows[i] = make_row(
                benchmark, examples[i], prompts[i], completion, max_new, backend.name, cfg.generation
            )
        write_predictions(path, rows, kept)
        logger.info(
            "%s: %d/%d generated, %.1f tokens/s", benchmark, start + len(idx), len(todo), gen_tokens / gen_s
        )
    write_predictions(path, rows, kept)  # also when nothing was generated: regraded rows, dropped stale ones
    return rows, len(todo), gen_s, gen_tokens


def _evaluate_benchmark(
    cfg: EvalConfig,
    benchmark: str,
    examples: list[dict],
    backend: _LazyBackend,
    out_dir: Path,
    model_name: str,
) -> dict:
    """Answer one benchmark and record its summary in result.json; returns that entry."""
    from sorsa_repro.data import PROMPT_VERSION, data_identity
    from sorsa_repro.provenance import git_state, package_versions

    path = predictions_path(out_dir, benchmark)
    rows, n_generated, gen_s, gen_tokens = _generate_missing(cfg, benchmark, examples, backend, path)
    summary = {
        **benchmark_summary(benchmark, rows),
        "limit": cfg.limit_for(benchmark),
        "max_new_tokens": cfg.max_new_tokens_for(benchmark),
        "generation_protocol": cfg.generation,
        "stop": list(cfg.stop),
        "backend": ",".join(sorted({r.get("backend", "?") for r in rows})),
        "dtype": cfg.dtype or default_dtype(),
        "prompt_version": PROMPT_VERSION,
        "model": model_name,
        "n_generated": n_generated,
        "data": data_identity(benchmark, "test", cfg.limit_for(benchmark), cfg.data_dir, cfg.seed, examples),
        "provenance": {**git_state(), "packages": package_versions()},
    }
    # generation timings add up over calls (an interrupted evaluation finished later counts both parts);
    # regenerating everything (overwrite) starts them again
    before = {} if cfg.overwrite else load_result(out_dir).get("eval", {}).get(benchmark, {})
    total_s = (before.get("wall_time_s") or 0.0) + gen_s
    total_tokens = (before.get("generated_tokens") or 0) + gen_tokens
    summary.update(
        wall_time_s=total_s if total_s else None,
        generated_tokens=total_tokens,
        tokens_per_s=total_tokens / total_s if total_s else None,
        load_time_s=backend.load_time_s if n_generated else before.get("load_time_s"),
    )
    if n_generated and backend.name == "hf":
        summary["peak_gpu_memory_mb"] = _peak_gpu_memory_mb()
    update_result(out_dir, {"eval": {benchmark: summary}})
    return load_result(out_dir)["eval"][benchmark]


def _peak_gpu_memory_mb() -> float | None:
    """Peak GPU memory of this process since the evaluation started (hf; vLLM runs its own processes)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def _backend_name(cfg: EvalConfig, given_model: bool) -> str:
    from sorsa_repro.models import TINY_MODEL

    if given_model:
        if cfg.backend == "vllm":
            raise ValueError("an in-memory model can only be evaluated with backend=hf")
        return "hf"
    return "hf" if cfg.backend == "auto" and cfg.model == TINY_MODEL else resolve_backend(cfg.backend)


def _model_name(cfg: EvalConfig, model) -> str:
    """What was evaluated, in words that mean the same on another machine: the run's own export, or the
    model as given."""
    if cfg.adapter is not None:
        return f"{cfg.model} + adapter {cfg.adapter}"
    if model is not None:
        return f"in-memory {type(model).__name__}" + (" (the run's merged model)" if cfg.run else "")
    return MERGED_DIR if cfg.run is not None else cfg.model


def _backend_factory(backend_name: str, cfg: EvalConfig, model_ref, model, tokenizer):
    def factory():
        if backend_name == "vllm":
            from sorsa_repro.models import OFFLINE_MODEL, offline_model_path

            ref = str(offline_model_path()) if model_ref == OFFLINE_MODEL else model_ref
        else:
            ref = model if model is not None else model_ref
        return make_backend(backend_name, ref, tokenizer, **backend_options(cfg))

    return factory


def check_evaluation(cfg: Mapping | EvalConfig) -> EvalConfig:
    """What ``evaluate`` checks before a model loads, and nothing written: the options, the backend, the run
    folder's export or the model folder, the adapter and the benchmarks' local data files."""
    from sorsa_repro.data import check_eval_data

    cfg = EvalConfig.from_mapping(cfg)
    check_target(cfg, _backend_name(cfg, False))
    for benchmark in cfg.benchmarks:
        check_eval_data(benchmark, cfg.data_dir)
    return cfg


def evaluate(cfg: Mapping | EvalConfig, model=None, tokenizer=None) -> dict:
    """Run the configured evaluation in this process; returns ``{benchmark: result.json eval entry}``.

    ``model``/``tokenizer``: an already loaded plain (merged) HF model to evaluate with the hf backend
    instead of loading one. With vllm the caller must sit under ``if __name__ == "__main__":``.
    """
    from sorsa_repro.data import load_eval_examples
    from sorsa_repro.provenance import provenance

    cfg = EvalConfig.from_mapping(cfg)
    backend_name = _backend_name(cfg, model is not None)
    # what can fail without a model (a missing export, missing data) fails here and writes nothing
    model_ref, out_dir = check_target(cfg, backend_name, have_model=model is not None)
    examples = {b: load_eval_examples(b, cfg.limit_for(b), cfg.data_dir, cfg.seed) for b in cfg.benchmarks}
    name = _model_name(cfg, model)
    if cfg.adapter is not None and model is None:
        model, tokenizer = merged_with_adapter(model_ref, cfg.adapter, cfg.dtype)
        if backend_name == "vllm":  # vLLM reads a folder: the merged model goes to <out_dir>/merged/
            with atomic_dir(out_dir / MERGED_DIR) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            model_ref, model, tokenizer = str(out_dir / MERGED_DIR), None, None
    logger.info("evaluating %s with %s into %s", model_ref or "the given model", backend_name, out_dir)
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_folder = cfg.run is not None
    # a run folder: one process at a time, and the evaluation's own status recorded (never the training's)
    with (
        run_folder_lock(cfg.run) if run_folder else nullcontext(),
        stage(cfg.run, "evaluation") if run_folder else nullcontext(),
    ):
        backend = _LazyBackend(backend_name, _backend_factory(backend_name, cfg, model_ref, model, tokenizer))
        try:
            if cfg.model is not None and "provenance" not in load_result(out_dir):
                # a bare model's folder has no training provenance: say what was evaluated
                update_result(
                    out_dir, {"provenance": {**provenance(), "model": cfg.model, "adapter": cfg.adapter}}
                )
            scores = {
                b: _evaluate_benchmark(cfg, b, examples[b], backend, out_dir, name) for b in cfg.benchmarks
            }
            write_lm_eval_results(out_dir)  # the same scores in lm-evaluation-harness's schema
            return scores
        finally:
            backend.close()


# ---------------------------------------------------------------------------------------------- callers


def already_evaluated(cfg: EvalConfig) -> bool:
    """The run folder's evaluation finished with exactly these settings: every benchmark has its scores for
    this limit, length and generation protocol, and a stored answer to every problem from the same prompt,
    graded by the current graders. Evaluating again would only rewrite its provenance, so it is skipped:
    a committed reference resumed from a clean clone (no ``merged/`` export: git-ignored) keeps its files."""
    from sorsa_repro.data import build_prompt, load_eval_examples
    from sorsa_repro.evaluation.summary import grader_versions

    result = load_result(cfg.run)
    if cfg.overwrite or result.get("evaluation", {}).get("status") != "finished":
        return False
    for benchmark in cfg.benchmarks:
        entry = result.get("eval", {}).get(benchmark, {})
        max_new = cfg.max_new_tokens_for(benchmark)
        if (entry.get("limit"), entry.get("max_new_tokens"), entry.get("generation_protocol")) != (
            cfg.limit_for(benchmark),
            max_new,
            cfg.generation,
        ):
            return False
        examples = load_eval_examples(benchmark, cfg.limit_for(benchmark), cfg.data_dir, cfg.seed)
        stored = read_predictions(predictions_path(cfg.run, benchmark))
        versions = grader_versions(benchmark)
        if entry.get("n") != len(examples) or not all(
            reusable(
                row := stored.get(ex["id"]), build_prompt(ex["query"], for_eval=True), max_new, cfg.generation
            )
            and row.get("grader_versions") == versions
            for ex in examples
        ):
            return False
    return True


def evaluate_run(
    run_dir, cfg: Mapping | EvalConfig | None = None, model=None, tokenizer=None, **overrides
) -> dict:
    """Evaluate a training run folder (what training and sweeps call after training); one already evaluated
    with these settings is skipped (``already_evaluated``).

    hf runs in this process (``model``/``tokenizer`` may hand over the merged model in memory); vllm
    runs in a subprocess (``evaluation.worker``, its config as a JSON file), which frees its memory on exit
    and needs no ``__main__`` guard here. Returns ``result.json["eval"]`` of the run.
    """
    cfg = EvalConfig.from_mapping(cfg, **{**overrides, "run": str(Path(run_dir).resolve()), "model": None})
    if already_evaluated(cfg):
        logger.info("%s: already evaluated with these settings: not evaluating again", cfg.run)
        return load_result(cfg.run).get("eval", {})
    if model is None and resolve_backend(cfg.backend) == "vllm":
        check_target(cfg, "vllm")  # fail here, not in the child
        with run_folder_lock(cfg.run), stage(cfg.run, "evaluation"):
            _evaluate_in_subprocess(cfg)
        return load_result(cfg.run).get("eval", {})
    evaluate(cfg, model=model, tokenizer=tokenizer)
    return load_result(cfg.run).get("eval", {})


def _evaluate_in_subprocess(cfg: EvalConfig) -> None:
    """The evaluation worker process on the run folder, working under this process's lock."""
    log_dir = Path(cfg.run) / "logs" / "eval"
    config = log_dir / "config.json"
    atomic_write_json(config, dataclasses.asdict(cfg))
    cmd = [sys.executable, "-m", "sorsa_repro.evaluation.worker", str(config)]
    code = subprocess.run(cmd, env={**os.environ, LOCK_HELD_ENV: cfg.run}).returncode
    if code != 0:
        why = load_result(cfg.run).get("evaluation", {}).get("error") or "see its log"
        raise RuntimeError(f"the evaluation process exited with code {code}: {why} (log: {log_dir})")


def evaluate_after_training(run_dir, cfg) -> dict:
    """Evaluate a run right after training (``eval_config_for_training``)."""
    return evaluate_run(run_dir, eval_config_for_training(run_dir, cfg))
