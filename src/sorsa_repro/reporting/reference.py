"""The paper's reported numbers (paper_tables/reference.yaml) and which experiment they belong to."""

from __future__ import annotations

from pathlib import Path

import yaml

from sorsa_repro.layout import PAPER_NUMBERS as REPO_REFERENCE


def load_reference(path: str | Path | None = None) -> dict:
    """reference.yaml at ``path``, else the repository's copy; {} when neither exists."""
    for candidate in (path, REPO_REFERENCE):
        if candidate is not None and Path(candidate).exists():
            return yaml.safe_load(Path(candidate).read_text()) or {}
    return {}


def paper_model(reference: dict, experiment: str) -> dict | None:
    """The reference.yaml model entry run by ``experiment`` (None: no paper numbers apply)."""
    for model in reference.get("models", []):
        if model.get("experiment") == experiment:
            return model
    return None


def paper_row(model: dict | None, method: str, rank: int) -> dict | None:
    """The paper's row for (method, rank); a row without a rank matches any rank."""
    row = (model or {}).get("rows", {}).get(method)
    if row is None or (row.get("rank") is not None and row["rank"] != rank):
        return None
    return row


def citation(reference: dict) -> str:
    src = reference.get("source", {})
    return f"arXiv {src.get('arxiv', '?')}, {src.get('table', '?')}"
