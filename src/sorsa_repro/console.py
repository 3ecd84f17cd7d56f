"""What the commands print: the project's own messages, once each; other libraries only when they warn.

Lightning, transformers, vLLM, datasets and the HTTP clients log at INFO by default (a 4-step training run
printed each Lightning message twice, a vLLM evaluation 40 engine lines). They are kept at WARNING unless
``SORSA_VERBOSE=1`` (or Hydra's own ``hydra.verbose=true``) asks for everything. The setting travels to child
processes (the sweep's jobs, the vLLM evaluation and its engine processes) through the environment.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "SORSA_VERBOSE"
THIRD_PARTY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "transformers",
    "vllm",
    "datasets",
    "huggingface_hub",
    "httpx",
    "urllib3",
    "filelock",
    "torch",
)
# Lightning attaches a console handler of its own when it is imported before logging is set up (as under
# Hydra); its messages then also reach Hydra's root handler and print twice
OWN_HANDLER_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    if on:
        os.environ[VERBOSE_ENV] = "1"


def configure_console(hydra_verbose=None, lightning: bool = False) -> bool:
    """Apply the console policy in this process; returns verbose. ``lightning``: import Lightning first (its
    import sets its own loggers to INFO and attaches its handler)."""
    if lightning:
        import lightning.pytorch  # noqa: F401
    set_verbose(bool(hydra_verbose))
    on = verbose()
    level = logging.INFO if on else logging.WARNING
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in OWN_HANDLER_LOGGERS:
        own = logging.getLogger(name)
        for handler in list(own.handlers):
            own.removeHandler(handler)
        own.propagate = True
    # read by vLLM at import, in this process and in the engine processes it starts. Its WARNING lines are
    # ~20 fixed platform notes per start on a CPU (Triton, tcmalloc, OMP binding), so ERROR by default
    os.environ["VLLM_LOGGING_LEVEL"] = "INFO" if on else "ERROR"
    if not on:
        logging.getLogger("vllm").setLevel(logging.ERROR)
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # torch's C++ notes (NUMA binding)
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # child processes' deprecations
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards" bars
        except ImportError:
            pass
        # Lightning 2.6 on torch >= 2.10: an internal deprecation, nothing the user can act on
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    return on


def hydra_verbose() -> bool:
    """Whether the running Hydra app was given ``hydra.verbose`` (any value but false)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and bool(HydraConfig.get().verbose)
