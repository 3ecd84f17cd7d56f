"""Progress lines for long phases without a bar (sorsa_repro/progress.py): throttled, with the time left."""

from __future__ import annotations

import logging

from sorsa_repro.progress import Progress


def test_progress_lines_are_throttled_and_estimate_the_time_left():

    now = [0.0]
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test_progress")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)
    progress = Progress("SVD init", 200, "matrices", log=log, every_s=10, clock=lambda: now[0])
    for _ in range(200):
        now[0] += 0.3  # 60 s in all: a line every ~10 s, none at the very start
        progress.update()
    progress.close()
    assert len(records) == 6 and records[0] == "SVD init: 34/200 matrices (17%), 10 s, ~50 s left"
    assert records[-1] == "SVD init: done in 60 s"
    quick = Progress("quick", 5, log=log, clock=lambda: now[0])
    quick.update(5)
    quick.close()
    assert len(records) == 6  # a phase shorter than the interval prints nothing
