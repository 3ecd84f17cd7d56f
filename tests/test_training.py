"""Training pipeline: configs compose, every method trains, the regularizer modes match their
definitions, resume reproduces an uninterrupted run, bad input fails before the model loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from sorsa_repro.methods import METHODS as ALL_METHODS
from sorsa_repro.methods import apply_method
from sorsa_repro.methods.sorsa import sorsa_layers
from sorsa_repro.methods.sorsa_penalty import orthonormal_penalty
from sorsa_repro.training.identity import config_hash
from sorsa_repro.training.module import FineTuneModule
from sorsa_repro.training.optim import OptimSettings
from sorsa_repro.training.ortho import Regularizer, regularizer
from sorsa_repro.training.task import optimizer_steps, run_training
from tests.conftest import train_killed_after_step

CONF = str(Path(__file__).resolve().parents[1] / "conf")
EXPERIMENTS = sorted(p.stem for p in Path(CONF, "experiment").glob("*.yaml"))
# method=peft needs a config file of its own; the untrained base model has its own test (test_heldout.py)
METHODS = tuple(m for m in ALL_METHODS if m not in ("peft", "base"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)


def tiny_cfg(tmp_path, method="sorsa", *extra):
    """The mini experiment shrunk to the tiny model: a handful of optimizer steps in seconds."""
    return compose_train(
        "experiment=mini",
        "model=tiny_random",
        f"method={method}",
        f"results_dir={tmp_path}",
        "method.rank=4",
        "data.limit=24",
        "data.max_length=128",
        "train.batch_size=2",
        "train.global_batch_size=4",
        "train.max_steps=3",
        "train.checkpoint_every=1",
        "evaluate.benchmarks=[]",
        *(
            ("method.init_examples=4",) if method in ("eva", "corda") else ()
        ),  # their data pass: 2 micro-batches
        *extra,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("method", (*METHODS, "base"))
def test_every_experiment_composes(experiment, method):
    cfg = compose_train(f"experiment={experiment}", f"method={method}")
    assert cfg.experiment_name == experiment
    seed = 0 if method == "base" else cfg.seed  # the base model's one run, whatever the seed
    # learning-rate studies name the rate; the base model has none
    lr = f"-lrx{cfg.train.lr_multiplier:g}" if experiment.endswith("_lr") and method != "base" else ""
    name = f"{method}{lr}-r{cfg.method.rank}-s{seed}-{config_hash(cfg)[:8]}"
    assert cfg.run_dir == f"results/{experiment}/{name}"


@pytest.mark.parametrize("method,lr", [("sorsa", 3e-5), ("lora", 2e-5), ("pissa", 2e-5), ("full", 2e-5)])
def test_paper_config_is_the_papers_protocol(method, lr):
    cfg = compose_train("experiment=paper_llama2_7b", f"method={method}")
    assert cfg.model.name == "meta-llama/Llama-2-7b-hf"
    assert (cfg.data.name, cfg.data.limit, cfg.data.max_length) == ("metamathqa", 100000, 512)
    assert (cfg.data.tokenization, cfg.data.truncation, cfg.data.long_prompts) == (
        "concatenated",
        "joint",
        "keep",
    )
    assert cfg.train.batch_size * cfg.train.accumulate == 128 and cfg.train.epochs == 1
    # the reference Trainer floors 100000 / 128 and drops the last partial window
    assert optimizer_steps(100000, cfg.train.batch_size, cfg.train.accumulate, 1, cfg.train.epochs) == 781
    assert (cfg.train.weight_decay, cfg.train.grad_clip, cfg.train.warmup_ratio) == (0.0, 1.0, 0.03)
    assert cfg.train.precision == "reference" and cfg.trainer.tf32
    assert cfg.method.lr == lr and cfg.train.lr_multiplier == 1.0
    assert cfg.evaluate.generation == "sorsa-v1"
    if method == "sorsa":
        assert (cfg.method.rank, cfg.method.alpha, cfg.method.gamma) == (128, None, 4e-4)
        assert cfg.method.adapter_dtype == "float32" and cfg.method.ortho_mode == "reference"
        assert cfg.method.ortho_coef == pytest.approx(4e-4 / (3e-5 * 64), abs=1e-6)  # 0.2083
        assert cfg.method.residual_dtype == "bfloat16"
    elif method != "full":
        assert (cfg.method.rank, cfg.method.alpha, cfg.method.dropout) == (128, 128, 0.0)
    assert list(cfg.method.target_modules) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]


def test_regularizer_strength_is_the_papers_on_any_layout_and_scale():
    one = compose_train("experiment=paper_llama2_7b", "method=sorsa").method.ortho_coef
    ddp = compose_train(
        "experiment=paper_llama2_7b", "method=sorsa", "trainer=ddp", "trainer.devices=8"
    ).method.ortho_coef
    micro = compose_train("experiment=paper_llama2_7b", "method=sorsa", "train.batch_size=8")
    mini = compose_train("experiment=mini", "method=sorsa")  # SORSA at x1 there (its study's selection)
    scaled = compose_train(
        "experiment=mini", "method=sorsa", "train.lr_multiplier=10"
    )  # the coefficient stays
    assert mini.train.lr_multiplier == 1 and scaled.train.lr_multiplier == 10
    assert (
        one
        == ddp
        == micro.method.ortho_coef
        == mini.method.ortho_coef
        == scaled.method.ortho_coef
        == pytest.approx(0.208333, abs=1e-6)
    )
    assert compose_train("experiment=mini", "method=sorsa", "+ortho=none").method.ortho_coef == 0


def test_the_global_batch_is_the_configured_quantity():
    """The paper's 128 sequences per step on any layout: the accumulation follows devices and micro-batch,
    and so does nothing else (781 steps)."""
    one = compose_train("experiment=paper_llama2_7b", "method=lora")
    ddp = compose_train("experiment=paper_llama2_7b", "method=lora", "trainer=ddp", "trainer.devices=8")
    micro = compose_train("experiment=paper_llama2_7b", "method=lora", "train.batch_size=8")
    for cfg, accumulate, world in ((one, 64, 1), (ddp, 8, 8), (micro, 16, 1)):
        assert cfg.train.accumulate == accumulate and cfg.train.global_batch_size == 128
        assert optimizer_steps(100000, cfg.train.batch_size, accumulate, world, 1) == 781
    with pytest.raises(Exception, match="not a multiple of train.batch_size x devices"):
        _ = compose_train("experiment=paper_llama2_7b", "method=lora", "train.batch_size=3").train.accumulate
    from sorsa_repro.training.validate import validate_config

    mismatch = compose_train("experiment=mini", "method=lora", "model=tiny_random", "train.accumulate=4")
    with pytest.raises(ValueError, match="global_batch_size=2, but"):
        validate_config(mismatch)


@pytest.mark.parametrize("method", ["lora", "pissa", "dora", "olora"])
def test_adapter_scale_is_one_at_any_rank(method):
    for rank in (8, 16, 128):
        cfg = compose_train("experiment=mini", f"method={method}", f"method.rank={rank}")
        assert cfg.method.alpha == rank  # scale alpha / r = 1, as SORSA's
    assert compose_train(f"method={method}", "method.rank=8", "method.alpha=32").method.alpha == 32


def test_full_fine_tuning_moves_every_weight_under_the_reference_precision(tiny_model_factory):
    """AdamW at lr 2e-5 on bf16 weights (bf16-true) rounds most updates away; fp32 master weights
    (train.precision=reference: bf16 autocast) keep them."""
    moved = {}
    for name, dtype, precision in (
        ("reference", "float32", "bf16-mixed"),
        ("bf16-true", "bfloat16", "32-true"),
    ):
        torch.manual_seed(0)
        model = apply_method(tiny_model_factory(seed=3, dtype=dtype), {"name": "full", "rank": 4})
        before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("proj.weight")}
        ids = torch.randint(3, 400, (4, 24), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        module = FineTuneModule(model, optim=OptimSettings(2e-5), total_steps=10)
        L.Trainer(max_steps=3, precision=precision, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                  ).fit(module, torch.utils.data.DataLoader([batch] * 3, batch_size=None))  # fmt: skip
        after = dict(model.named_parameters())
        changed = sum(int((after[n].detach() != w).sum()) for n, w in before.items())
        moved[name] = changed / sum(w.numel() for w in before.values())
    assert moved["reference"] > 0.99 and moved["bf16-true"] < 0.5, moved


def test_reference_precision_keeps_the_svd_exact_and_stores_the_residual_in_bf16(tiny_model_factory):
    from sorsa_repro.methods import cast_residuals

    model = apply_method(tiny_model_factory(seed=4), {"name": "sorsa", "rank": 4})
    layers = sorsa_layers(model)
    assert cast_residuals(model, torch.bfloat16) == len(layers)
    for layer in layers.values():
        assert layer.weight.dtype == torch.bfloat16 and layer.sorsa_U.dtype == torch.float32
        assert layer.init_factors[0].dtype == torch.float32  # the SVD ran on the fp32 weights


def test_svfit_rejects_a_regularizer_it_could_not_apply():
    """SVFit's singular vectors are frozen: a gamma would be silently ignored, so the config is refused."""
    from sorsa_repro.training.validate import validate_config

    cfg = compose_train("experiment=mini", "method=svfit", "model=tiny_random", "+method.gamma=4e-4")
    with pytest.raises(ValueError, match="method=svfit with method.gamma=0.0004"):
        validate_config(cfg)


