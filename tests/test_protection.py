"""Nothing a user does loses a checkpoint or touches the reference: one test (or a few) per item of the issue
"atomic checkpoints across filesystems, a reference guard in every entry point, run paths confined, diverged
runs flagged" (tiny model, a few steps)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sorsa_repro.layout import ReferenceLocationError, is_reference_location
from sorsa_repro.results import load_result
from sorsa_repro.train import run_job
from sorsa_repro.training.task import run_training
from sorsa_repro.training.validate import validate_config
from tests.conftest import train_killed_after_step
from tests.test_run_safety import TINY as RUN_SAFETY_TINY

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = [*RUN_SAFETY_TINY[:-1], "evaluate.benchmarks=[]"]  # the same tiny run, training only
# the exports are not what these tests look at (and not part of the config hash): smaller, faster runs
NO_EXPORT = ["train.export_merged=false", "train.save_adapter=false"]


def cfg_for(results_dir: Path | str, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, f"results_dir={results_dir}", *extra])


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (folders too: an empty new one counts) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def fake_checkout(root: Path) -> Path:
    """A second clone of the project (not the one the package is installed from) with its committed reference."""
    (root / "paper_tables" / "mini").mkdir(parents=True)
    (root / "paper_tables" / "reference.yaml").write_text("{}\n")
    (root / "paper_tables" / "mini" / "main_table.md").write_text("committed\n")
    (root / "reference_runs" / "mini").mkdir(parents=True)
    return root


def losses(run_dir: Path) -> list[float]:
    rows = (Path(run_dir) / "metrics.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


def pythonpath_env(**extra) -> dict:
    """This checkout's sources first, whatever folder a subprocess runs in."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[float]:
    """The per-step losses of the TINY run trained in one go (checkpoint and export settings are not part of
    what is trained: every run of these tests that resumes must end on exactly these)."""
    run_dir = run_training(cfg_for(tmp_path_factory.mktemp("uninterrupted"), *NO_EXPORT))
    return losses(run_dir)


# ---- 1. the committed reference of any checkout is written only with update_reference=true


@pytest.mark.parametrize("where", ["results_dir=reference_runs", "run_dir=paper_tables/mini/my-run"])
def test_training_refuses_the_reference_of_the_checkout_it_runs_in(tmp_path, monkeypatch, where):
    clone = fake_checkout(tmp_path / "clone")
    monkeypatch.chdir(clone)  # relative paths: the checkout the command runs in, not the installed package's
    before = snapshot(clone)
    key, _, value = where.partition("=")
    extra = [] if key == "results_dir" else [where]
    cfg = cfg_for(value if key == "results_dir" else tmp_path / "results", *extra)
    with pytest.raises(ReferenceLocationError, match="committed reference.*update_reference=true"):
        validate_config(cfg)
    with pytest.raises(ReferenceLocationError):
        run_job(cfg)
    assert snapshot(clone) == before
    results = "reference_runs" if key == "results_dir" else tmp_path / "results"
    validate_config(cfg_for(results, *extra, "update_reference=true"))  # on purpose: allowed


def test_reference_folders_are_found_from_the_path_itself(tmp_path):
    clone = fake_checkout(tmp_path / "clone")
    assert is_reference_location(clone / "reference_runs" / "mini" / "run")
    assert is_reference_location(clone / "paper_tables" / "mini")
    assert not is_reference_location(clone / "paper_tables" / "local" / "mini")  # the user's own report
    assert not is_reference_location(clone / "results" / "mini")
    (tmp_path / "link").symlink_to(clone / "reference_runs")
    assert is_reference_location(tmp_path / "link" / "mini")
    assert not is_reference_location(tmp_path / "elsewhere" / "reference_runs")  # not in a checkout


