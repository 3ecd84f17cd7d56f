"""Evaluation: generation backends, answer graders and the evaluation entry point.

``evaluate(cfg)`` and ``evaluate_run(run_dir, cfg)`` live in ``evaluation.run``; imported lazily here,
so that importing the graders does not import torch.
"""

_RUN_NAMES = ("EvalConfig", "evaluate", "evaluate_run")


def __getattr__(name: str):
    if name in _RUN_NAMES:
        from sorsa_repro.evaluation import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
