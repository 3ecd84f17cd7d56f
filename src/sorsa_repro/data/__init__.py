"""Data: prompt template, synthetic problems, dataset sources, tokenisation with masking, DataModule."""

from .answer_format import gsm8k_to_metamath, last_boxed, math_to_metamath
from .custom import check_train_source, load_train_examples
from .identity import data_identity
from .prompt import EVAL_SUFFIX, PROMPT_TEMPLATE, PROMPT_VERSION, build_prompt
from .sources import (
    DEFAULT_SYNTHETIC_TEST,
    DEFAULT_SYNTHETIC_TRAIN,
    ENV_VAR,
    EVAL_BENCHMARKS,
    TRAIN_DATASETS,
    DataFormatError,
    check_eval_data,
    load_eval_examples,
)
from .synthetic import GENERATOR_VERSION, make_synthetic

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
    "TOKENIZATION_MODES",
    "TRUNCATION_MODES",
    "DataFormatError",
    "build_prompt",
    "check_eval_data",
    "check_train_source",
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


_LAZY = {  # torch and lightning take seconds to import; graders and evaluation need neither
    "MathDataModule": "datamodule",
    "IGNORE_INDEX": "tokenize",
    "LONG_PROMPT_MODES": "tokenize",
    "PromptTooLongError": "tokenize",
    "TRUNCATION_MODES": "tokenize",
    "TOKENIZATION_MODES": "tokenize",
    "PadCollator": "tokenize",
    "combine": "tokenize",
    "encode_example": "tokenize",
    "encode_examples": "tokenize",
    "pad_token_id": "tokenize",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
