"""``python -m sorsa_repro.evaluation.worker <config.json>``: the evaluation process a training job starts.

vLLM runs in its own process, which frees its memory on exit. The parent writes the ``EvalConfig`` as JSON
 and this process reads it back: no command-line round trip of every option.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from sorsa_repro import cpu_threads
    from sorsa_repro.signals import exit_on_sigterm

    cpu_threads.configure()  # before torch is imported
    exit_on_sigterm()
    from sorsa_repro.console import configure_console
    from sorsa_repro.evaluation.run import evaluate

    (path,) = sys.argv[1:] if argv is None else argv
    path = Path(path)
    # as a Hydra job logs: to the console and to evaluate.log beside the config
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(path.parent / "evaluate.log")],
    )
    configure_console()
    evaluate(json.loads(path.read_text()))


if __name__ == "__main__":  # vLLM spawns processes that re-import this module
    main()