@pytest.mark.parametrize("key", ["+method.gamma=4e-4", "+method.ortho_mode=loss"])
def test_a_regularizer_setting_on_a_method_without_one_is_refused(key):
    """It used to ride through MethodConfig's escape hatch and be ignored: LoRA has no orthonormal regularizer."""
    from sorsa_repro.training.validate import validate_config

    cfg = compose_train("experiment=mini", "method=lora", "model=tiny_random", key)
    with pytest.raises(
        ValueError, match="method=lora with method.* only SORSA has the orthonormal regularizer"
    ):
        validate_config(cfg)


def test_a_set_ortho_coef_is_refused_not_ignored():
    """method.ortho_coef only shows gamma / (lr x 64); setting it used to change nothing, silently."""
    from sorsa_repro.training.validate import validate_config

    validate_config(compose_train("experiment=mini", "method=sorsa", "model=tiny_random"))  # the shown value
    cfg = compose_train("experiment=mini", "method=sorsa", "model=tiny_random", "method.ortho_coef=0.5")
    with pytest.raises(ValueError, match=r"method.ortho_coef=0.5 is derived, not set: .* = 0.208333"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": 0.0}, "learning rate must be > 0"),
        ({"lr": 1e-5, "weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"lr": 1e-5, "warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\)"),
        ({"lr": 1e-5, "grad_clip": -1.0}, "grad_clip must be >= 0"),
    ],
)
def test_optimiser_settings_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        OptimSettings(**settings)


