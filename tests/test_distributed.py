"""Multi-process training on CPU (gloo): two DDP or FSDP processes log the per-step losses (and SORSA's
penalty and gradient norm) of one process that sees the same global batch.

The runs go through the real training path (``run_training`` with a composed config, ``trainer=ddp|fsdp
trainer.accelerator=cpu trainer.devices=2``), in two processes started as torchrun or SLURM start
them; the one-process runs use ``trainer=cpu`` with twice the per-device batch.

Why the data: every training example here has the same number of loss tokens. DDP averages the ranks'
gradients, each the mean over its own tokens (as gradient accumulation averages micro-batches), while
one process averages over all tokens of the batch; the two agree only when the ranks hold equally many
loss tokens. With the same count everywhere, any difference left is floating-point rounding.
"""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sorsa_repro.training.ortho import ORTHO_MODES
from sorsa_repro.training.task import run_training, validate_config

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
# per-step loss, penalty and gradient norm: measured differences are ~1e-7 relative. ATOL: the penalty
# of freshly initialised factors is rounding noise (~1e-6), which differs with the SVD's thread count
RTOL, ATOL = 1e-5, 1e-7


def write_data(folder: Path, n: int = 20) -> Path:
    """GSM8K-format additions whose responses all tokenise to the same length (SmolLM2 splits digits)."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        rows.append(
            {"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
        )
    (folder / "gsm8k").mkdir(parents=True, exist_ok=True)
    (folder / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def overrides(tmp_path: Path, method: str, batch_size: int, *extra: str) -> list[str]:
    return [
        "experiment=mini",
        "model=tiny_random",
        f"method={method}",
        f"results_dir={tmp_path}",
        "method.rank=4",
        "data=gsm8k",
        f"+data.data_dir={write_data(tmp_path / 'data')}",
        "data.limit=16",
        "data.heldout_size=4",  # rows 16-19: the held-out loss, gathered from the shards under FSDP
        "data.max_length=128",
        f"train.batch_size={batch_size}",
        "train.global_batch_size=8",  # 2 per rank x 2 ranks x 2 accumulation = 4 x 1 process x 2
        "train.max_steps=3",
        "train.checkpoint_every=100",
        "train.save_adapter=false",
        "train.export_merged=false",
        "train.spectral_every=0",
        "evaluate.benchmarks=[]",
        *extra,
    ]


def compose_cfg(tmp_path: Path, method: str, batch_size: int, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides(tmp_path, method, batch_size, *extra))


def launch_two_ranks(cfg_paths: list[Path], timeout: int = 900, env_extra: dict | None = None) -> list[int]:
    """Two processes, ranks 0 and 1 of one gloo group, each calling ``run_training`` on every config in turn.

    They are started the way torchrun or SLURM start them (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set), so
    Lightning joins them instead of launching children; one launch serves all runs (imports cost most here).
    """
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "MASTER_ADDR": "127.0.0.1"}
        env.update(
            MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=str(rank), **(env_extra or {})
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, *map(str, cfg_paths)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    if env_extra is None:
        for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
            assert proc.returncode == 0, f"rank {rank} failed:\n{out[-5000:]}"
    return [p.returncode for p in procs]


CHILD = """
import os, sys
from omegaconf import OmegaConf
from sorsa_repro.training.module import FineTuneModule
from sorsa_repro.training.task import run_training, validate_config
die_at = int(os.environ.get("DIE_AT_STEP", 0))
if die_at:  # a kill right after optimizer step die_at, on both ranks
    def die(self, *args):
        if self.trainer.global_step == die_at:
            raise SystemExit(3)
    FineTuneModule.on_train_batch_end = die
for path in sys.argv[1:]:
    run_training(OmegaConf.load(path))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# (name, method, strategy, extra overrides): the runs compared with one process. The DDP runs also
