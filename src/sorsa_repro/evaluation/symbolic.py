"""The ``math_verify`` grader: symbolic equivalence with the ``math-verify`` library, bounded by CPU time.

Each check is bounded by CPU time, not wall time, so that verdicts do not depend on machine load:
``MATH_VERIFY_TIMEOUT_S`` CPU seconds, and a check that runs out is retried once with
``MATH_VERIFY_RETRY_TIMEOUT_S``; one that times out again raises ``GraderTimeout`` (the caller counts it
wrong and reports it). In the main thread the limit is a SIGPROF timer (``ITIMER_PROF``: this process's CPU
time, all its threads); elsewhere the check runs in a worker process whose CPU time is read from ``/proc``
(wall time where there is no ``/proc``). Either way a wall-clock safety net of ``WALL_SAFETY_FACTOR`` times
the limit stops a stuck check.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

MATH_VERIFY_TIMEOUT_S = 5.0  # CPU seconds per check (parsing both sides and comparing)
MATH_VERIFY_RETRY_TIMEOUT_S = 60.0  # CPU seconds for the one retry of a check that ran out of time
WALL_SAFETY_FACTOR = 20.0  # a check is also stopped after this many times its CPU limit in wall seconds


class GraderTimeout(BaseException):
    """Raised when a grader runs out of time. BaseException, so that math-verify's
    ``except Exception`` handlers cannot swallow it."""


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _as_latex(s: str) -> str:
    # math-verify reads maths inside $...$ or \boxed{}; wrap a bare answer so that e.g. \sqrt{2} parses
    return s if _UNESCAPED_DOLLAR.search(s) or "\\boxed" in s else f"${s}$"


def _math_verify_check(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    # timeouts off: math-verify's own ones use signals, which work only in the main thread;
    # _math_verify_equal bounds the whole check instead
    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
    parsed = parse(_as_latex(answer), parsing_timeout=None)
    return bool(gold_parsed and parsed and verify(gold_parsed, parsed, timeout_seconds=None))


def _math_verify_limited(answer: str, gold: str, cpu_seconds: float) -> bool:
    if _cpu_timer_usable():
        import math_verify  # noqa: F401  (outside the time limit: the first import is slow)

        return _call_with_cpu_limit(lambda: _math_verify_check(answer, gold), cpu_seconds)
    return _worker.check(answer, gold, cpu_seconds)


def _math_verify_equal(answer: str, gold: str) -> bool:
    """math-verify's verdict; GraderTimeout only when the check ran out of time twice."""
    try:
        return _math_verify_limited(answer, gold, MATH_VERIFY_TIMEOUT_S)
    except GraderTimeout:
        logger.info(
            "math_verify ran out of %.1f s CPU on %.80r (gold %.80r); retrying with %.1f s",
            MATH_VERIFY_TIMEOUT_S, answer, gold, MATH_VERIFY_RETRY_TIMEOUT_S,
        )  # fmt: skip
    return _math_verify_limited(answer, gold, MATH_VERIFY_RETRY_TIMEOUT_S)


class _HideTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once that we passed timeout None; we enforce our own limit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_HideTimeoutDisabledNotice())


def _cpu_timer_usable() -> bool:
    """SIGPROF can interrupt only the main thread; a profiling timer someone else has set is left alone
    (and so is a SIGPROF handler set outside Python, which could not be put back)."""
    return (
        threading.current_thread() is threading.main_thread()
        and hasattr(signal, "setitimer")
        and signal.getitimer(signal.ITIMER_PROF)[0] == 0
        and signal.getsignal(signal.SIGPROF) is not None
    )