def test_regularizer_modes_record_what_result_json_holds():
    assert regularizer("reference", 4e-4, 3e-5, 64).record() == {
        "mode": "reference",
        "gamma": 4e-4,
        "coefficient": pytest.approx(0.208333, rel=1e-5),
    }
    assert regularizer("decoupled", 0.1).record() == {"mode": "decoupled", "gamma": 0.1, "coefficient": None}
    assert Regularizer(0.0).record() is None  # a method without the regularizer records none
    with pytest.raises(ValueError, match="needs the method's base lr"):
        regularizer("reference", 4e-4)
    with pytest.raises(ValueError, match="method.ortho_mode='bogus'"):
        regularizer("bogus", 0.1)
    with pytest.raises(ValueError, match="method.gamma must be >= 0"):
        regularizer("loss", -1.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_exports(tmp_path, method):
    run_dir = run_training(tiny_cfg(tmp_path, method))
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert (rows[0]["ortho_penalty"] != "") == (method == "sorsa")
    assert [r["heldout_loss"] != "" for r in rows] == [False, False, True]  # at the last step
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["status"] == "finished" and result["train"]["steps"] == 3
    assert result["train"]["heldout_loss"] == float(rows[-1]["heldout_loss"]) > 0
    assert result["run"] == {"experiment": "mini", "method": method, "rank": 4, "seed": 0}
    # train.ortho as the committed references hold it: SORSA's mode, gamma and coefficient; None otherwise
    want = {"mode": "reference", "gamma": 4e-4, "coefficient": pytest.approx(4e-4 / (3e-5 * 64))}
    assert result["train"]["ortho"] == (want if method == "sorsa" else None)
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints/last.ckpt").exists()
    assert (run_dir / "adapter").exists() == (method != "full")
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")  # plain transformers, no project code
    assert not any("lora" in n or "sorsa" in n for n, _ in merged.named_parameters())


def _fixed_batch_losses(model, steps=20, lr=1e-2):
    """Train on one fixed batch through Lightning; return the per-step losses."""
    torch.manual_seed(0)
    ids = torch.randint(3, 400, (4, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    loader = torch.utils.data.DataLoader([batch] * steps, batch_size=None)
    reg = regularizer("reference", 4e-4, lr, 1)
    module = FineTuneModule(model, optim=OptimSettings(lr), total_steps=steps, regularizer=reg)
    L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    ).fit(module, loader)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sorsa", "pissa", "lora", "full"])
def test_loss_falls_on_a_fixed_batch(tiny_model_factory, method):
    model = apply_method(tiny_model_factory(seed=1), {"name": method, "rank": 8})
    with torch.no_grad():
        ids = torch.randint(3, 400, (4, 24), generator=torch.Generator().manual_seed(0))
        first = model(input_ids=ids, labels=ids).loss.item()
    module = _fixed_batch_losses(model)
    assert module.last_metrics["step"] == 20
    # a random 2-layer model starts near ln(vocab) = 10.8; adapters move it slowly, full FT fast
    assert module.last_metrics["loss"] < first - 0.3


def _sorsa_module(tiny_model_factory, mode, gamma=4e-4, lr=3e-5, k=4, clip=1.0):
    model = apply_method(tiny_model_factory(seed=2), {"name": "sorsa", "rank": 8})
    with torch.no_grad():  # move the factors off orthonormality so the penalty has a gradient
        for layer in sorsa_layers(model).values():
            layer.sorsa_U.add_(0.05 * torch.randn_like(layer.sorsa_U))
            layer.sorsa_Vt.add_(0.05 * torch.randn_like(layer.sorsa_Vt))
    reg = regularizer(mode, gamma, lr, k)
    module = FineTuneModule(model, optim=OptimSettings(lr, grad_clip=clip), total_steps=10, regularizer=reg)
    return model, module


def _task_backward(model):
    ids = torch.randint(3, 400, (2, 16), generator=torch.Generator().manual_seed(3))
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()


def _penalty_grad(model, params):
    return torch.autograd.grad(orthonormal_penalty(model), params, allow_unused=True, materialize_grads=True)


def test_reference_mode_adds_scaled_penalty_gradient_after_clipping(tiny_model_factory):
    gamma, lr, k, clip = 4e-4, 3e-5, 4, 0.01  # a small clip so clipping really scales the task gradient
    model, module = _sorsa_module(tiny_model_factory, "reference", gamma, lr, k, clip)
    params = module.trainable_parameters()
    _task_backward(model)
    task = [p.grad.clone() for p in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in task]))
    assert norm > clip
    clipped = [g * (clip / (norm + 1e-6)) for g in task]
    penalty = dict(zip(params, _penalty_grad(model, params), strict=True))
    optimizer = torch.optim.AdamW(params, lr=lr)
    module.configure_gradient_clipping(optimizer)
    coef = gamma / (lr * k)
    for p, c in zip(params, clipped, strict=True):
        torch.testing.assert_close(p.grad, c + coef * penalty[p], rtol=1e-5, atol=1e-8)
    assert module._window["grad_norm"] == pytest.approx(float(norm), rel=1e-5)


