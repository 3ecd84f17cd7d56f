"""Progress lines for the long phases that have no bar (the SVD initialisation, transformers generation).

A ``Progress`` logs ``<what>: k/n <unit> (p%), t s, ~r s left`` at most every ``every_s`` seconds, so a phase
that ends quickly prints nothing and a long one prints a line every ten seconds or so, into the console and
the run's train.log alike (a bar would fill a log file with carriage returns).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

EVERY_S = 10.0


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "",
        log: logging.Logger | None = None,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.what, self.total, self.unit = what, total, unit
        self.log = log or logging.getLogger("sorsa_repro.progress")
        self.every_s, self.clock = every_s, clock
        self.start = self.last = clock()
        self.done = 0.0
        self.lines = 0

    def line(self, extra: str = "") -> str:
        elapsed = self.clock() - self.start
        shown = f"{self.done:g}" if float(self.done).is_integer() else f"{self.done:.1f}"
        text = f"{self.what}: {shown}"
        if self.total:
            text += (
                f"/{self.total}{' ' + self.unit if self.unit else ''} ({100 * self.done / self.total:.0f}%)"
            )
        elif self.unit:
            text += f" {self.unit}"
        text += f", {elapsed:.0f} s"
        if self.total and 0 < self.done < self.total:
            text += f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left"
        return text + (f", {extra}" if extra else "")

    def update(
        self, done: float | None = None, advance: float = 1, extra: str | Callable[[], str] = ""
    ) -> None:
        """Set (``done``) or advance the count; log a line when ``every_s`` passed since the last one."""
        self.done = self.done + advance if done is None else done
        now = self.clock()
        if now - self.last >= self.every_s and (not self.total or self.done < self.total):
            self.last = now
            self.lines += 1
            self.log.info(self.line(extra() if callable(extra) else extra))

    def close(self) -> None:
        """A last line with the total time, only when the phase printed progress lines."""
        if self.lines:
            self.log.info("%s: done in %.0f s", self.what, self.clock() - self.start)


@contextmanager
def counting_calls(cls: type, method: str, progress: Progress):
    """Advance ``progress`` on every call of ``cls.method`` while the block runs (peft's per-layer init, for
    one, runs inside ``get_peft_model``); a class without that method is left alone."""
    original = cls.__dict__.get(method)
    if original is None:
        yield progress
        return

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        progress.update()
        return result

    setattr(cls, method, counted)
    try:
        yield progress
    finally:
        setattr(cls, method, original)
        progress.close()


class PhaseTimes:
    """Times of consecutive phases, logged as one line: ``exports written in 9.8 s (adapter/ 0.4 s, ...)``."""

    def __init__(self, what: str, log: logging.Logger | None = None):
        self.what, self.log = what, log or logging.getLogger("sorsa_repro.progress")
        self.start, self.parts = time.perf_counter(), []

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        yield
        self.parts.append(f"{name} {time.perf_counter() - started:.1f} s")

    def close(self) -> None:
        if self.parts:
            total = time.perf_counter() - self.start
            self.log.info("%s in %.1f s (%s)", self.what, total, ", ".join(self.parts))
