"""The run folder and its result.json: the one place that reads and writes them.

A run folder (``results/<experiment>/<method>-r<rank>-s<seed>/``) holds::

    config.yaml          resolved Hydra config
    metrics.csv          one row per optimizer step (step, loss, ortho_penalty, lr, grad_norm, tokens_per_s)
    result.json          see below
    predictions/<benchmark>.jsonl
    spectral.csv         optional, from the spectral-analysis callback

result.json (every key optional until its stage has run)::

    {
      "schema": 1,
      "run": {"experiment", "method", "rank", "seed"},
      "config_hash": str,                # hash of the resolved training config (also in the folder name)
      "train": {"status": STATUSES, "steps", "final_loss", "trainable_params", "total_params",
                "wall_time_s", "fit_time_s", "init_time_s",     # summed over all attempts
                "peak_memory_mb", "resumed", "diverged", "divergence", "error"?,
                "attempts": [{"status": running | finished | interrupted | failed | killed, "started_at",
                              "start_step", "end_step", "init_time_s", "wall_time_s", ...}]},
      "evaluation": {"status": STATUSES, "benchmarks", "error"?},   # the evaluation stage
      "protocol": {"train": {...data/model/schedule identity...}},
      "eval": {<benchmark>: {"n", "limit", "max_new_tokens", "backend", "prompt_version",
                              "wall_time_s", "tokens_per_s",
                              "scores": {<grader>: {"version", "strict", "flexible",
                                                    "n_strict", "n_flexible"}}}},
      "provenance": {"git_commit", "git_dirty", "packages": {...}, "model", "data", "host"}
    }

Each stage (training, evaluation) owns its own status; only the stage that ran changes it. Writes are
atomic: a temp file in the same folder, then ``os.replace``. One process at a time works in a run
folder (``run_folder_lock``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
SCHEMA_VERSION = 1
STATUSES = ("running", "finished", "failed", "interrupted")
# a child process (the vLLM evaluation) working for the process that holds the folder's lock
LOCK_HELD_ENV = "SORSA_RUN_LOCK_HELD"
_HELD: set[str] = set()  # run folders whose lock this process holds (the lock is re-entrant)


class UnreadableResultError(ValueError):
    """A result.json that exists but cannot be read (cut short, edited by hand, not an object)."""


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` so that readers see either the old file or the whole new one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, so that no other thread sees it change)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 less the umask (0644 with umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the umask (0755 with umask 022)."""
    return 0o777 & ~current_umask()


