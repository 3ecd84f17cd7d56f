"""MiCA, MiSS, EVA and CorDA through peft: the invariants of tests/test_methods.py for each, and EVA's and
CorDA's data pass inside a real (tiny) training run: what it reads, what result.json records, and that a
resumed run restores the init instead of reading the data again.

All four promise the base model's output at init: MiCA (A = 0), MiSS (a zero block), EVA (B = 0) exactly;
CorDA to float32 rounding (it subtracts its top-r part from W and adds it back through the adapter, as PiSSA).
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaConfig

from sorsa_repro.methods import (
    DEFAULT_TARGETS,
    MethodConfig,
    apply_method,
    count_parameters,
    effective_weights,
    find_targets,
    load_adapter,
    merge_model,
    peft_inits,
    peft_layers,
    save_adapter,
    trainable_params_on_meta,
)
from sorsa_repro.models import tiny_llama_config
from tests.conftest import train_killed_after_step
from tests.test_methods import forbid_svd, logits, perturb_trainable, rel_err, saved_tensors
from tests.test_training import read_metrics, tiny_cfg

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RANK = 8
METHODS = ["mica", "miss", "eva", "corda"]
DATA = {"eva", "corda"}


def _batches(seed: int = 7) -> list[dict]:
    """Two micro-batches of 4 x 64 tokens; the first 6 of each sequence are prompt (labels -100)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(3, 400, (4, 64), generator=gen)
        labels = ids.clone()
        labels[:, :6] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def adapt(model, method: str, rank: int = RANK):
    if method in DATA:
        return apply_method(model, {"name": method, "rank": rank, "init_examples": 4}, _batches())
    return apply_method(model, {"name": method, "rank": rank})


def forbid_data_pass(monkeypatch) -> None:
    """EVA's and CorDA's data passes raise (a loader or a resume must not run them)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a data pass ran")

    monkeypatch.setattr(peft_inits, "eva_init", forbidden)
    monkeypatch.setattr(peft_inits, "run_one_by_one", forbidden)


# ---------------------------------------------------------------- the methods


@pytest.mark.parametrize("method", METHODS)
def test_adapted_model_equals_base_at_init(tiny_model_factory, tiny_input_ids, method):
    expected = logits(tiny_model_factory(), tiny_input_ids)
    model = adapt(tiny_model_factory(), method)
    err = rel_err(logits(model, tiny_input_ids), expected)
    assert err == 0.0 if method != "corda" else err <= 1e-5  # CorDA: W_res + B A rounds as PiSSA's does


@pytest.mark.parametrize("method", METHODS)
def test_merged_equals_unmerged_and_effective_weights_are_the_merged_ones(
    tiny_model_factory, tiny_input_ids, method
):
    base_logits = logits(tiny_model_factory(), tiny_input_ids)
    model = adapt(tiny_model_factory(), method)
    perturb_trainable(model)
    unmerged = logits(model, tiny_input_ids)
    assert rel_err(unmerged, base_logits) > 1e-2  # the perturbation changed the model
    dense = dict(effective_weights(model))
    assert sorted(dense) == sorted(find_targets(tiny_model_factory(), DEFAULT_TARGETS))
    merged = merge_model(model)
    assert not isinstance(merged, PeftModel) and not peft_layers.peft_layers(merged)
    assert rel_err(logits(merged, tiny_input_ids), unmerged) <= 1e-5
    for name, weight in dense.items():  # what the spectral analysis reads is what the merged model applies
        assert rel_err(weight, merged.get_submodule(name).weight) <= 1e-6


def test_data_methods_are_driven_by_their_data(tiny_model_factory):
    """EVA's A and CorDA's factors depend on the batches; MiCA's B are the minor left singular vectors."""
    for method in ("eva", "corda"):
        cfg = {"name": method, "rank": RANK, "init_examples": 4}
        one = peft_layers.lora_layers(apply_method(tiny_model_factory(), cfg, _batches(7)))
        two = peft_layers.lora_layers(apply_method(tiny_model_factory(), cfg, _batches(8)))
        name = next(iter(one))
        assert not torch.equal(one[name].lora_A["default"].weight, two[name].lora_A["default"].weight)
    model = apply_method(tiny_model_factory(), {"name": "mica", "rank": RANK})
    for layer in peft_layers.lora_layers(model).values():
        u = torch.linalg.svd(layer.get_base_layer().weight.detach(), full_matrices=False)[0]
        b = layer.lora_B["default"].weight.detach()
        # the same subspace as the last r left singular vectors (signs and rotation within it aside)
        assert torch.linalg.matrix_norm(b - u[:, -RANK:] @ (u[:, -RANK:].T @ b)) <= 1e-4
        assert not layer.lora_B["default"].weight.requires_grad


