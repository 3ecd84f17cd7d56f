"""One training command as a new user types it, on their own data, with W&B (offline) and an evaluation: where
the run goes and why, what the console shows while it runs, what reaches W&B, the lm-eval results file and the
exports' model cards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sorsa_repro.evaluation.lm_eval_format import LM_EVAL_FILE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """(run folder, console) of `sorsa-train experiment=mini data=custom data.path=my_data.jsonl logger=wandb`
    on the tiny model, with W&B offline."""
    tmp = tmp_path_factory.mktemp("user")
    data = tmp / "my_data.jsonl"
    rows = [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}. The answer is: {2 * i}"}
        for i in range(50)  # mini trains on 32 and holds out the next 12
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["experiment=mini", "model=tiny_random", "method=lora", "method.rank=4", "data=custom",
            f"data.path={data}", "data.fields.query=question", "data.fields.response=answer", "data.max_length=96",
            "train.batch_size=2", "train.global_batch_size=4", "train.max_steps=2", "train.spectral_every=0",
            "evaluate.benchmarks=[synthetic]", "evaluate.limit=3", "evaluate.max_new_tokens=4", "evaluate.backend=hf",
            "logger=wandb", f"results_dir={tmp / 'results'}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "SORSA_VERBOSE": "0", "PYTHONUNBUFFERED": "1"}
    for key in ("WANDB_API_KEY", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "sorsa_repro.train", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    folders = list((tmp / "results").glob("*/*/result.json"))
    assert len(folders) == 1, folders
    return folders[0].parent, proc.stdout


# ---- 6. your own data: its own experiment name, and how many rows are used


@pytest.mark.slow
def test_own_data_gets_its_own_experiment_and_says_how_many_rows_it_uses(user_run):
    run_dir, console = user_run
    assert run_dir.parent.name == "mini-my_data"  # not results/mini/, whose report would refuse the folder
    result = json.loads((run_dir / "result.json").read_text())
    assert result["run"]["experiment"] == "mini-my_data"
    assert result["protocol"]["train"]["examples"] == 32
    assert (
        f"data: the first 32 examples of {run_dir.parents[2] / 'my_data.jsonl'} of its 50 rows (data.limit=32, set "
        "by experiment=mini; data.limit=null trains on all of them)"
    ) in console
    assert "experiment_name=mini-my_data" in console


# ---- 7. the console while it runs


@pytest.mark.slow
def test_the_training_bar_is_drawn_once_and_the_exports_are_announced(user_run):
    _, console = user_run
    parts = [p for line in console.splitlines() for p in line.split("\r") if p.strip()]
    # Lightning's bar drew an empty `Training: 0/?` twice, then counted micro-batches past its total (`3/?`)
    assert not any("/?" in p for p in parts)
    bars = [p for p in parts if p.startswith("Training:")]
    assert bars[0].startswith("Training:   0%") and "| 0/2 [" in bars[0]
    assert sum(p.startswith("Training:   0%") for p in parts) == 1 and "| 2/2 [" in bars[-1]
    assert (
        "step 2: training done; writing the checkpoint (unless written at this step) and adapter/, merged/"
        in console
    )
    assert "exports written in" in console and "(adapter/ " in console


# ---- 4. W&B: the scores and the predictions reach the run, which finishes before the summary


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (W&B's LevelDB-style log: a 7-byte file
    header, then 32 KiB blocks of records, each with a 7-byte header: crc, length, type full/first/middle/last)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks, pending = 7, [], b""
    while pos + 7 <= len(data):
        space = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if space >= 7 else (0, 0, 0)
        if kind == 0:  # the padding at a block's end
            pos += space
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            chunks.append(pending)
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


@pytest.mark.slow
def test_wandb_offline_run_holds_the_scores_and_a_predictions_table(user_run):
    run_dir, console = user_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log_file,) = offline.glob("run-*.wandb")
    summary = {}
    for record in wandb_records(log_file):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    scores = json.loads((run_dir / "result.json").read_text())["eval"]["synthetic"]["scores"]["numeric"]
    assert summary["eval/synthetic/numeric/strict"] == scores["strict"]
    assert summary["eval/synthetic/numeric/flexible"] == scores["flexible"]
    assert summary["eval/synthetic/n"] == 3
    (table,) = (offline / "files" / "media" / "table" / "eval" / "synthetic").glob("predictions_*.table.json")
    content = json.loads(table.read_text())
    assert (
        len(content["data"]) == 3
        and "numeric/strict" in content["columns"]
        and "completion" in content["columns"]
    )
    # the run is finished before the command's last lines: W&B's footer, then the run's summary
    lines = console.splitlines()
    summary_at = max(i for i, line in enumerate(lines) if line.startswith(f"run {run_dir}:"))
    wandb_at = [i for i, line in enumerate(lines) if line.startswith("wandb:")]
    assert wandb_at and max(wandb_at) < summary_at
    assert all(line.startswith("|") for line in lines[summary_at + 1 :])


# ---- 10. lm-evaluation-harness's results schema beside result.json


@pytest.mark.slow
def test_an_lm_eval_results_file_beside_result_json(user_run):
    run_dir, _ = user_run
    lm = json.loads((run_dir / LM_EVAL_FILE).read_text())
    entry = json.loads((run_dir / "result.json").read_text())["eval"]["synthetic"]
    numeric = entry["scores"]["numeric"]
    results = lm["results"]["synthetic"]
    assert results["exact_match,strict-match"] == numeric["strict"]
    assert results["exact_match,flexible-extract"] == numeric["flexible"]
    assert results["exact_match_numeric,strict-match"] == numeric["strict"]
    assert lm["n-samples"]["synthetic"] == {"original": 3, "effective": 3}
    assert lm["configs"]["synthetic"]["generation_kwargs"]["max_gen_toks"] == 4
    assert lm["configs"]["synthetic"]["num_fewshot"] == 0 and lm["n-shot"]["synthetic"] == 0


# ---- 3. model cards, written after training and again with the scores


@pytest.mark.slow
def test_every_export_has_a_model_card_with_the_scores(user_run):
    run_dir, _ = user_run
    for export in ("adapter", "merged"):
        text = (run_dir / export / "README.md").read_text()
        meta = yaml.safe_load(text.split("---")[1])
        assert meta["base_model"] == "tiny-random" and "sorsa-repro" in meta["tags"]
        assert "| synthetic | numeric | strict |" in text and "lora, rank 4" in text
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-random"
