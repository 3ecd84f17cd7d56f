"""How the entry points end on a scheduler's kill: SIGTERM as Ctrl-C."""

from __future__ import annotations


def exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's kill, ``kill <pid>``) ends the job as Ctrl-C does: the run folder records
    ``interrupted`` and the process exits 143. (Lightning's own handler alone would stop at the next batch
    and exit 0.)"""
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
