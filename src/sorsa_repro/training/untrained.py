"""The untrained base model's run (``method=base``): no optimizer step, its held-out loss at step 0 in
metrics.csv and result.json, and the experiment's protocol block, so that it stands in every table as the
floor of the runs it is compared with. The training task exports it and evaluation reads it like any run."""

from __future__ import annotations

import time

from sorsa_repro.results import update_result
from sorsa_repro.training.heldout import heldout_loss, heldout_set
from sorsa_repro.training.record import fit_statistics, start_record, write_metrics
from sorsa_repro.training.resources import peak_memory_mb


def record_untrained(prepared, model, dtype: str, counts: dict, started: float, memory_scope: str) -> None:
    cfg, run_dir = prepared.cfg, prepared.run_dir
    batches = heldout_set(cfg, prepared.data).batches
    measured = time.perf_counter()
    loss = heldout_loss(model, batches) if batches else None
    heldout_s = time.perf_counter() - measured
    write_metrics(run_dir / "metrics.csv", [{"step": 0, "heldout_loss": loss}])
    # its protocol is the experiment's (the budget the trained runs share); its own train block: 0 steps
    record = start_record(cfg, prepared, {**counts, "lr": None, "ortho": None}, dtype, 1)
    update_result(run_dir, {**record, "train": {**record["train"], "total_steps": 0}})
    attempt = {
        "start_step": 0,
        "end_step": 0,
        "init_time_s": counts["init_time_s"],
        "fit_time_s": round(time.perf_counter() - started, 2),
        "heldout_time_s": round(heldout_s, 2),
        "peak_memory_mb": peak_memory_mb(),
    }
    update_result(run_dir, {"train": fit_statistics(run_dir, attempt, memory_scope)})
