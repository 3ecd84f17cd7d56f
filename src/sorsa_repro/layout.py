"""Where things live in the repository: the user's own outputs and the committed reference.

- ``results/<experiment>/<run>/``: your runs (git-ignored); ``paper_tables/local/<experiment>/``: your tables,
  figures, claims and reproducibility verdict (git-ignored). ``make replicate-sorsa`` writes only these.
- ``reference_runs/<experiment>/<run>/`` and ``paper_tables/<experiment>/``: the committed reference runs
  (their small files) and the tables made from them. A run never writes there; a maintainer refreshes them
  on purpose with ``make replicate-sorsa ... ARGS=update_reference=true``.
- ``paper_tables/reference.yaml``: the paper's reported numbers, the one hand-typed input.

Words: a *run* is one training job (experiment, method, rank, seed, config) and its folder, the *run folder*
(``results/<experiment>/<run name>/``, the name ending in the config hash); result.json's ``run`` block names
it, ``sorsa-evaluate run=<folder>`` takes the folder, reporting loads it as a ``Run``. Training prepares it as a
``PreparedRun`` (validated config and data, nothing written yet); a sweep or ``make replicate-sorsa`` runs many.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"  # Hydra configs (an absolute path: entry points work from any directory)
RESULTS_DIR = "results"
LOCAL_TABLES_DIR = "paper_tables/local"
REFERENCE_RUNS_DIR = "reference_runs"
REFERENCE_TABLES_DIR = "paper_tables"
PAPER_NUMBERS = REPO_ROOT / "paper_tables" / "reference.yaml"


def is_reference_location(path: str | Path) -> bool:
    """Whether ``path`` is (or lies inside) a committed reference folder of this checkout."""
    resolved = Path(path).resolve()
    protected = [REPO_ROOT / REFERENCE_RUNS_DIR, REPO_ROOT / REFERENCE_TABLES_DIR]
    local = (REPO_ROOT / LOCAL_TABLES_DIR).resolve()
    if resolved == local or local in resolved.parents:
        return False
    return any(resolved == p or p in resolved.parents for p in protected)