def _call_with_cpu_limit(fn: Callable[[], bool], cpu_seconds: float) -> bool:
    """``fn()``, or GraderTimeout once this process has used ``cpu_seconds`` of CPU time (ITIMER_PROF).

    CPython checks for signals even inside big-int maths. The timer fires again every 0.5 s CPU should
    some code swallow the first. A wall-clock safety net (ITIMER_REAL, WALL_SAFETY_FACTOR times the
    limit) is added when no one else uses that timer. Previous handlers are put back, timers first.
    """
    armed = True

    def on_timeout(signum, frame):
        if armed:
            raise GraderTimeout

    wall_net = signal.getitimer(signal.ITIMER_REAL)[0] == 0 and signal.getsignal(signal.SIGALRM) is not None
    previous_prof = signal.signal(signal.SIGPROF, on_timeout)
    previous_alarm = signal.signal(signal.SIGALRM, on_timeout) if wall_net else None
    try:
        signal.setitimer(signal.ITIMER_PROF, cpu_seconds, 0.5)
        if wall_net:
            signal.setitimer(signal.ITIMER_REAL, cpu_seconds * WALL_SAFETY_FACTOR, 0.5)
        try:
            return fn()
        finally:
            armed = False
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        if wall_net:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGPROF, previous_prof)


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a process from /proc/<pid>/stat, or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) is index 0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 utime, 15 stime
    except (OSError, ValueError, IndexError):
        return None


def _serve_checks(target: str = "sorsa_repro.evaluation.symbolic:_math_verify_check") -> None:
    """Body of the worker process: one JSON ``[answer, gold]`` per stdin line, one verdict per stdout line."""
    import math_verify  # noqa: F401

    module, _, name = target.partition(":")
    check = getattr(importlib.import_module(module), name)
    out, sys.stdout = sys.stdout, sys.stderr  # keep stray prints off the reply channel
    print('"ready"', file=out, flush=True)
    for line in sys.stdin:
        try:
            reply = ["ok", bool(check(*json.loads(line)))]
        except Exception as exc:
            reply = ["error", repr(exc)]
        print(json.dumps(reply), file=out, flush=True)


class _VerifyWorker:
    """A child process that runs math-verify for callers off the main thread.

    There no signal can interrupt the work, and a thread cannot be stopped (sympy may even hold the
    GIL for ever inside one huge integer power), so the check runs in a process that is killed when
    it has used up its CPU time (read from /proc, polled every POLL_S; wall time where there is no
    /proc), or WALL_SAFETY_FACTOR times that in wall time; the next call starts a new one. One worker,
    shared under a lock. A plain subprocess, not multiprocessing: no re-import of the caller's
    __main__, allowed in daemon processes. ``target`` names the check function (``module:name``).
    """

    START_CPU_S = 60.0  # start-up: Python and math-verify's imports
    START_TIMEOUT_S = 600.0  # wall-clock safety net for the start
    POLL_S = 0.05

    def __init__(self, target: str = "sorsa_repro.evaluation.symbolic:_math_verify_check") -> None:
        self.target = target
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def check(self, answer: str, gold: str, cpu_seconds: float) -> bool:
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                cpu_before = _cpu_seconds(self._proc.pid)
                self._proc.stdin.write(json.dumps([answer, gold]) + "\n")
                self._proc.stdin.flush()
                status, value = self._read(cpu_seconds, cpu_seconds * WALL_SAFETY_FACTOR, cpu_before)
            except BaseException:
                self._stop()
                raise
            if status != "ok":
                raise RuntimeError(f"math-verify worker: {value}")
            return value

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> None:
        self._stop()
        src = str(Path(__file__).resolve().parents[2])  # so the child imports this very package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        code = f"from sorsa_repro.evaluation.symbolic import _serve_checks; _serve_checks({self.target!r})"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        if self._read(self.START_CPU_S, self.START_TIMEOUT_S, 0.0) != "ready":
            raise RuntimeError("math-verify worker did not start")

    def _read(self, cpu_seconds: float, wall_seconds: float, cpu_before: float | None):
        """The next reply; GraderTimeout once the worker has used ``cpu_seconds`` of CPU since
        ``cpu_before`` (wall seconds when its CPU time cannot be read), or after ``wall_seconds``."""
        start = time.monotonic()
        while not select.select([self._proc.stdout], [], [], self.POLL_S)[0]:
            wall = time.monotonic() - start
            cpu_now = _cpu_seconds(self._proc.pid) if cpu_before is not None else None
            used = cpu_now - cpu_before if cpu_now is not None else wall
            if used > cpu_seconds or wall > wall_seconds:
                raise GraderTimeout
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("math-verify worker exited")
        return json.loads(line)

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._proc = None


_worker = _VerifyWorker()