# recompute activations (gradient checkpointing), which must not change the numbers either.
# The FSDP runs also export the adapter and the merged model and record spectra, all of which read whole
# parameters from the shards.
EXPORTS = ("train.save_adapter=true", "train.export_merged=true", "train.spectral_every=1")
CASES = [
    ("ddp-sorsa", "sorsa", "ddp", ("method.gamma=0.05",)),
    ("ddp-lora", "lora", "ddp", ()),
    *[
        (f"fsdp-{m}", "sorsa", "fsdp", (f"method.ortho_mode={m}", "method.gamma=0.05", *EXPORTS))
        for m in ORTHO_MODES
    ],
    ("fsdp-lora", "lora", "fsdp", EXPORTS),
]
MULTI_ONLY = {"ddp": ("train.gradient_checkpointing=true",), "fsdp": ()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (folder of the two-process run, folder of one process with the global batch)."""
    root = tmp_path_factory.mktemp("distributed")
    paths, out = [], {}
    for name, method, strategy, extra in CASES:
        multi = compose_cfg(
            root / name, method, 2, *extra, f"trainer={strategy}", *CPU_RANKS, *MULTI_ONLY[strategy]
        )
        paths.append(root / f"{name}.yaml")
        OmegaConf.save(multi, paths[-1])
    launch_two_ranks(paths)
    # one thread, as each of the two processes runs (Lightning sets cores / processes): the SVD at init then
    # rounds the same way, which matters because the gradient of ||U^T U - I||_F at orthonormal factors is
    # the unit direction of the rounding noise, whatever its size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, method, _, extra in CASES:
            one = run_training(compose_cfg(root / f"{name}-one", method, 4, *extra))
            out[name] = (run_dir(root / name), one)
    finally:
        torch.set_num_threads(threads)
    return out


def run_dir(results: Path) -> Path:
    return next(results.glob("mini/*-r4-s0-*"))


CPU_RANKS = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_workers=0")


def assert_same_steps(got: list[dict], want: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want] == ["1", "2", "3"]
    for g, w in zip(got, want, strict=True):
        for key in keys:
            assert float(g[key]) == pytest.approx(float(w[key]), rel=RTOL, abs=ATOL), (key, g, w)


def assert_same_heldout(got: list[dict], want: list[dict]) -> None:
    """The held-out loss at the last step: each rank's forward over the same rows, from the whole model."""
    assert [r["heldout_loss"] != "" for r in want] == [False, False, True]
    assert float(got[-1]["heldout_loss"]) == pytest.approx(
        float(want[-1]["heldout_loss"]), rel=RTOL, abs=ATOL
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sorsa", "lora"])
def test_ddp_matches_one_process_with_the_global_batch(runs, method):
    """Two DDP processes with gradient checkpointing against one process without."""
    got, want = map(read_metrics, runs[f"ddp-{method}"])
    keys = ("loss", "grad_norm") + (("ortho_penalty",) if method == "sorsa" else ())
    assert_same_steps(got, want, keys)
    assert_same_heldout(got, want)
    assert len({r["loss"] for r in want}) == 3  # the steps differ: the comparison is not vacuous


@pytest.mark.slow
@pytest.mark.parametrize("mode", ORTHO_MODES)
def test_fsdp_sorsa_penalty_matches_one_process(runs, mode):
    """FSDP shards the factors: the penalty (gathered), its gradient in each regularizer mode and the
    clipping norm (FSDP's clip_grad_norm_) are computed over the shards. gamma 0.05 makes the penalty's
    gradient matter from step 2 on."""
    got, want = map(read_metrics, runs[f"fsdp-{mode}"])
    assert_same_steps(got, want, ("loss", "grad_norm", "ortho_penalty"))
    assert_same_heldout(got, want)
    assert float(want[-1]["ortho_penalty"]) > 1e-4  # the factors have left orthonormality


def test_strategy_objects_from_the_trainer_configs(tiny_model_factory):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from sorsa_repro.training.distributed import build_strategy

    def strategy(*overrides: str):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return build_strategy(compose(config_name="train", overrides=["experiment=mini", *overrides]))

    assert strategy() == "auto"
    ddp = strategy("trainer=ddp")
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["gradient_as_bucket_view"]
    fsdp = strategy("trainer=fsdp")
    assert isinstance(fsdp, FSDPStrategy) and fsdp.kwargs["use_orig_params"]
    wrap = fsdp.kwargs["auto_wrap_policy"]  # decoder layers become units, nothing else does
    model = tiny_model_factory()
    units = [
        n
        for n, m in model.named_modules()
        if m is not model and wrap(module=m, recurse=False, nonwrapped_numel=0)
    ]
    assert units == [f"model.layers.{i}" for i in range(model.config.num_hidden_layers)]
    # bf16 weights (or a bf16 residual) + fp32 adapters cannot share an FSDP unit: a clear error, not torch's
    with pytest.raises(ValueError, match="bf16-mixed"):
        strategy("experiment=paper_llama2_7b", "trainer=fsdp", "train.precision=bf16-true")
    with pytest.raises(ValueError, match="residual_dtype=float32"):
        strategy("experiment=paper_llama2_7b", "trainer=fsdp")  # reference precision: a bf16 SORSA residual
    assert isinstance(
        strategy("experiment=paper_llama2_7b", "trainer=fsdp", "method.residual_dtype=float32"), FSDPStrategy
    )
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):  # before any weight loads
        paper_fsdp = compose(config_name="train", overrides=["experiment=paper_llama2_7b", "trainer=fsdp"])
    with pytest.raises(ValueError, match="residual_dtype"):
        validate_config(paper_fsdp)
    assert isinstance(
        strategy("experiment=paper_llama2_7b", "trainer=fsdp", "train.precision=bf16-mixed"), FSDPStrategy
    )


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_file(str(path)).items()})
    return out


def assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and want
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fsdp-reference", "fsdp-lora"])
def test_fsdp_exports_the_whole_trained_model(runs, name):
    """Adapter, merged model and spectra of a sharded run: whole tensors, the unwrapped model's names, and
    the values one process with the global batch writes."""
    multi, one = runs[name]
    for folder in ("adapter", "merged"):
        assert_same_tensors(load_tensors(multi / folder), load_tensors(one / folder))
    assert not any("_fsdp" in key for key in load_tensors(multi / "merged"))
    import pandas as pd

    got, want = (pd.read_csv(d / "spectral.csv") for d in (multi, one))
    assert list(got["step"].unique()) == [1, 2, 3] and len(got) == len(want)
    # top-k singular vectors of nearly equal singular values turn with 1e-6 weight differences: 2e-3 rel seen
    pd.testing.assert_frame_equal(got, want, rtol=1e-2, atol=1e-5)
    assert json.loads((multi / "result.json").read_text())["train"]["status"] == "finished"


@pytest.mark.slow
def test_fsdp_resume_after_kill_reproduces_the_uninterrupted_run(runs, tmp_path):
    """Killed after step 3 with the step-2 checkpoint last, then started again: the sharded adapters and
    AdamW state come back from the (full) checkpoint, so step 3 and the exported adapter are the
    uninterrupted run's."""
    extra = ("method.ortho_mode=reference", "method.gamma=0.05", *EXPORTS, "train.checkpoint_every=2")
    cfg = compose_cfg(tmp_path, "sorsa", 2, *extra, "trainer=fsdp", *CPU_RANKS)
    OmegaConf.save(cfg, tmp_path / "run.yaml")
    assert launch_two_ranks([tmp_path / "run.yaml"], env_extra={"DIE_AT_STEP": "3"}) == [3, 3]
    part = run_dir(tmp_path)
    assert json.loads((part / "result.json").read_text())["train"]["status"] == "interrupted"  # SystemExit
    assert [r["step"] for r in read_metrics(part)] == ["1", "2", "3"]
    launch_two_ranks([tmp_path / "run.yaml"])
    uninterrupted = runs["fsdp-reference"][0]
    assert_same_steps(read_metrics(part), read_metrics(uninterrupted), ("loss", "grad_norm", "ortho_penalty"))
    assert_same_tensors(load_tensors(part / "adapter"), load_tensors(uninterrupted / "adapter"))
    assert json.loads((part / "result.json").read_text())["train"]["resumed"]


@pytest.mark.parametrize(("rank", "evaluates"), [(0, True), (1, False)])
def test_only_global_rank_zero_evaluates_after_training(tmp_path, monkeypatch, rank, evaluates):
    """Every rank of a multi-GPU job runs the whole job; the evaluation (one vLLM on one GPU) runs once."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    import sorsa_repro.evaluation.run as evaluation
    import sorsa_repro.training.task as task
    from sorsa_repro.train import run_job

    evaluated = []
    monkeypatch.setattr(task, "prepare_training", lambda cfg: cfg)
    monkeypatch.setattr(task, "train_in_folder", lambda prepared: Path(prepared.run_dir))
    monkeypatch.setattr(evaluation, "evaluate_after_training", lambda run_dir, cfg: evaluated.append(run_dir))
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    cfg = compose_cfg(tmp_path, "sorsa", 2, "evaluate.benchmarks=[gsm8k]")
    assert run_job(cfg)["status"] == "ok"
    assert evaluated == ([Path(cfg.run_dir)] if evaluates else [])