def test_reports_refuse_the_reference_unless_asked(tmp_path):
    from sorsa_repro.reporting import cli

    clone = fake_checkout(tmp_path / "clone")
    before = snapshot(clone)
    argv = ["tables", "experiment=mini", f"results_dir={ROOT / 'reference_runs'}"]
    assert cli.main([*argv, f"out_dir={clone / 'paper_tables'}"]) == 2
    assert snapshot(clone) == before
    assert cli.main([*argv, f"out_dir={clone / 'paper_tables' / 'local'}"]) == 0  # the user's own folder
    assert cli.main([*argv, f"out_dir={clone / 'paper_tables'}", "update_reference=true"]) == 0
    assert (clone / "paper_tables" / "mini" / "main_table.md").read_text() != "committed\n"


def test_evaluation_refuses_a_reference_run_folder(tmp_path):
    from sorsa_repro.evaluation.run import evaluate

    clone = fake_checkout(tmp_path / "clone")
    run = clone / "reference_runs" / "mini" / "sorsa-r4-s0-0123abcd"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text("{}\n")
    before = snapshot(clone)
    cfg = {"run": str(run), "benchmarks": ["synthetic"], "limit": 1, "backend": "hf"}
    with pytest.raises(ReferenceLocationError, match="reference_runs"):
        evaluate(cfg)
    assert snapshot(clone) == before


