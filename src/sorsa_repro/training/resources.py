"""Per-run peak memory: reset when a run starts, read when it ends (several runs share a sweep's process).

GPU: torch's allocator peak. CPU: the process's peak resident set (VmHWM), which Linux resets when "5" is
written to /proc/self/clear_refs; where that is not allowed the value is the process-wide peak (ru_maxrss)
and ``peak_memory_scope`` says so.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def release_freed_memory() -> None:
    """Hand what earlier runs of this process left behind back to the system before a run starts: their
    objects held in reference cycles (a trainer and its module refer to each other: freed only by the cycle
    collector, which may not have run yet), and the heap pages glibc keeps after a free (``malloc_trim``).
    Otherwise a run after a full fine-tuning job in the same sweep process starts from that job's
    resident memory, and its peak is the leftover, not its own."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_memory() -> str:
    """Start a new peak (after ``release_freed_memory``); returns the scope the next ``peak_memory_mb``
    covers: "run" or "process"."""
    release_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return "run"
    try:
        _CLEAR_REFS.write_text("5")
        return "run"
    except OSError:
        return "process"


def peak_memory_mb() -> float:
    """Peak GPU memory allocated, or peak resident CPU memory, since the last reset (MiB)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        match = None
    kib = int(match.group(1)) if match else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)
