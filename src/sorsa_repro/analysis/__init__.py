"""Spectral analysis of weight changes: how far fine-tuning moves singular values and vectors.

``spectral`` has the metrics, ``compare`` the command for two saved models. A leaf library: the Lightning
callback that tracks the metrics during training is ``training.spectral_callback``, the figures and summary
table of a sweep ``reporting.spectral_figures``.
"""

from sorsa_repro.analysis.spectral import (
    DEFAULT_EPS,
    DEFAULT_K,
    SVD,
    parse_layer_name,
    spectral_metrics,
    spectral_table,
    svd,
)

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_K",
    "SVD",
    "parse_layer_name",
    "spectral_metrics",
    "spectral_table",
    "svd",
]