def test_the_wandb_report_refuses_to_run_inside_the_reference(tmp_path, monkeypatch, capsys):
    from sorsa_repro.reporting import wandb_report

    clone = fake_checkout(tmp_path / "clone")
    monkeypatch.chdir(clone / "reference_runs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_report.main(["experiment=mini"]) == 2
    assert "committed reference" in capsys.readouterr().err


def test_replicate_protects_the_reference_of_another_checkout(tmp_path, monkeypatch):
    from sorsa_repro.replicate import main as replicate_main

    calls = []
    monkeypatch.setattr("sorsa_repro.replicate.subprocess.call", lambda cmd, env=None: calls.append(cmd) or 0)
    clone = fake_checkout(tmp_path / "clone")
    assert replicate_main(["scale=smoke", f"results_dir={clone / 'reference_runs'}"]) == 2 and not calls
    update = [
        "update_reference=true",
        f"results_dir={clone / 'reference_runs'}",
        f"out_dir={clone / 'paper_tables'}",
    ]
    assert replicate_main(["scale=smoke", *update]) == 0
    assert len(calls) >= 3 and all("update_reference=true" in cmd for cmd in calls)  # every stage is told


@pytest.mark.slow
def test_a_training_command_into_the_reference_writes_nothing(tmp_path):
    clone = fake_checkout(tmp_path / "clone")
    before = snapshot(clone)
    proc = subprocess.run([sys.executable, "-m", "sorsa_repro.train", *TINY, "results_dir=reference_runs"],
                          cwd=clone, env=pythonpath_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "committed reference" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(clone) == before  # not even Hydra's .hydra/ folder


# ---- 2. a kill while a checkpoint is written, the results on another filesystem than $TMPDIR


class Killed(BaseException):
    """Stands for kill -9: nothing of the process's own error handling may save the day."""


@pytest.fixture
def tmpdir_elsewhere(tmp_path, monkeypatch):
    """$TMPDIR on another filesystem than the run folders (a cluster's local /tmp, results on NFS): /dev/shm
    where it is one; otherwise a folder whose renames into the run folders fail with EXDEV, as they would
    across filesystems (the write path forced through a copy)."""
    here = tmp_path.stat().st_dev
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != here:
        other = Path(tempfile.mkdtemp(dir=shm))
    else:
        other = Path(tempfile.mkdtemp(dir=tmp_path))
        for name in ("rename", "replace"):
            real = getattr(os, name)

            def across(src, dst, *args, _real=real, **kwargs):
                if str(src).startswith(str(other)) and not str(dst).startswith(str(other)):
                    raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
                return _real(src, dst, *args, **kwargs)

            monkeypatch.setattr(os, name, across)
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    yield other
    shutil.rmtree(other, ignore_errors=True)


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, tmpdir_elsewhere, uninterrupted
):
    """The step-4 checkpoint is killed while it is written, wherever its bytes go: half-way through a copy
    onto last.ckpt (a save through $TMPDIR), or just before the rename of a complete temp file."""
    from lightning.pytorch import Trainer

    cfg = cfg_for(tmp_path, *NO_EXPORT)
    saving = []  # the global step of each checkpoint save
    real_save, real_copy = Trainer.save_checkpoint, shutil.copyfileobj
    real_sendfile, real_replace = shutil._fastcopy_sendfile, os.replace

    def save(self, *args, **kwargs):
        saving.append(self.global_step)
        return real_save(self, *args, **kwargs)

    def killing(target) -> bool:
        return saving[-1:] == [4] and str(target).endswith("last.ckpt")

    def copy(fsrc, fdst, *args, **kwargs):  # half of the file, then the kill
        if killing(getattr(fdst, "name", "")):
            data = fsrc.read()
            fdst.write(data[: len(data) // 2])
            fdst.flush()
            raise Killed
        return real_copy(fsrc, fdst, *args, **kwargs)

    def sendfile(fsrc, fdst):
        return copy(fsrc, fdst) if killing(fdst.name) else real_sendfile(fsrc, fdst)

    def replace(src, dst, *args, **kwargs):  # the kill just before the rename
        if killing(dst):
            raise Killed
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    monkeypatch.setattr(shutil, "_fastcopy_sendfile", sendfile)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        run_training(cfg)
    monkeypatch.undo()
    assert saving == [2, 4]
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 2  # whole, step 2
    (last.parent / ".last.ckpt.k9x.tmp").write_bytes(b"half")  # what kill -9 leaves (no except block runs)
    run_training(cfg)  # resumes from step 2
    left = sorted(p.name for p in last.parent.iterdir())
    assert left == ["last.ckpt", "previous.ckpt"]  # the killed write's temp file removed
    assert load_result(cfg.run_dir)["train"]["status"] == "finished"
    assert losses(cfg.run_dir) == pytest.approx(uninterrupted, rel=1e-6)


def test_checkpoints_are_renamed_into_place_never_copied(tmp_path, tmpdir_elsewhere, monkeypatch):
    """Every checkpoint byte is written beside last.ckpt: no copy from $TMPDIR (another filesystem)."""
    from sorsa_repro.training.checkpoints import AtomicCheckpointIO

    monkeypatch.setattr(shutil, "copyfileobj", lambda *a, **k: pytest.fail("a checkpoint was copied"))
    monkeypatch.setattr(shutil, "_fastcopy_sendfile", lambda *a, **k: pytest.fail("a checkpoint was copied"))
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 2
    assert torch.load(path.with_name("previous.ckpt"), weights_only=False)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "previous.ckpt"]
    assert not list(tmpdir_elsewhere.iterdir())


@pytest.mark.slow
def test_an_empty_checkpoint_is_named_and_the_previous_one_resumes(
    tmp_path, monkeypatch, caplog, uninterrupted
):
    cfg = cfg_for(tmp_path, *NO_EXPORT, "train.checkpoint_every=1")
    run_dir = train_killed_after_step(cfg, 3, monkeypatch)  # last.ckpt: step 3, previous.ckpt: step 2
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")  # what a kill during the old copy-based save left
    with caplog.at_level("WARNING"):
        run_training(cfg)
    assert f"checkpoint {last} is empty (0 bytes): resuming from the previous checkpoint" in caplog.text
    assert (run_dir / "checkpoints" / "last.ckpt.corrupt").stat().st_size == 0  # kept for a look, set aside
    train = load_result(run_dir)["train"]
    assert train["status"] == "finished" and train["attempts"][-1]["start_step"] == 2
    assert losses(run_dir) == pytest.approx(uninterrupted, rel=1e-6)


def test_a_cut_short_checkpoint_without_a_previous_one_is_named(tmp_path, monkeypatch):
    from sorsa_repro.training.checkpoints import CorruptCheckpointError

    cfg = cfg_for(tmp_path, *NO_EXPORT, "train.keep_previous_checkpoint=false")
    run_dir = train_killed_after_step(cfg, 3, monkeypatch)  # one checkpoint: step 2
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {last} is not a complete checkpoint"):
        run_training(cfg)
    assert load_result(run_dir)["train"]["status"] == "failed"


# ---- 3. a full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only: skipped elsewhere): ``(folder, remount)``, ``remount(size)`` gives it room."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'needs root'})")
    try:
        yield (
            mount,
            lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True),
        )
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_records_the_failure_and_leaves_no_partial_checkpoint(tiny_disk, uninterrupted):
    disk, remount = tiny_disk
    cfg = cfg_for(disk / "results", *NO_EXPORT)
    with pytest.raises(OSError, match="No space left on device|disk full"):
        run_training(cfg)
    run_dir = Path(cfg.run_dir)
    train = load_result(run_dir)["train"]
    assert train["status"] == "failed" and "disk full" in train["error"] and "last.ckpt" in train["error"]
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # no partial checkpoint under its name
    assert not [p.name for p in (run_dir / "checkpoints").iterdir()]  # and no temp file eating the space
    remount("32m")  # space freed: the same command trains the run
    run_training(cfg)
    assert load_result(run_dir)["train"]["status"] == "finished"
    assert losses(run_dir) == pytest.approx(uninterrupted, rel=1e-6)


def test_a_checkpoint_write_that_runs_out_of_space_keeps_the_old_one(tmp_path, monkeypatch):
    """Without a tmpfs: the write itself raises ENOSPC half-way."""
    from sorsa_repro.training import checkpoints

    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 2}, path)
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(OSError, match=f"could not write the checkpoint {path} \\(disk full"):
        io.save_checkpoint({"global_step": 4}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "previous.ckpt"]  # no temp left


