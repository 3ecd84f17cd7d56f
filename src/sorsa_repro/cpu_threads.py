"""CPU threads for training and evaluation on shared machines: as many as the cores this process may use,
and OpenMP threads that sleep, not spin, while they wait for a partner.

Measured on 2 cores (BENCHMARKS.md, ``python -m benchmarks.run --only cpu_contention``): with one
competing CPU-bound process, a training step of the offline model took 2.3x its quiet time under
OpenMP's default wait policy (a thread spins on a core while its partner is descheduled) and 1.6x with
``OMP_WAIT_POLICY=PASSIVE``, less than the 2x a fair share of the cores allows; quiet, PASSIVE costs a
few percent. Values the user set in the environment are kept. Call ``configure()`` before torch is
imported (OpenMP reads these once).
"""

from __future__ import annotations

import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota if one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure() -> dict[str, str]:
    """Set OMP_NUM_THREADS and OMP_WAIT_POLICY unless already set; returns what applies now."""
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