def test_decoupled_mode_is_an_sgd_step_on_the_penalty(tiny_model_factory):
    gamma = 0.1
    model, module = _sorsa_module(tiny_model_factory, "decoupled", gamma)
    params = module.trainable_parameters()
    assert any(p.dim() == 1 for p in params)  # sorsa_S takes no penalty step
    before = [p.detach().clone() for p in params]
    penalty = _penalty_grad(model, params)
    module.regularizer.after_step(module)
    for p, b, g in zip(params, before, penalty, strict=True):
        torch.testing.assert_close(p.detach(), b - gamma * g)


def test_loss_mode_adds_gamma_times_penalty_to_the_loss(tiny_model_factory):
    gamma = 0.5
    model, module = _sorsa_module(tiny_model_factory, "loss", gamma)
    ids = torch.randint(3, 400, (2, 16), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.no_grad():
        expected = model(**batch).loss + gamma * orthonormal_penalty(model)
    torch.testing.assert_close(module.training_step(batch, 0).detach(), expected)


def test_reference_and_loss_modes_leave_non_sorsa_methods_alone(tiny_model_factory):
    model = apply_method(tiny_model_factory(), {"name": "lora", "rank": 4})
    module = FineTuneModule(
        model, optim=OptimSettings(1e-3), total_steps=1, regularizer=regularizer("loss", 4e-4)
    )
    assert not module.has_regularized_layers and not module.regularizer.mode


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "limit"),
    # 24 examples: 6 steps per epoch, the step-3 checkpoint is mid-epoch; 12: it is an epoch's last batch
    [("sorsa", 24), ("lora", 24), ("lora", 12)],
)
def test_resume_after_kill_reproduces_the_uninterrupted_losses(tmp_path, monkeypatch, method, limit):
    extra = ("train.max_steps=6", "train.checkpoint_every=3", f"data.limit={limit}")
    full = run_training(tiny_cfg(tmp_path / "full", method, *extra))
    expected = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(full)]

    # a kill after step 4: its checkpoint (step 3) is the last one
    cfg = tiny_cfg(tmp_path / "part", method, *extra)
    run_dir = train_killed_after_step(cfg, 4, monkeypatch)
    assert json.loads((run_dir / "result.json").read_text())["train"]["status"] == "failed"
    run_training(cfg)  # the same command again continues from the step-3 checkpoint
    got = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run_dir)]
    assert got == expected
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["status"] == "finished" and result["train"]["resumed"]