# ---- 4. run paths stay inside results_dir


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("experiment_name=../escaped", "experiment_name='../escaped' becomes part of a folder name"),
        ("variant=/../../../y", "variant='/../../../y' becomes part of a folder name"),
        ("run_name=../../x", "run_name='../../x' becomes part of a folder name"),
        ("run_dir=''", "run_dir='': give a folder"),
        ("run_dir=/etc", "run_dir=/etc .* is an existing folder that holds no run"),
        ("run_dir=../../../../../../../../etc", "is an existing folder that holds no run"),
        ("results_dir=''", "results_dir='': give the folder"),
        ("results_dir=/", "results_dir='/': give the folder"),
    ],
)
def test_run_paths_cannot_escape_results_dir(tmp_path, monkeypatch, override, match):
    monkeypatch.setattr("sorsa_repro.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    cfg = cfg_for(tmp_path, override)
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)
    assert not any(tmp_path.iterdir())


def test_an_explicit_run_dir_takes_a_new_empty_or_run_folder(tmp_path):
    validate_config(cfg_for(tmp_path, f"run_dir={tmp_path / 'new'}"))
    (tmp_path / "empty").mkdir()
    validate_config(cfg_for(tmp_path, f"run_dir={tmp_path / 'empty'}"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="holds no run"):
        validate_config(cfg_for(tmp_path, f"run_dir={tmp_path / 'notes'}"))
    with pytest.raises(ValueError, match="is a file"):
        validate_config(cfg_for(tmp_path, f"run_dir={tmp_path / 'notes' / 'thesis.tex'}"))


# ---- 5. a diverged run is recorded and left out of the reports


def test_divergence_is_read_from_the_curve():
    from sorsa_repro.training.record import divergence

    def rows(loss, penalty=None):
        return [{"step": str(i + 1), "loss": str(v), "ortho_penalty": "" if penalty is None else str(penalty[i])}
                for i, v in enumerate(loss)]  # fmt: skip

    assert "loss rose from 0.925 (mean of the first 2 steps) to 10.9" in divergence(
        rows([0.95, 0.9, 3.0, 8.0, 10.8, 10.8, 10.9, 10.8])
    )
    assert "orthonormal penalty 7e+13 at step 3" in divergence(rows([1.0, 0.9, 0.8], [0.01, 0.02, 7e13]))
    assert divergence(rows([1.0, float("nan")])).startswith("non-finite loss nan at step 2")
    assert divergence(rows([1.0, 1.3, 0.9, 0.7])) is None  # noisy but learning
    for metrics in sorted((ROOT / "reference_runs").glob("*/*/metrics.csv")):  # every committed run: fine
        import csv

        with open(metrics, newline="") as f:
            assert divergence(list(csv.DictReader(f))) is None, metrics


@pytest.mark.slow
def test_a_diverged_run_is_flagged_and_left_out_of_the_reports(tmp_path):
    from sorsa_repro.reporting import load_experiment

    good = run_training(cfg_for(tmp_path, *NO_EXPORT))
    bad = run_training(cfg_for(tmp_path, *NO_EXPORT, "method.lr=1e4", "seed=1"))
    train = load_result(bad)["train"]
    assert train["status"] == "finished" and train["diverged"] is True, train
    assert train["divergence"] and load_result(good)["train"]["diverged"] is False
    with pytest.warns(UserWarning, match="training diverged"):
        summary = load_experiment(tmp_path, "mini")
    (run,) = [r for r in summary.runs if r.path == bad]
    assert run.status == f"training diverged ({train['divergence']})"
    assert any(bad.name in note and "training diverged" in note for note in summary.notes)


# ---- 6. exports are readable by others, as files written with open()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_get_a_normal_files_modes(tmp_path, umask):
    from safetensors.torch import save_file

    from sorsa_repro.results import atomic_dir

    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "merged") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors itself makes 0600
            (tmp / "sub").mkdir()
            (tmp / "sub" / "config.json").write_text("{}")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {
        "merged": 0o777 & ~umask,
        "merged/model.safetensors": 0o666 & ~umask,
        "merged/sub": 0o777 & ~umask,
        "merged/sub/config.json": 0o666 & ~umask,
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A trained SORSA run with its exports (copy it before changing anything)."""
    old = os.umask(0o022)
    try:
        return run_training(cfg_for(tmp_path_factory.mktemp("exported")))
    finally:
        os.umask(old)


def test_a_runs_exported_weights_are_readable_by_others(exported):
    weights = [*exported.glob("merged/*.safetensors"), *exported.glob("adapter*/*.safetensors")]
    assert {p.parent.name for p in weights} == {"merged", "adapter", "adapter_lora"}
    for path in weights:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ---- 7. every attempt recorded; Ctrl-C said as such; a finished run has no stale error.txt


@pytest.fixture
def signal_handlers(monkeypatch):
    """The entry points' handlers (``exit_on_sigterm``) for the test, the previous ones restored after."""
    from sorsa_repro import signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(signals, "_RECEIVED", [])
    # Python's own Ctrl-C handler first: pytest started in the background (nohup, a CI runner) inherits SIGINT
    # ignored, which exit_on_sigterm keeps on purpose, and the test's Ctrl-C would then do nothing
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals.exit_on_sigterm()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.slow
def test_every_attempt_is_recorded_and_a_resumed_run_ends_clean(tmp_path, monkeypatch, signal_handlers):
    from sorsa_repro.training.module import FineTuneModule

    cfg = cfg_for(tmp_path, *NO_EXPORT)
    original = FineTuneModule.on_train_batch_end

    def ctrl_c_after_step_2(self, *args):
        if self.trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C (the step-2 checkpoint is written)
        return original(self, *args)

    monkeypatch.setattr(FineTuneModule, "on_train_batch_end", ctrl_c_after_step_2, raising=False)
    with pytest.raises((SystemExit, KeyboardInterrupt)):  # Lightning turns Ctrl-C into SystemExit(1)
        run_training(cfg)
    monkeypatch.setattr(FineTuneModule, "on_train_batch_end", original, raising=False)
    run_dir = Path(cfg.run_dir)
    first = load_result(run_dir)["train"]
    assert first["status"] == "interrupted" and first["error"] == "interrupted by SIGINT"
    assert (run_dir / "error.txt").exists()
    run_training(cfg)
    train = load_result(run_dir)["train"]
    attempts = train["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "finished"]
    assert [(a["start_step"], a["end_step"]) for a in attempts] == [(0, 2), (2, 4)]
    assert attempts[0]["error"] == "interrupted by SIGINT" and all(a["init_time_s"] > 0 for a in attempts)
    assert train["wall_time_s"] == pytest.approx(sum(a["wall_time_s"] for a in attempts), abs=0.02)
    assert train["init_time_s"] == pytest.approx(sum(a["init_time_s"] for a in attempts), abs=0.02)
    assert train["status"] == "finished" and train["error"] is None and train["resumed"] is True
    assert not (run_dir / "error.txt").exists()  # the first attempt's, gone with the run finished


@pytest.mark.slow
def test_a_killed_attempt_is_recorded_by_the_next_one(tmp_path, monkeypatch):
    from sorsa_repro.training.module import FineTuneModule

    args = [*TINY, f"results_dir={tmp_path}", "train.max_steps=400", "data.limit=400", *NO_EXPORT]
    proc = subprocess.Popen([sys.executable, "-m", "sorsa_repro.train", *args], cwd=ROOT, env=pythonpath_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = list(tmp_path.glob("mini/*/metrics.csv"))
        if metrics and len(metrics[0].read_text().splitlines()) > 2:  # two steps done
            break
        time.sleep(0.5)
    proc.kill()  # kill -9: no handler runs
    proc.wait()
    (run_dir,) = (tmp_path / "mini").iterdir()
    assert load_result(run_dir)["train"]["attempts"][-1]["status"] == "running"

    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(FineTuneModule, "on_train_batch_end", interrupt, raising=False)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run_training(cfg_for(tmp_path, "train.max_steps=400", "data.limit=400", *NO_EXPORT))
    killed, interrupted = load_result(run_dir)["train"]["attempts"]
    assert killed["status"] == "killed" and killed["end_step"] >= 2 and killed["wall_time_s"] > 0
    assert killed["init_time_s"] > 0  # recorded when its fit started
    assert interrupted["status"] == "interrupted"


PEAK_AFTER_A_CYCLE = """
import gc, torch
from sorsa_repro.training.resources import peak_memory_mb, reset_peak_memory
gc.disable()  # as between two jobs of a sweep: the cycle collector has not run yet
class Job: pass
job = Job(); job.me = job  # a trainer and its module refer to each other
job.weights = [torch.ones(2**20) for _ in range(100)]  # 400 MiB
reset_peak_memory()
during = peak_memory_mb()
del job
reset_peak_memory()  # the next job of the sweep starts
print(during, peak_memory_mb())
"""


def test_peak_memory_leaves_out_what_earlier_jobs_left_behind():
    out = subprocess.run([sys.executable, "-c", PEAK_AFTER_A_CYCLE], capture_output=True, text=True, check=True,
                         env=pythonpath_env())  # fmt: skip
    during, next_job = map(float, out.stdout.split())
    assert during - next_job > 300, (during, next_job)


# ---- 8. smaller leaks


@pytest.mark.slow
@pytest.mark.parametrize(
    "override", ["method.rank=999", "method.lr=abc", "data.limit=2"]
)  # (2: after validation)
def test_a_rejected_command_writes_nothing_at_all(tmp_path, override):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "sorsa_repro.train", *TINY, f"results_dir={results}", override],
                          cwd=ROOT, env=pythonpath_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert not results.exists(), list(results.rglob("*"))  # no <results_dir>/.hydra/ either


@pytest.mark.slow
def test_a_rejected_evaluation_writes_nothing_at_all(tmp_path):
    hydra_dir = tmp_path / "outputs"
    proc = subprocess.run([sys.executable, "-m", "sorsa_repro.evaluate", f"run={tmp_path / 'no-run'}", f"hydra.run.dir={hydra_dir}"],
                          cwd=ROOT, env=pythonpath_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "does not exist" in proc.stderr, proc.stderr[-2000:]
    assert not hydra_dir.exists()


def test_two_commands_in_the_same_second_get_their_own_hydra_folders(monkeypatch):
    import datetime as dt
    import itertools

    import hydra.core.utils

    stamps = (dt.datetime(2026, 1, 2, 3, 4, 5, us) for us in itertools.count(100, 100))  # all in one second

    class SameSecond(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return next(stamps)

    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)
    folders = []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for _ in range(2):
            cfg = compose(config_name="train", overrides=["experiment=mini"], return_hydra_config=True)
            folders.append((cfg.hydra.sweep.dir, cfg.hydra.run.dir))
    assert folders[0][0] != folders[1][0] and folders[0][1] != folders[1][1]


def test_adapter_configs_list_target_modules_in_one_order(exported):
    for name in ("adapter_lora",):
        config = json.loads((exported / name / "adapter_config.json").read_text())
        assert (
            config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) > 1
        )


SAVE_LORA = """
import sys, torch
from sorsa_repro.methods import apply_method, save_sorsa_lora
from sorsa_repro.models import load_base_model
model, _ = load_base_model("tiny-random")
model = apply_method(model, {"name": "sorsa", "rank": 2,
                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]})
save_sorsa_lora(model, sys.argv[1], base_model="tiny-random")
"""


@pytest.mark.slow
def test_adapter_config_is_byte_stable_across_processes(tmp_path):
    files = []
    for seed in ("1", "2", "3"):  # the hash seed orders a set: peft's target_modules
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", SAVE_LORA, str(out)], check=True, capture_output=True,
                       env=pythonpath_env(PYTHONHASHSEED=seed))  # fmt: skip
        files.append((out / "adapter_config.json").read_bytes())
    assert files[0] == files[1] == files[2]


@pytest.mark.parametrize(("override", "match"), [("method.lr=abc", "method.lr='abc' must be a number"),
                                                  ("train.max_steps=many", "train.max_steps='many' must be a number")])  # fmt: skip
def test_a_word_for_a_number_is_named(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        validate_config(cfg_for(tmp_path, override))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("merged/model.safetensors", "model.safetensors is cut short"),
        ("merged/config.json", "config.json is unreadable"),
    ],
)
def test_a_damaged_export_is_named(tmp_path, exported, damage, match):
    from sorsa_repro.evaluation.run import evaluate

    run_dir = tmp_path / "mini" / exported.name
    shutil.copytree(exported, run_dir)
    path = run_dir / damage
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=match) as caught:
        evaluate({"run": str(run_dir), "benchmarks": ["synthetic"], "limit": 1, "backend": "hf"})
    assert str(path) in str(caught.value)
    assert "evaluation" not in load_result(run_dir)  # found before anything was written


def test_a_damaged_adapter_config_is_named(tmp_path, exported):
    from sorsa_repro.evaluation.run import evaluate

    adapter = tmp_path / "adapter_lora"
    shutil.copytree(exported / "adapter_lora", adapter)
    (adapter / "adapter_config.json").write_text('{"r": 8, "target_modu')
    cfg = {"model": "tiny-random", "adapter": str(adapter), "benchmarks": ["synthetic"], "limit": 1,
           "backend": "hf", "out_dir": str(tmp_path / "out")}  # fmt: skip
    with pytest.raises(ValueError, match=f"{adapter / 'adapter_config.json'} is unreadable"):
        evaluate(cfg)
    peft_config = tmp_path / "peft" / "adapter_config.json"
    peft_config.parent.mkdir()
    peft_config.write_text('{"peft_type": "LORA", "r": ')
    with pytest.raises(ValueError, match=f"method.config={peft_config}: not a peft adapter config"):
        validate_config(cfg_for(tmp_path, "method=peft", f"method.config={peft_config}"))
