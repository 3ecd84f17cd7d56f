"""Runs never lose or corrupt data: the reproductions of issue "Runs never lose or corrupt data", one test
each (tiny model, a few steps). Grading under load (item 8) is tested in test_graders.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sorsa_repro.results import RunFolderBusyError, UnreadableResultError, load_result, run_folder_lock
from sorsa_repro.train import run_job
from sorsa_repro.training.task import prepare_training, run_training
from sorsa_repro.training.validate import RunFolderConflictError, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = [
    "experiment=mini",
    "model=tiny_random",
    "method=sorsa",
    "method.rank=4",
    "data.limit=16",
    "data.max_length=128",
    "train.batch_size=2",
    "train.global_batch_size=4",
    "train.max_steps=4",
    "train.checkpoint_every=2",
    "train.spectral_every=0",
    "evaluate.benchmarks=[synthetic]",
    "evaluate.limit=3",
    "evaluate.max_new_tokens=8",
    "evaluate.backend=hf",
]


def cfg_for(results_dir: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, f"results_dir={results_dir}", *extra])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock file aside) and the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A trained and evaluated run folder (copy it before changing anything)."""
    results = tmp_path_factory.mktemp("finished")
    run_job(cfg_for(results))
    (run_dir,) = (results / "mini").iterdir()
    result = load_result(run_dir)
    assert result["train"]["status"] == "finished" and result["evaluation"]["status"] == "finished"
    return run_dir


def copy_run(finished: Path, results: Path) -> Path:
    target = results / "mini" / finished.name
    shutil.copytree(finished, target)
    return target


# ---- 1. a bad command deletes a finished run


def test_bad_command_leaves_a_finished_run_untouched(tmp_path, finished, monkeypatch):
    run_dir = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SORSA_DATA_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match="gsm8k train data not found"):
        run_job(cfg_for(tmp_path, "data=gsm8k", "evaluate.benchmarks=[]"))
    assert snapshot(run_dir) == before
    assert [p.name for p in (tmp_path / "mini").iterdir()] == [run_dir.name]  # nothing else was written


def test_configs_that_differ_get_their_own_folders(tmp_path):
    folders = {cfg_for(tmp_path, f"method.lr={lr}").run_dir for lr in (1e-4, 2e-4)}
    folders |= {cfg_for(tmp_path, "data.limit=12").run_dir, cfg_for(tmp_path).run_dir}
    assert len(folders) == 4
    # evaluation and checkpointing settings do not change what is trained: the same run
    assert (
        cfg_for(tmp_path, "evaluate.limit=5", "train.checkpoint_every=1").run_dir == cfg_for(tmp_path).run_dir
    )


def test_a_folder_holding_another_config_is_replaced_only_with_overwrite(tmp_path, finished):
    run_dir = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    other = cfg_for(tmp_path, "method.gamma=0.0", f"run_dir={run_dir}", "evaluate.benchmarks=[]")
    with pytest.raises(RunFolderConflictError, match="overwrite=true"):
        run_job(other)
    assert snapshot(run_dir) == before
    run_job(
        cfg_for(
            tmp_path, "method.gamma=0.0", f"run_dir={run_dir}", "evaluate.benchmarks=[]", "overwrite=true"
        )
    )
    result = load_result(run_dir)
    assert result["config_hash"] != load_result(finished)["config_hash"]
    assert result["train"]["status"] == "finished" and "eval" not in result  # the old predictions went too


# ---- 2. invalid commands and evaluation failures never mark a finished run failed


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("method.lr=-1", "must be > 0"),
        ("model.name=/no/such/model", "no/such/model"),
        ("evaluate.limit=0", "limit"),
    ],
)
def test_invalid_commands_never_touch_a_finished_run(tmp_path, finished, override, match):
    run_dir = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    with pytest.raises((ValueError, OSError), match=match):
        run_job(cfg_for(tmp_path, override, f"run_dir={run_dir}"))
    assert snapshot(run_dir) == before


def test_evaluation_failure_after_skipped_training_keeps_the_training_status(tmp_path, finished):
    run_dir = copy_run(finished, tmp_path)
    shutil.rmtree(run_dir / "merged")  # as in a fresh clone: weights are not committed
    before = snapshot(run_dir)
    with pytest.raises(FileNotFoundError, match="no merged model"):
        run_job(cfg_for(tmp_path, "evaluate.limit=4"))
    assert snapshot(run_dir) == before  # a missing export is found before anything is written

    def broken(*args, **kwargs):
        raise RuntimeError("generation crashed")

    shutil.copytree(finished / "merged", run_dir / "merged")
    with pytest.MonkeyPatch.context() as m:
        m.setattr("sorsa_repro.evaluation.run.make_backend", broken)
        with pytest.raises(RuntimeError, match="generation crashed"):
            run_job(cfg_for(tmp_path, "evaluate.limit=4"))  # one more problem to generate
    result = load_result(run_dir)
    assert result["train"] == load_result(finished)["train"]  # only the stage that ran changed its status
    assert (
        result["evaluation"]["status"] == "failed" and "generation crashed" in result["evaluation"]["error"]
    )


