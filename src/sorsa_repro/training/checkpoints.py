"""Resumable checkpoints that a kill, a full disk or a second filesystem cannot destroy.

Lightning's own save writes the checkpoint into a temp file in ``$TMPDIR`` and moves it over ``last.ckpt``;
when the run folder is on another filesystem (a cluster's local /tmp, results on NFS or Lustre) that move is
a copy onto ``last.ckpt`` itself, and a kill or a full disk during it leaves a truncated ``last.ckpt``: the
only checkpoint, lost. Here the checkpoint is written into a temp file beside ``last.ckpt`` (the same folder,
so the same filesystem) and renamed over it once complete (``results.atomic_write``). The one before is kept
as ``previous.ckpt`` (a hard link: no copy) unless ``train.keep_previous_checkpoint=false``.

A resume reads ``last.ckpt`` when it is a complete checkpoint; an empty or cut-short one (left by older
versions, or by a disk that lost data) is named in the log, set aside as ``last.ckpt.corrupt``, and the run
resumes from ``previous.ckpt``; without a usable previous one ``CorruptCheckpointError`` names the file.
"""

from __future__ import annotations

import errno
import logging
import os
import zipfile
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sorsa_repro.results import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.ckpt"
PREVIOUS = "checkpoints/previous.ckpt"
CORRUPT_SUFFIX = ".corrupt"


class CorruptCheckpointError(RuntimeError):
    """A run's checkpoint cannot be read and there is no earlier one to resume from."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a quota); the previous checkpoint is unchanged."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with the save written beside its destination and renamed over it;
    ``keep_previous``: the ``last.ckpt`` it replaces stays as ``previous.ckpt``."""

    def __init__(self, keep_previous: bool = True):
        super().__init__()
        self.keep_previous = keep_previous

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        if self.keep_previous and path.name == Path(CHECKPOINT).name and path.is_file():
            if checkpoint_problem(path) is None:
                keep_previous(path, path.with_name(Path(PREVIOUS).name))
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f))
        except OSError as err:
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            raise CheckpointWriteError(
                err.errno,
                f"could not write the checkpoint {path} ({'disk full: ' if full else ''}{err.strerror or err}); "
                "the previous checkpoint is unchanged, and the run resumes from it when started again",
            ) from err


def keep_previous(last: Path, previous: Path) -> None:
    """``previous`` becomes the checkpoint ``last`` holds now (a hard link; a copy where links are not
    supported), replaced atomically, so that at every moment one complete checkpoint exists."""
    tmp = previous.with_name(f".{previous.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        import shutil

        shutil.copyfile(last, tmp)
    os.replace(tmp, previous)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (empty, cut short, not a torch archive), or None.

    Reads the zip archive's directory only (at its end: a cut-short file has none), not the tensors."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"unreadable: {err}"
    if size == 0:
        return "empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"not a complete checkpoint ({size} bytes; {err})"
    if not any(name.endswith("data.pkl") for name in names):
        return f"not a torch checkpoint ({size} bytes, no data.pkl)"
    return None


def resume_checkpoint(run_dir: Path, set_aside: bool = True) -> Path | None:
    """The checkpoint a run resumes from: ``last.ckpt`` when it is complete, else ``previous.ckpt`` (the
    unusable ``last.ckpt`` named in the log and, with ``set_aside``, renamed ``last.ckpt.corrupt``); None when
    the run has none. Raises ``CorruptCheckpointError`` naming the file when neither is usable. With
    ``set_aside`` (one process of a run) it also removes what a killed write left (``.last.ckpt.*.tmp``)."""
    last, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    if set_aside:  # (global rank 0) the temp file of a write a kill cut short: as large as a checkpoint
        for tmp in last.parent.glob(".*.ckpt.*"):
            tmp.unlink(missing_ok=True)
    problem = checkpoint_problem(last) if last.exists() else "missing"
    if problem is None:
        return last
    fallback = checkpoint_problem(previous) if previous.exists() else "missing"
    if fallback is None:
        log.warning("checkpoint %s is %s: resuming from the previous checkpoint, %s", last, problem, previous)
        if set_aside and last.exists():
            os.replace(last, last.with_name(last.name + CORRUPT_SUFFIX))
        return previous
    if not last.exists() and not previous.exists():
        return None
    bad = last if last.exists() else previous
    raise CorruptCheckpointError(
        f"checkpoint {bad} is {checkpoint_problem(bad)}, and there is no usable earlier checkpoint "
        f"({previous.name}: {fallback}). Delete {bad} to train this run again from its start"
    )