def normal_modes(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything in it the modes of files and folders made with ``open``/``mkdir``.

    Writers that create through a temp file (``tempfile.mkstemp``/``mkdtemp``, safetensors' own save) leave
    0600/0700, which another user of a shared machine cannot read (a serving account, a colleague)."""
    folder = Path(folder)
    os.chmod(folder, dir_mode())
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, dir_mode())
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                os.chmod(path, file_mode())


def atomic_write(path: str | os.PathLike, write) -> None:
    """The one atomic file write: ``write(f)`` fills a temp file beside ``path`` (the same folder, so the same
    filesystem: the rename cannot turn into a copy), which is fsync'ed, given a normal file's mode and
    renamed over ``path``. Readers and a later run see the old file or the whole new one, never a part;
    when ``write`` fails (a full disk, a kill) the temp file is removed and ``path`` is unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power loss after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem syncs a folder
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temp folder beside ``path`` in the block; on success it replaces ``path``, its files and
    folders given normal modes (0644/0755 under umask 022: readable by others, as files written with
    ``open``).

    An interrupted block leaves only ``.<name>.*``, which ``remove_temp_files`` deletes on the next start.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        normal_modes(tmp)  # mkdtemp creates 0700, safetensors writes 0600
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def load_result(run_dir: str | os.PathLike) -> dict:
    """The run's result.json, or an empty dict when it has none yet; UnreadableResultError names the file."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return {}
    try:
        result = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableResultError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(result, dict):
        raise UnreadableResultError(f"{path} holds a {type(result).__name__}, not a JSON object")
    return result


def _deep_merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def update_result(run_dir: str | os.PathLike, patch: dict) -> dict:
    """Deep-merge ``patch`` into the run's result.json (atomically) and return the result."""
    result = _deep_merge(load_result(run_dir), patch)
    result["schema"] = SCHEMA_VERSION
    atomic_write_json(Path(run_dir) / RESULT_FILE, result)
    return result


def set_status(run_dir: str | os.PathLike, stage: str, status: str, error: str | None = None) -> dict:
    """Record the status of one stage (``train`` or ``evaluation``); other stages are left alone."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}; use one of {STATUSES}")
    block: dict[str, Any] = {"status": status, "error": error}
    return update_result(run_dir, {stage: block})


ERROR_FILE = "error.txt"


@contextmanager
def stage(run_dir: str | os.PathLike, name: str, enabled: bool = True) -> Iterator[None]:
    """Run one stage of a run folder: status ``running``, then ``finished``; on an exception ``failed``
    (``interrupted`` for Ctrl-C, SIGTERM or SystemExit, "interrupted by SIGINT" when a signal did it) with
    the error in result.json and the traceback in error.txt; a stage that finishes removes the error.txt an
    earlier attempt of it left. ``enabled=False`` (processes other than global rank 0) records nothing."""
    if not enabled:
        yield
        return
    set_status(run_dir, name, "running")
    try:
        yield
    except BaseException as err:
        import traceback

        interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
        message = failure_message(err)
        # the status first: on a full disk the small result.json may still fit after the failed write's
        # temp file is gone; neither write may hide the error that ended the stage
        for write in (
            lambda: set_status(run_dir, name, "interrupted" if interrupted else "failed", message),
            lambda: atomic_write_text(
                Path(run_dir) / ERROR_FILE, f"stage: {name}\n\n{traceback.format_exc()}"
            ),
        ):
            try:
                write()
            except Exception as record_err:  # noqa: BLE001
                logging.getLogger(__name__).error(
                    "could not record the %s stage's failure in %s: %s", name, run_dir, record_err
                )
        raise
    set_status(run_dir, name, "finished")
    _remove_stale_error(Path(run_dir) / ERROR_FILE, name)


def failure_message(err: BaseException) -> str:
    """What result.json says ended a stage: "interrupted by SIGINT" / "by SIGTERM" for a signal (Lightning
    turns Ctrl-C into ``SystemExit(1)``), else the exception's type and message."""
    from sorsa_repro.signals import received_signal

    if isinstance(err, KeyboardInterrupt | SystemExit):
        signal_name = received_signal() or ("SIGINT" if isinstance(err, KeyboardInterrupt) else None)
        if signal_name:
            return f"interrupted by {signal_name}"
    return f"{type(err).__name__}: {err}".strip()


def _remove_stale_error(path: Path, name: str) -> None:
    """error.txt of an earlier failed attempt of the stage ``name`` that has now finished."""
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    except OSError:
        return
    if first == f"stage: {name}":
        path.unlink(missing_ok=True)


@contextmanager
def run_folder_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock (``<run>/.lock``, an flock) for the block; RunFolderBusyError if taken.

    The lock dies with its process (kill -9 included), so no stale lock ever blocks a rerun. A child
    process started with ``LOCK_HELD_ENV`` set to the folder works under its parent's lock.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if os.environ.get(LOCK_HELD_ENV) == key or key in _HELD:  # the parent's lock, or ours already
        yield run_dir
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderBusyError(
                f"run folder {run_dir} is in use by {holder}; wait for it to end (or stop it) and run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield run_dir
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # releases the flock


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Temp files and folders that an interrupted atomic write left in the folder (``.<name>.*``)."""
    import shutil

    removed = []
    for path in Path(run_dir).glob(".*.*"):
        if path.name == LOCK_FILE:
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed
