"""How the entry points end on a scheduler's kill or Ctrl-C: SIGTERM as Ctrl-C, and which signal it was.

Lightning turns a Ctrl-C into ``SystemExit(1)``; the handlers here remember the signal, so that result.json
says "interrupted by SIGINT" (or SIGTERM) instead of "SystemExit: 1".
"""

from __future__ import annotations

import signal

_RECEIVED: list[str] = []  # the signals this process was interrupted by, in order


def received_signal() -> str | None:
    """The first interrupting signal this process received ("SIGINT", "SIGTERM"), or None."""
    return _RECEIVED[0] if _RECEIVED else None


def exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's kill, ``kill <pid>``) ends the job as Ctrl-C does: the run folder records
    ``interrupted`` and the process exits 143. (Lightning's own handler alone would stop at the next batch
    and exit 0.) Ctrl-C still raises KeyboardInterrupt; both are remembered (``received_signal``)."""

    def on_sigterm(signum, frame):
        _RECEIVED.append(signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    def on_sigint(signum, frame):
        _RECEIVED.append(signal.Signals(signum).name)
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as Python's own handler

    signal.signal(signal.SIGTERM, on_sigterm)
    # a process started with SIGINT ignored (a background job of a shell without job control) keeps it so
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
