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

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"  # Hydra configs (an absolute path: entry points work from any directory)
RESULTS_DIR = "results"
LOCAL_TABLES_DIR = "paper_tables/local"
REFERENCE_RUNS_DIR = "reference_runs"
REFERENCE_TABLES_DIR = "paper_tables"
PAPER_NUMBERS = REPO_ROOT / "paper_tables" / "reference.yaml"


UPDATE_REFERENCE = "update_reference"  # the option every writing entry point takes to write the reference


class ReferenceLocationError(ValueError):
    """A command would write into the committed reference without ``update_reference=true``."""


def is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is the root of a checkout of this project (any clone, not only the one the
    installed package lives in): it holds the paper's numbers, or a pyproject.toml naming the package."""
    if (folder / "paper_tables" / "reference.yaml").is_file():
        return True
    try:
        return 'name = "sorsa-repro"' in (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False


def reference_folder(path: str | os.PathLike) -> Path | None:
    """The committed reference folder (``reference_runs/``, or ``paper_tables/`` outside
    ``paper_tables/local/``) of whichever checkout ``path`` is or lies in, or None.

    Found from the path itself: a relative path from the current folder, checked as written (``..``
    collapsed) and with symlinks followed, so a second clone sharing one virtual environment is protected
    as well as the checkout the package was installed from."""
    path = Path(path).expanduser()
    for candidate in dict.fromkeys([Path(os.path.abspath(path)), path.resolve()]):
        for folder in (candidate, *candidate.parents):
            if folder.name not in (REFERENCE_RUNS_DIR, REFERENCE_TABLES_DIR) or not is_checkout(
                folder.parent
            ):
                continue
            local = folder.parent / LOCAL_TABLES_DIR
            if folder.name == REFERENCE_TABLES_DIR and (candidate == local or local in candidate.parents):
                break  # paper_tables/local/: the user's own report
            return folder
    return None


def is_reference_location(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (or lies inside) a committed reference folder of a checkout (``reference_folder``)."""
    return reference_folder(path) is not None


def refuse_reference(paths: dict[str, str | os.PathLike], update_reference: bool, command: str) -> None:
    """Raise ``ReferenceLocationError`` when any of ``paths`` ({option: path}) lies in a committed reference
    folder and ``update_reference`` is not set: no entry point writes there by accident."""
    if update_reference:
        return
    for option, path in paths.items():
        folder = reference_folder(path)
        if folder is not None:
            raise ReferenceLocationError(
                f"{option}={path} lies in {folder}, the committed reference, which {command} does not write; "
                f"nothing was written. Choose another {option}, or pass {UPDATE_REFERENCE}=true to refresh "
                "the reference on purpose (maintainers)"
            )


PLAIN_NAME = re.compile(r"[A-Za-z0-9_+=,@%-][A-Za-z0-9._+=,@%-]*")


def check_plain_name(option: str, value, allow_empty: bool = False) -> None:
    """A value that becomes one part of a path: letters, digits and ``._+=,@%-``, not starting with a dot
    (no ``/``, ``..`` or hidden name), so it cannot lead out of the folder it names a part of."""
    text = "" if value is None else str(value)
    if allow_empty and text == "":
        return
    if not PLAIN_NAME.fullmatch(text):
        raise ValueError(
            f"{option}={text!r} becomes part of a folder name: use letters, digits and ._+=,@%- only, not "
            "starting with a dot (no '/', '..' or empty name)"
        )
