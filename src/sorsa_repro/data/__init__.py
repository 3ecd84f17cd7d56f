"""Data: prompt template, synthetic problems, dataset sources, tokenisation with masking, DataModule."""

from .prompt import EVAL_SUFFIX, PROMPT_TEMPLATE, PROMPT_VERSION, build_prompt
from .sources import (
    DEFAULT_SYNTHETIC_TEST,
    DEFAULT_SYNTHETIC_TRAIN,
    ENV_VAR,
    EVAL_BENCHMARKS,
    TRAIN_DATASETS,
    data_identity,
    gsm8k_to_metamath,
    last_boxed,
    load_eval_examples,
    load_train_examples,
    math_to_metamath,
)
from .synthetic import GENERATOR_VERSION, make_synthetic
from .tokenize import (
    IGNORE_INDEX,
    TRUNCATION_MODES,
    PadCollator,
    combine,
    encode_example,
    encode_examples,
    pad_token_id,
)

__all__ = [
    "DEFAULT_SYNTHETIC_TEST",
    "DEFAULT_SYNTHETIC_TRAIN",
    "ENV_VAR",
    "EVAL_BENCHMARKS",
    "EVAL_SUFFIX",
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "LONG_PROMPT_MODES",
    "MathDataModule",
    "PROMPT_TEMPLATE",
    "PROMPT_VERSION",
    "PadCollator",
    "PromptTooLongError",
    "TRAIN_DATASETS",
    "TRUNCATION_MODES",
    "build_prompt",
    "combine",
    "data_identity",
    "encode_example",
    "encode_examples",
    "gsm8k_to_metamath",
    "last_boxed",
    "load_eval_examples",
    "load_train_examples",
    "make_synthetic",
    "math_to_metamath",
    "pad_token_id",
]


def __getattr__(name: str):
    # Lazy: importing lightning takes seconds, and evaluation code only needs the prompt and sources.
    if name == "MathDataModule":
        from .datamodule import MathDataModule

        return MathDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
