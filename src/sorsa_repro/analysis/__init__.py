"""Spectral analysis of weight changes: how far fine-tuning moves singular values and vectors.

``spectral`` has the metrics, ``compare`` the command for two saved models, ``callback`` the Lightning
callback that tracks them during training, ``figures`` the figures and summary table of a sweep.
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
    "SpectralCallback",
    "parse_layer_name",
    "spectral_metrics",
    "spectral_table",
    "svd",
    "write_analysis_figures",
]


def __getattr__(name: str):
    # lazy: importing the metrics should not pull in lightning or matplotlib
    if name == "SpectralCallback":
        from sorsa_repro.analysis.callback import SpectralCallback

        return SpectralCallback
    if name == "write_analysis_figures":
        from sorsa_repro.analysis.figures import write_analysis_figures

        return write_analysis_figures
    raise AttributeError(name)