@pytest.mark.parametrize("method", METHODS)
def test_adapter_round_trip_is_bit_identical_without_data(
    tiny_model_factory, tiny_input_ids, tmp_path, method
):
    """Loading needs no data (EVA, CorDA) and no SVD (MiSS, EVA, CorDA: its residual is rebuilt from the
    converted factors). MiCA's structure is peft's own, whose init runs its SVD; the saved B replaces it."""
    model = adapt(tiny_model_factory(seed=3), method)
    perturb_trainable(model)
    trained = logits(model, tiny_input_ids)
    save_adapter(model, tmp_path / "first")
    with pytest.MonkeyPatch.context() as mp:
        forbid_data_pass(mp)
        if method != "mica":
            forbid_svd(mp)
        loaded = load_adapter(tiny_model_factory(seed=3), tmp_path / "first")
    assert torch.equal(logits(loaded, tiny_input_ids), trained)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    save_adapter(loaded, tmp_path / "again")
    first, again = saved_tensors(tmp_path / "first"), saved_tensors(tmp_path / "again")
    assert sorted(first) == sorted(again) and all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("method", METHODS)
def test_plain_peft_loads_the_saved_adapter_on_the_unmodified_base(
    tiny_model_factory, tiny_input_ids, tmp_path, method
):
    """CorDA is saved converted to a plain rank-2r LoRA (as PiSSA); the others as peft writes them."""
    model = adapt(tiny_model_factory(seed=3), method)
    perturb_trainable(model)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    if method == "miss":
        assert (config["peft_type"], config["r"]) == ("MISS", RANK)
    else:
        init = True if method == "corda" else method
        assert config["init_lora_weights"] == init and config["r"] == (
            2 * RANK if method == "corda" else RANK
        )
    with pytest.MonkeyPatch.context() as mp:
        forbid_data_pass(mp)
        loaded = PeftModel.from_pretrained(tiny_model_factory(seed=3), tmp_path)
    want = logits(merge_model(model), tiny_input_ids)
    assert rel_err(logits(loaded, tiny_input_ids), want) <= 1e-5
    assert rel_err(want, logits(tiny_model_factory(seed=3), tiny_input_ids)) > 1e-2


def expected_trainable(model, method: str) -> tuple[set[str], int]:
    names, count = set(), 0
    for target in find_targets(model, DEFAULT_TARGETS):
        out_f, in_f = model.get_submodule(target).weight.shape
        prefix = f"base_model.model.{target}"
        if method == "miss":
            names.add(f"{prefix}.miss_block.default")
            count += RANK * out_f
        elif method == "mica":  # B frozen
            names.add(f"{prefix}.lora_A.default.weight")
            count += RANK * in_f
        else:
            names |= {f"{prefix}.lora_A.default.weight", f"{prefix}.lora_B.default.weight"}
            count += RANK * (in_f + out_f)
    return names, count


@pytest.mark.parametrize("method", METHODS)
def test_only_intended_parameters_are_trainable(tiny_model_factory, method):
    names, count = expected_trainable(tiny_model_factory(), method)
    model = adapt(tiny_model_factory(), method)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names
    trainable, total = count_parameters(model)
    assert trainable == count
    cfg = {"name": method, "rank": RANK, **({"init_examples": 4} if method in DATA else {})}
    assert trainable_params_on_meta(tiny_llama_config(), cfg) == (trainable, total)  # no data, no weights


def test_trainable_params_on_meta_llama2_7b(monkeypatch):
    llama2_7b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32000)  # fmt: skip
    forbid_svd(monkeypatch)
    forbid_data_pass(monkeypatch)
    h, ffn, layers, r = 4096, 11008, 32, 128
    shapes = [(h, h)] * 4 + [(ffn, h)] * 2 + [(h, ffn)]  # (out, in) of q k v o, gate up, down
    lora = layers * sum(r * (o + i) for o, i in shapes)
    mica = layers * sum(r * i for _, i in shapes)  # A only
    miss = layers * sum(r * o for o, _ in shapes)  # one r x out block
    assert (lora, mica, miss) == (319_815_680, 145_752_064, 174_063_616) and mica + miss == lora
    base = 6_738_415_616
    expected = {
        "eva": (lora, base + lora),
        "corda": (lora, base + lora),
        "mica": (mica, base + lora),  # its frozen B counts in the total
        "miss": (miss, base + miss),
    }
    for method, counts in expected.items():
        cfg = {"name": method, "rank": r, **({"init_examples": 1} if method in DATA else {})}
        assert trainable_params_on_meta(llama2_7b, cfg) == counts, method


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "eva", "rank": 4}, "EVA and CorDA initialise from training data"),
        ({"name": "corda", "rank": 4, "init_examples": -1}, "init_examples must be >= 0"),
        ({"name": "lora", "rank": 4, "init_examples": 8}, "other methods take none"),
        ({"name": "miss", "rank": 4, "alpha": 8}, "MiSS has no scale"),
    ],
)
def test_bad_method_configs(cfg, message):
    with pytest.raises(ValueError, match=message):
        MethodConfig.from_mapping(cfg)


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("eva", {}, "initialises from training data: pass batches"),
        ("corda", {}, "initialises from training data: pass batches"),
        (
            "miss",
            {"rank": 65},
            r"rank 65 is larger than in_features = 64 of model\.layers\.0\.self_attn\.q_proj",
        ),
        ("mica", {"rank": 33}, r"rank 33 is larger than min\(out, in\) = 32"),
        ("eva", {"rank": 33}, r"rank 33 is larger than min\(out, in\) = 32"),
    ],
)
def test_bad_input_changes_nothing(tiny_model_factory, monkeypatch, method, extra, message):
    model = tiny_model_factory()
    svd_calls = forbid_svd(monkeypatch)
    forbid_data_pass(monkeypatch)
    cfg = {"name": method, "rank": RANK, **({"init_examples": 4} if method in DATA else {}), **extra}
    with pytest.raises(ValueError, match=message):
        apply_method(model, cfg)
    assert svd_calls == [] and not peft_layers.peft_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_method_peft_refuses_a_config_that_needs_data(tiny_model_factory, tmp_path):
    from peft import LoraConfig

    LoraConfig(r=4, init_lora_weights="eva", target_modules=list(DEFAULT_TARGETS)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="use method=eva"):
        apply_method(tiny_model_factory(), {"name": "peft", "config": str(tmp_path)})