@pytest.mark.slow
def test_finished_run_is_not_trained_again_and_changed_config_gets_its_own_folder(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    run_dir = run_training(cfg)
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    monkeypatch.setattr("sorsa_repro.training.setup.apply_method", lambda *a: pytest.fail("trained again"))
    run_training(cfg)
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    changed = run_training(tiny_cfg(tmp_path, "sorsa", "method.gamma=0.0"))
    assert changed != run_dir and changed.name.startswith(run_dir.name.rsplit("-", 1)[0])
    assert json.loads((changed / "result.json").read_text())["config_hash"] == config_hash(
        tiny_cfg(tmp_path, "sorsa", "method.gamma=0.0")
    )
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp  # the first run is untouched


def _fails_before_model_load(monkeypatch, cfg, match):
    monkeypatch.setattr("sorsa_repro.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises((ValueError, FileNotFoundError, RuntimeError), match=match):
        run_training(cfg)


def test_bad_input_fails_before_the_model_loads(tmp_path, monkeypatch):
    with pytest.raises(Exception, match="method"):
        compose_train("method=nosuch")
    _fails_before_model_load(monkeypatch, tiny_cfg(tmp_path, "sorsa", "method.rank=999"), "rank 999")
    _fails_before_model_load(
        monkeypatch, tiny_cfg(tmp_path, "sorsa", "method.ortho_mode=bogus"), "ortho_mode"
    )
    _fails_before_model_load(monkeypatch, tiny_cfg(tmp_path, "sorsa", "train.precision=fp8"), "precision")
    _fails_before_model_load(
        monkeypatch,
        tiny_cfg(tmp_path, "lora", "data=gsm8k", f"+data.data_dir={tmp_path / 'none'}"),
        "SORSA_DATA_DIR",
    )
    too_long = tiny_cfg(tmp_path, "lora", "data.max_length=8", "data.long_prompts=error")
    _fails_before_model_load(monkeypatch, too_long, "max_length")


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "lora", "train.max_steps=4")
    original = FineTuneModule.training_step

    def nan_at_step_3(self, batch, batch_idx):
        if self.trainer.global_step == 2:
            batch = dict(batch, labels=batch["labels"].clone())
            self.model.base_model.model.lm_head.weight.data.fill_(float("nan"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(FineTuneModule, "training_step", nan_at_step_3)
    with pytest.raises(Exception, match="non-finite training loss at optimizer step 3"):
        run_training(cfg)
    assert (Path(cfg.run_dir) / "checkpoints/last.ckpt").exists()


def test_the_base_model_is_adapted_where_it_trains(tmp_path, monkeypatch):
    """On a GPU the base model is loaded onto it before apply_method, so the SVD initialisation runs there
    (on the CPU it took minutes for a 7B model); FSDP shards a CPU model. Checked here through the choice of
    device and the SVD's input device (a GPU run of the same path is in BENCHMARKS.md when one is lent)."""
    import sorsa_repro.methods.sorsa as sorsa_module
    from sorsa_repro.training.setup import init_device

    gpu = compose_train("experiment=paper_llama2_7b", "method=sorsa")
    assert init_device(compose_train("experiment=mini", "method=sorsa")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert init_device(gpu) == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert (
        init_device(compose_train("experiment=paper_llama2_7b", "trainer=ddp", "trainer.devices=4"))
        == "cuda:3"
    )
    assert init_device(compose_train("experiment=paper_llama2_7b", "trainer=fsdp")) == "cpu"
    monkeypatch.undo()
    seen = []
    original = sorsa_module.top_r_svd
    monkeypatch.setattr(
        sorsa_module, "top_r_svd", lambda w, *a, **k: seen.append(w.device) or original(w, *a, **k)
    )
    from sorsa_repro.models import load_base_model

    model, _ = load_base_model("tiny-random", device="cpu")
    apply_method(model, {"name": "sorsa", "rank": 4})
    assert seen and set(seen) == {next(model.parameters()).device}


@pytest.mark.slow
def test_compiled_training_matches_eager_training_and_keeps_parameter_names(tmp_path):
    from torch._dynamo.utils import counters

    eager = run_training(tiny_cfg(tmp_path / "eager", "sorsa"))
    counters.clear()
    compiled = run_training(tiny_cfg(tmp_path / "compiled", "sorsa", "train.compile=true"))
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really captured the model
    assert compiled.name == eager.name  # a speed choice, not part of the run's identity
    losses = [[float(r["loss"]) for r in read_metrics(d)] for d in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    keys = [
        torch.load(d / "checkpoints/last.ckpt", weights_only=False)["state_dict"].keys()
        for d in (eager, compiled)
    ]
    assert list(keys[1]) == list(keys[0])  # checkpoints and exports read the same names
    merged = AutoModelForCausalLM.from_pretrained(compiled / "merged")
    assert not any("_orig_mod" in n or "sorsa" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_method_peft_with_a_lora_config_trains_exactly_like_method_lora(tmp_path):
    from peft import LoraConfig

    from sorsa_repro.methods import DEFAULT_TARGETS

    config_dir = tmp_path / "my_lora"
    LoraConfig(
        r=4, lora_alpha=4, target_modules=list(DEFAULT_TARGETS), task_type="CAUSAL_LM"
    ).save_pretrained(config_dir)
    same_rate = (
        "train.lr_multiplier=10"  # mini selects LoRA's rate (x100); method=peft takes its default (x10)
    )
    peft_cfg = tiny_cfg(tmp_path / "peft", "peft", f"method.config={config_dir}", same_rate)
    first_dir = str(peft_cfg.run_dir)  # resolved now: the config resolves again on each access
    assert Path(first_dir).name.startswith("peft-r4-s0-")  # r read from the file
    peft_run = run_training(peft_cfg)
    lora_run = run_training(tiny_cfg(tmp_path / "lora", "lora", same_rate))
    assert [r["loss"] for r in read_metrics(peft_run)] == [r["loss"] for r in read_metrics(lora_run)]
    peft_result, lora_result = (json.loads((d / "result.json").read_text()) for d in (peft_run, lora_run))
    assert peft_result["train"]["trainable_params"] == lora_result["train"]["trainable_params"]
    assert peft_result["run"]["method"] == "peft" and peft_result["run"]["peft_config"] == "my_lora"
    # the file's content is the run's identity: another config, another folder
    LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS)).save_pretrained(config_dir)
    assert tiny_cfg(tmp_path / "peft", "peft", f"method.config={config_dir}", same_rate).run_dir != first_dir


def test_method_peft_needs_a_readable_peft_config(tmp_path):
    from omegaconf.errors import InterpolationToMissingValueError

    from sorsa_repro.training.validate import validate_config

    with pytest.raises(InterpolationToMissingValueError, match="Missing mandatory value: method.config"):
        validate_config(tiny_cfg(tmp_path, "peft"))
    (tmp_path / "bad.json").write_text('{"r": 4}')
    with pytest.raises(ValueError, match="not a peft adapter config"):
        validate_config(tiny_cfg(tmp_path, "peft", f"method.config={tmp_path / 'bad.json'}"))
    with pytest.raises(ValueError, match="goes with method=peft"):
        validate_config(tiny_cfg(tmp_path, "lora", f"+method.config={tmp_path / 'bad.json'}"))
