"""What the held-out loss costs a training job, read from finished runs' own timings (result.json).

    python -m benchmarks.heldout_cost reference_runs/mini       # or any <results_dir>/<experiment>
    python -m benchmarks.heldout_cost reference_runs/mini_lr

Per run: ``train.heldout_time_s`` (the forward passes over the held-out rows, timed around them inside the
same process) against the rest of the job's training wall time (``train.wall_time_s`` minus it: model load,
adapter init, the optimizer steps, spectral metrics, export). Both come from the same process on the same
machine at the same moment, so the ratio holds under load that a separate timing would not.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks.common import table


def costs(exp_dir: Path) -> list[dict]:
    rows = []
    for result_file in sorted(exp_dir.glob("*/result.json")):
        train = json.loads(result_file.read_text()).get("train", {})
        held, wall = train.get("heldout_time_s"), train.get("wall_time_s")
        if train.get("status") != "finished" or not held or not wall or not train.get("steps"):
            continue  # the base model's run has no training to compare with
        rest = wall - held
        rows.append(
            {"run": result_file.parent.name, "heldout_s": held, "training_s": round(rest, 1),
             "ratio": round(held / rest, 3), "measured_at": ",".join(map(str, train.get("heldout_steps", [])))}
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (sys.argv[1:] if argv is None else argv)] or [Path("reference_runs/mini")]
    for folder in folders:
        rows = costs(folder)
        print(f"\n## held-out loss cost: {folder} ({len(rows)} runs)\n")
        if not rows:
            print("no finished training runs with held-out timings")
            continue
        print(table(rows, ["run", "heldout_s", "training_s", "ratio", "measured_at"]))
        ratios = [r["ratio"] for r in rows]
        print(f"\nratio held-out / rest of training: median {statistics.median(ratios):.3f}, "
              f"max {max(ratios):.3f} over {len(rows)} runs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