# ---------------------------------------------------------------- in a training run


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(DATA))
def test_data_pass_reads_the_first_training_batches_and_is_recorded(tmp_path, monkeypatch, method):
    """The init reads the first init_examples examples training starts with (the same micro-batches), and
    result.json records which, how many and the cost; the init's result is kept for a resume."""
    from sorsa_repro.training import setup
    from sorsa_repro.training.module import FineTuneModule

    seen, trained = [], []
    original_apply, original_step = setup.apply_method, FineTuneModule.training_step

    def spy_apply(model, cfg, *args):
        seen.extend(b["input_ids"].clone() for b in (args[0] if args else []))
        return original_apply(model, cfg, *args)

    def spy_step(self, batch, batch_idx):
        trained.append(batch["input_ids"].clone())
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(setup, "apply_method", spy_apply)
    monkeypatch.setattr(FineTuneModule, "training_step", spy_step)
    from sorsa_repro.training.task import run_training

    run_dir = run_training(tiny_cfg(tmp_path, method))
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, trained[:2], strict=True))
    result = json.loads((run_dir / "result.json").read_text())
    record = result["train"]["init_data"]
    assert (record["examples"], record["micro_batches"], record["batch_size"]) == (4, 2, 2)
    assert len(record["example_ids"]) == 4 and len(record["ids_sha256"]) == 64
    assert record["time_s"] >= 0 and record["time_s"] <= result["train"]["init_time_s"]
    assert record["tokens"] >= record["label_tokens"] > 0
    assert (record.get("forward_passes", 0) >= 2) == (method == "eva")
    assert result["train"]["attempts"][0]["init_data"] == "read"
    assert (run_dir / "checkpoints/initial_adapter.safetensors").exists()
    assert result["train"]["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(DATA))
def test_resume_restores_the_init_without_the_data_and_reproduces_the_losses(tmp_path, monkeypatch, method):
    from sorsa_repro.training.task import run_training

    extra = ("train.max_steps=6", "train.checkpoint_every=3")
    full = run_training(tiny_cfg(tmp_path / "full", method, *extra))
    expected = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(full)]

    cfg = tiny_cfg(tmp_path / "part", method, *extra)
    run_dir = train_killed_after_step(cfg, 4, monkeypatch)
    first = json.loads((run_dir / "result.json").read_text())["train"]["init_data"]
    initial = load_file(str(run_dir / "checkpoints/initial_adapter.safetensors"))
    forbid_data_pass(monkeypatch)  # the resume must not read the data again
    run_training(cfg)
    assert [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run_dir)] == expected
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["status"] == "finished" and result["train"]["resumed"]
    assert result["train"]["attempts"][-1]["init_data"] == "restored"  # (a killed attempt records no attempt)
    assert result["train"]["init_data"] == first  # the record of the pass that built the init
    again = load_file(str(run_dir / "checkpoints/initial_adapter.safetensors"))
    assert sorted(again) == sorted(initial) and all(torch.equal(again[k], initial[k]) for k in initial)


def test_data_pass_reads_at_most_the_training_set_and_bad_input_fails_before_the_model_loads(
    tmp_path, monkeypatch
):
    from sorsa_repro.training.task import prepare_training, run_training

    # a training set smaller than init_examples (mini has 20 examples): the pass reads all of it, says so
    identity = prepare_training(tiny_cfg(tmp_path, "eva", "method.init_examples=100")).init_data.identity
    assert (identity["examples"], identity["requested"]) == (24, 100) and len(identity["example_ids"]) == 24
    monkeypatch.setattr("sorsa_repro.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="EVA and CorDA initialise from training data"):
        run_training(tiny_cfg(tmp_path, "corda", "method.init_examples=0"))
    with pytest.raises(ValueError, match="rank 999 is larger than in_features"):
        run_training(tiny_cfg(tmp_path, "miss", "method.rank=999"))