# ---- 3. evaluation options are validated before training


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("evaluate.benchmarks=[nosuch]", "unknown benchmark"),
        ("evaluate.backend=nonsense", "unknown backend"),
        ("evaluate.limit=0", "limit must be >= 1"),
    ],
)
def test_evaluation_options_fail_before_anything_is_trained(tmp_path, override, match, monkeypatch):
    monkeypatch.setattr("sorsa_repro.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    cfg = cfg_for(tmp_path, override)
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)  # what the sweep's pre-flight check runs for every job
    with pytest.raises(ValueError, match=match):
        run_job(cfg)
    assert not (tmp_path / "mini").exists()


# ---- 5. re-entering a finished fit keeps its statistics; resumed only after a real resume


def test_reentered_fit_keeps_its_statistics(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, "evaluate.benchmarks=[]")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill during the export, after the fit ended

    monkeypatch.setattr("sorsa_repro.training.task._export", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    run_dir = Path(cfg.run_dir)
    first = load_result(run_dir)["train"]
    assert first["status"] == "interrupted" and first["final_loss"] is not None
    monkeypatch.undo()
    run_training(cfg)
    again = load_result(run_dir)["train"]
    assert again["status"] == "finished" and again["final_loss"] == first["final_loss"]
    assert again["steps"] == 4 and not again["resumed"] and len(again["attempts"]) == 2
    assert again["fit_time_s"] >= first["fit_time_s"] and again["peak_memory_mb"] >= first["peak_memory_mb"]
    assert (run_dir / "merged" / "config.json").exists()


def test_resumed_is_true_only_after_continuing_from_a_checkpoint(tmp_path, monkeypatch):
    from sorsa_repro.training.module import FineTuneModule

    fresh = cfg_for(tmp_path / "fresh", "evaluate.benchmarks=[]")
    assert load_result(run_training(fresh))["train"]["resumed"] is False
    original = FineTuneModule.on_train_batch_end

    def die_after_step_3(self, *args):
        if self.trainer.global_step == 3:
            raise RuntimeError("killed")
        return original(self, *args)

    cfg = cfg_for(tmp_path / "resumed", "evaluate.benchmarks=[]")
    monkeypatch.setattr(FineTuneModule, "on_train_batch_end", die_after_step_3, raising=False)
    with pytest.raises(RuntimeError, match="killed"):
        run_training(cfg)
    assert load_result(cfg.run_dir)["train"]["status"] == "failed"
    monkeypatch.undo()
    train = load_result(run_training(cfg))["train"]
    # the failed attempt is recorded too (it trained steps 1-3; the resume starts from its step-2 checkpoint)
    assert train["resumed"] is True and [(a["start_step"], a["end_step"]) for a in train["attempts"]] == [
        (0, 3),
        (2, 4),
    ]
    assert [a["status"] for a in train["attempts"]] == ["failed", "finished"]


# ---- 6. one process per run folder


HOLD_LOCK = """
import sys, time
from sorsa_repro.results import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_a_run_folder_is_refused(tmp_path):
    cfg = cfg_for(tmp_path, "evaluate.benchmarks=[]")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, cfg.run_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match=f"in use by pid {holder.pid}"):
            run_training(cfg)
        assert not (Path(cfg.run_dir) / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    run_training(cfg)  # the lock died with its process
    rows = (Path(cfg.run_dir) / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]  # one row per step: nobody else wrote
    with run_folder_lock(cfg.run_dir), run_folder_lock(cfg.run_dir):  # re-entrant in one process
        pass


# ---- 7. an unreadable result.json is named, and reporting goes on


def test_unreadable_result_json_is_named_and_skipped(tmp_path, finished):
    from sorsa_repro.reporting import load_experiment

    good = copy_run(finished, tmp_path)
    bad = tmp_path / "mini" / "lora-r4-s0-0123abcd"
    shutil.copytree(finished, bad)
    (bad / "result.json").write_text((bad / "result.json").read_text()[:100])  # cut short
    with pytest.warns(UserWarning, match="lora-r4-s0-0123abcd"):
        summary = load_experiment(tmp_path, "mini")
    assert [r.name for r in summary.ok_runs] == [good.name]
    assert any(str(bad / "result.json") in note for note in summary.notes)
    with pytest.raises(UnreadableResultError, match=str(bad / "result.json")):
        validate_config(cfg_for(tmp_path, f"run_dir={bad}"))


# ---- 9. Ctrl-C and SIGTERM record "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_says_so(tmp_path, sig):
    args = [
        *TINY,
        f"results_dir={tmp_path}",
        "train.max_steps=400",
        "data.limit=400",
        "evaluate.benchmarks=[]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # as from a terminal: a shell without job control starts background jobs (a CI runner's `make test &`)
    # with SIGINT ignored, which the child would inherit and Ctrl-C would never reach it
    proc = subprocess.Popen([sys.executable, "-m", "sorsa_repro.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 300
    while not list(tmp_path.glob("mini/*/metrics.csv")) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0, err[-2000:]
    (run_dir,) = (tmp_path / "mini").iterdir()
    train = load_result(run_dir)["train"]
    assert train["status"] == "interrupted", err[-2000:]
    assert train["error"] == f"interrupted by {sig.name}"  # not Lightning's "SystemExit: 1"
    assert "stage: train" in (run_dir / "error.txt").read_text()


# ---- 10. a killed export leaves nothing behind; exports are readable


def test_half_written_exports_are_removed_and_exports_are_readable(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, "evaluate.benchmarks=[]")
    original = __import__("sorsa_repro.training.task", fromlist=["_export"])._export

    def die_while_writing(model, tokenizer, cfg, run_dir, method):
        stale = run_dir / ".merged.abc123"
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("sorsa_repro.training.task._export", die_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    run_dir = Path(cfg.run_dir)
    assert (run_dir / ".merged.abc123").exists()
    monkeypatch.setattr("sorsa_repro.training.task._export", original)
    run_training(cfg)
    assert not list(run_dir.glob(".merged.*"))
    for export in ("merged", "adapter"):
        assert stat.S_IMODE((run_dir / export).stat().st_mode) == 0o755


# ---- 11. data errors say where


def write_gsm8k(folder: Path, lines: list[str]) -> Path:
    (folder / "gsm8k").mkdir(parents=True)
    (folder / "gsm8k" / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"question": "q", "answer": "a #### 1"}', '{"question": "q\tx", "answer": bad}'], r"train.jsonl:2: invalid JSON"),
        (['{"question": "q", "answer": "a #### 1"}', '{"question": "q"}'], r"train.jsonl:2: row has no 'answer' field \(fields: question\)"),
        (['{"question": "q", "answer": "no final line"}'], r"train.jsonl:1: GSM8K answer has no '#### N'"),
        ([], r"train.jsonl: no gsm8k train rows"),
    ],
)  # fmt: skip
def test_data_errors_name_the_file_and_line(tmp_path, lines, match, monkeypatch):
    data = write_gsm8k(tmp_path / "data", lines)
    monkeypatch.setattr("sorsa_repro.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    cfg = cfg_for(tmp_path, "data=gsm8k", f"+data.data_dir={data}", "evaluate.benchmarks=[]")
    with pytest.raises(ValueError, match=match):
        prepare_training(cfg)
    assert not (tmp_path / "mini").exists()


# ---- 12. peak memory per run


PEAK_AFTER_RESET = """
import torch
from sorsa_repro.training.resources import peak_memory_mb, reset_peak_memory
assert reset_peak_memory() == "run"
big = torch.ones(300 * 2**20 // 4)  # 300 MiB, written
during = peak_memory_mb()
del big
reset_peak_memory()  # what a sweep does when its next run starts
print(during, peak_memory_mb())
"""


def test_peak_memory_is_per_run_not_per_process():
    # a fresh process, so that the 300 MiB cannot come from memory an earlier test freed but kept
    out = subprocess.run([sys.executable, "-c", PEAK_AFTER_RESET], capture_output=True, text=True, check=True)
    during, next_run = map(float, out.stdout.split())
    assert during - next_run > 250, (during, next_run)


# ---- 13. a config rejected after Hydra starts writes nothing


@pytest.mark.parametrize("override", ["method.rank=999", "method.lr=0", "model.name=/no/such/model"])
def test_rejected_config_writes_no_run_folder(tmp_path, override):
    args = [*TINY, f"results_dir={tmp_path}", override]
    proc = subprocess.run([sys.executable, "-m", "sorsa_repro.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert not (tmp_path / "mini").exists(), list(tmp_path.rglob("*"))
