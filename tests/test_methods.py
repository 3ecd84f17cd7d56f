"""Invariants of the adapter methods on a tiny random Llama (2 layers, hidden 64, 14 target linears).

Tolerances are "relative to scale": max |actual - expected| <= tol * max |expected|.
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import peft.tuners.lora.layer as peft_lora_layer
import pytest
import torch
import torch.nn.functional as F
from peft import AutoPeftModelForCausalLM, PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from sorsa_repro.methods import (
    DEFAULT_TARGETS,
    apply_method,
    count_parameters,
    find_targets,
    load_adapter,
    merge_model,
    merge_sorsa,
    orthonormal_penalty,
    save_adapter,
    save_sorsa_lora,
    trainable_params_on_meta,
)
from sorsa_repro.methods.peft_io import INITIAL_ADAPTER
from sorsa_repro.methods.peft_layers import lora_layers
from sorsa_repro.methods.sorsa import SORSALinear, sorsa_layers, top_r_svd
from sorsa_repro.models import OFFLINE_MODEL, cache_dir, tiny_llama_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RANK = 8
# the methods whose adapted model equals the base model at init (KaSA's truncation changes it by design: its own
# test in test_new_methods.py)
METHODS = ["full", "lora", "pissa", "pissa_niter_4", "dora", "olora", "sorsa", "milora", "svfit", "soma", "salt",
           "sst"]  # fmt: skip
TRAINABLE = [*METHODS, "kasa"]
# adapters whose loading runs no SVD (KaSA's and SALT's do: test_new_methods.py)
ADAPTERS = ["lora", "pissa", "dora", "olora", "sorsa", "milora", "svfit", "soma", "sst"]
PEFT_METHODS = ["lora", "pissa", "dora", "olora", "milora", "soma"]
# they change the base: saved as a rank-2r LoRA relative to W
CONVERTED = ("pissa", "olora", "milora", "soma")

# Logits of an adapted model at init against the base model's, relative to the logits' scale.
# fp32: only the SVD and the residual subtraction round (measured <= 3e-7 on the tiny model).
# bf16: the residual W - U S V^T is rounded to bf16 (SORSA and PiSSA keep fp32 adapters and a bf16
# residual) and so are the logits; one bf16 ulp is 2^-8 = 3.9e-3 of scale, measured 4.6e-3 (SORSA) and
# 6.1e-3 (PiSSA); we allow about 5 ulps.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------- helpers


@torch.no_grad()
def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).logits.float()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    actual, expected = actual.detach().float(), expected.detach().float()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@torch.no_grad()
def perturb_trainable(model: nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Simulate training: add seeded noise to every trainable parameter."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(scale * torch.randn(param.shape, generator=gen).to(param.dtype))


def target_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """{target name: copy of its weight} for the default target modules."""
    return {n: model.get_submodule(n).weight.detach().clone() for n in find_targets(model, DEFAULT_TARGETS)}


def orthonormality_error(q: torch.Tensor) -> float:
    """max |Q^T Q - I| for a matrix whose columns should be orthonormal."""
    q = q.detach().double()
    return (q.T @ q - torch.eye(q.shape[1], dtype=q.dtype)).abs().max().item()


def forbid_svd(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make every SVD (torch.linalg.svd, torch.svd_lowrank, peft's own import of it) record and raise.

    Returns the list of recorded calls. AssertionError is not a ValueError, so a test expecting a
    ValueError fails if an SVD runs first.
    """
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(tuple(args[0].shape) if args else None)
        raise AssertionError("an SVD ran")

    monkeypatch.setattr(torch.linalg, "svd", forbidden)
    monkeypatch.setattr(torch, "svd_lowrank", forbidden)
    monkeypatch.setattr(peft_lora_layer, "svd_lowrank", forbidden)
    return calls


def sorsa_layer(out_f: int = 48, in_f: int = 40, rank: int = RANK, bias: bool = False, seed: int = 0):
    """A standalone SORSA layer on a seeded random Linear (out_f x in_f)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SORSALinear(nn.Linear(in_f, out_f, bias=bias), rank)


# ---------------------------------------------------------------- output at init


INIT_CASES = [(m, "float32") for m in METHODS] + [
    (m, "bfloat16") for m in ("sorsa", "pissa", "milora", "svfit")
]


@pytest.mark.parametrize(("method", "dtype"), INIT_CASES)
def test_adapted_model_equals_base_at_init(tiny_model_factory, tiny_input_ids, method, dtype):
    expected = logits(tiny_model_factory(dtype=dtype), tiny_input_ids)
    model = apply_method(tiny_model_factory(dtype=dtype), {"name": method, "rank": RANK})
    assert rel_err(logits(model, tiny_input_ids), expected) <= TOL[DTYPES[dtype]]


# ---------------------------------------------------------------- factors at init


def test_sorsa_factors_reconstruct_weight_and_are_orthonormal(tiny_model_factory):
    base = tiny_model_factory()
    originals = target_weights(base)
    model = apply_method(base, {"name": "sorsa", "rank": RANK})
    layers = sorsa_layers(model)
    assert set(layers) == set(originals)
    for name, layer in layers.items():
        w = originals[name]
        u, s, vt = layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vt
        assert rel_err(layer.weight + (u * s) @ vt, w) <= 1e-6
        assert orthonormality_error(u) <= 1e-5 and orthonormality_error(vt.T) <= 1e-5
        torch.testing.assert_close(s, torch.linalg.svdvals(w)[:RANK], rtol=1e-5, atol=0)
        # the residual is what is left after removing the top r components: its top singular value is s_{r+1}
        torch.testing.assert_close(
            torch.linalg.svdvals(layer.weight)[0], torch.linalg.svdvals(w)[RANK], rtol=1e-4, atol=0
        )
    assert orthonormal_penalty(model).item() <= 1e-5


@pytest.mark.parametrize("method", ["pissa", "pissa_niter_4"])
def test_pissa_factors_reconstruct_weight_and_are_orthonormal(tiny_model_factory, method):
    base = tiny_model_factory()
    originals = target_weights(base)
    model = apply_method(base, {"name": method, "rank": RANK})
    layers = lora_layers(model)
    assert {n.removeprefix("base_model.model.") for n in layers} == set(originals)
    for name, layer in layers.items():
        w = originals[name.removeprefix("base_model.model.")]
        # B = U sqrt(S), A = sqrt(S) V^T
        b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        residual = layer.get_base_layer().weight
        assert rel_err(residual + layer.scaling["default"] * b @ a, w) <= 1e-6
        col_norms, row_norms = b.norm(dim=0), a.norm(dim=1)  # both sqrt(s_i)
        torch.testing.assert_close(col_norms, row_norms, rtol=1e-5, atol=0)
        assert orthonormality_error(b / col_norms) <= 1e-5
        assert orthonormality_error((a / row_norms[:, None]).T) <= 1e-5
        if method == "pissa":  # the exact SVD gives the top singular values themselves
            torch.testing.assert_close(col_norms**2, torch.linalg.svdvals(w)[:RANK], rtol=1e-5, atol=0)


@pytest.mark.parametrize("alpha", [None, 2 * RANK])
def test_milora_factors_are_the_minor_components(tiny_model_factory, alpha):
    """scale B0 A0 is the bottom-r part U_min S_min V_min^T of W (whatever alpha) and the residual keeps the
    principal part: PiSSA's mirror image. B0 = U_min sqrt(S_min / scale), A0 = sqrt(S_min / scale) V_min^T."""
    base = tiny_model_factory()
    originals = target_weights(base)
    model = apply_method(base, {"name": "milora", "rank": RANK, "alpha": alpha})
    layers = lora_layers(model)
    assert {n.removeprefix("base_model.model.") for n in layers} == set(originals)
    assert model.peft_config["default"].init_lora_weights == "milora"  # saving converts it, as PiSSA
    for name, layer in layers.items():
        w = originals[name.removeprefix("base_model.model.")]
        b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        scale = layer.scaling["default"]
        assert scale == (1.0 if alpha is None else 2.0)
        u, s, vt = torch.linalg.svd(w.double(), full_matrices=False)
        minor = (u[:, -RANK:] * s[-RANK:]) @ vt[-RANK:]
        assert rel_err(scale * b @ a, minor) <= 1e-5
        residual = layer.get_base_layer().weight
        assert rel_err(residual + scale * b @ a, w) <= 1e-6
        col_norms, row_norms = b.norm(dim=0), a.norm(dim=1)  # both sqrt(s_i / scale)
        torch.testing.assert_close(col_norms**2 * scale, s[-RANK:].float(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(row_norms, col_norms, rtol=1e-4, atol=1e-6)
        assert orthonormality_error(b / col_norms) <= 1e-4
        assert orthonormality_error((a / row_norms[:, None]).T) <= 1e-4
        # the residual keeps the principal spectrum: its top k - r singular values are W's
        kept = len(s) - RANK
        torch.testing.assert_close(
            torch.linalg.svdvals(residual.double())[:kept], s[:kept], rtol=1e-5, atol=1e-6
        )


def test_svfit_trains_only_the_singular_values_without_the_regularizer(tiny_model_factory, tiny_input_ids):
    """SVFit is SORSA's top-r split with U and V^T frozen: the same factors and residual as SORSA at init, a
    gradient only for S, and no orthonormal penalty (its vectors do not move)."""
    from sorsa_repro.methods.sorsa_penalty import regularized_layers

    svfit = apply_method(tiny_model_factory(), {"name": "svfit", "rank": RANK})
    sorsa = apply_method(tiny_model_factory(), {"name": "sorsa", "rank": RANK})
    layers, reference = sorsa_layers(svfit), sorsa_layers(sorsa)
    assert set(layers) == set(reference) and not regularized_layers(svfit)
    for name, layer in layers.items():
        assert not layer.train_vectors and "vectors frozen" in repr(layer)
        for key in ("U", "S", "Vt", ""):
            attr = f"sorsa_{key}" if key else "weight"
            assert torch.equal(getattr(layer, attr), getattr(reference[name], attr))
    svfit(input_ids=tiny_input_ids, labels=tiny_input_ids).loss.backward()
    for layer in layers.values():
        assert layer.sorsa_S.grad is not None and layer.sorsa_S.grad.abs().sum() > 0
        assert layer.sorsa_U.grad is None and layer.sorsa_Vt.grad is None
    with pytest.raises(ValueError, match="no SORSA layers with trainable singular vectors"):
        orthonormal_penalty(svfit)


def test_svfit_adapter_reloads_with_frozen_vectors(tiny_model_factory, tiny_input_ids, tmp_path):
    model = apply_method(tiny_model_factory(seed=3), {"name": "svfit", "rank": RANK})
    perturb_trainable(model)
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "sorsa_config.json").read_text())["train_vectors"] is False
    loaded = load_adapter(tiny_model_factory(seed=3), tmp_path)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    assert all(n.endswith(".sorsa_S") for n, p in loaded.named_parameters() if p.requires_grad)
    # its weight change as a peft LoRA (the rank-2r export SORSA uses) loads in plain peft
    save_sorsa_lora(model, tmp_path / "lora")
    plain = PeftModel.from_pretrained(tiny_model_factory(seed=3), tmp_path / "lora")
    assert (
        rel_err(logits(plain, tiny_input_ids), logits(merge_sorsa(model), tiny_input_ids)) <= PLAIN_PEFT_TOL
    )


# ---------------------------------------------------------------- merged == unmerged


def test_sorsa_layer_merge_unmerge_round_trip():
    layer = sorsa_layer(bias=True)
    perturb_trainable(layer)
    residual = layer.weight.detach().clone()
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        unmerged = layer(x)
        assert rel_err(F.linear(x, residual, layer.bias), unmerged) > 0.1  # the adapter matters
        layer.merge()
        assert layer.merged
        merged = layer(x)
        layer.unmerge()
        again = layer(x)
    assert rel_err(merged, unmerged) <= 1e-5
    assert not layer.merged and rel_err(layer.weight, residual) <= 1e-6
    assert rel_err(again, unmerged) <= 1e-5


@pytest.mark.parametrize("method", ["sorsa", "svfit"])
def test_merge_sorsa_gives_plain_model_loadable_by_transformers(
    tiny_model_factory, tiny_input_ids, tmp_path, method
):
    base_logits = logits(tiny_model_factory(), tiny_input_ids)
    model = apply_method(tiny_model_factory(), {"name": method, "rank": RANK})
    perturb_trainable(model)
    unmerged = logits(model, tiny_input_ids)
    assert rel_err(unmerged, base_logits) > 1e-2  # the perturbation changed the model

    merged = merge_sorsa(model)
    assert not sorsa_layers(merged)
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in find_targets(merged, DEFAULT_TARGETS))
    assert not any("sorsa" in n for n, _ in merged.named_parameters())
    merged_logits = logits(merged, tiny_input_ids)
    assert rel_err(merged_logits, unmerged) <= 1e-5

    merged.save_pretrained(tmp_path)
    assert not any("sorsa" in k for k in load_file(str(tmp_path / "model.safetensors")))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers, no project code
    assert torch.equal(logits(reloaded, tiny_input_ids), merged_logits)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_merge_model_matches_unmerged(tiny_model_factory, tiny_input_ids, method):
    base_logits = logits(tiny_model_factory(), tiny_input_ids)
    model = apply_method(tiny_model_factory(), {"name": method, "rank": RANK})
    perturb_trainable(model)
    unmerged = logits(model, tiny_input_ids)
    assert rel_err(unmerged, base_logits) > 1e-2

    merged = merge_model(model)
    assert not isinstance(merged, PeftModel) and not lora_layers(merged)
    assert rel_err(logits(merged, tiny_input_ids), unmerged) <= 1e-5


# ---------------------------------------------------------------- adapter save / load


# fp32 for every adapter method; in bf16 SORSA, SVFit, LoRA, DoRA and MiLoRA also restore bit for bit (MiLoRA's
# residual is computed from its factors as stored, unlike peft's PiSSA/OLoRA: see the bf16 test below)
EXACT_ROUND_TRIPS = [(m, "float32") for m in [*ADAPTERS, "pissa_niter_4"]] + [
    (m, "bfloat16") for m in ("sorsa", "svfit", "lora", "dora", "milora", "soma", "sst")
]


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    return {
        f"{f.name}:{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()
    }


@pytest.mark.parametrize(("method", "dtype"), EXACT_ROUND_TRIPS)
def test_adapter_round_trip_is_bit_identical(tiny_model_factory, tiny_input_ids, tmp_path, method, dtype):
    """PiSSA/OLoRA are saved as a converted rank-2r LoRA; the project's loader splits it back into the
    residual base and the rank-r factors they trained with. Saving the loaded model writes the same files."""
    model = apply_method(tiny_model_factory(seed=3, dtype=dtype), {"name": method, "rank": RANK})
    perturb_trainable(model)
    trained = logits(model, tiny_input_ids)
    save_adapter(model, tmp_path / "first")

    fresh = tiny_model_factory(seed=3, dtype=dtype)
    with pytest.MonkeyPatch.context() as mp:  # the loader rebuilds residuals from stored factors, no SVD
        forbid_svd(mp)
        loaded = load_adapter(fresh, tmp_path / "first")
    assert torch.equal(logits(loaded, tiny_input_ids), trained)
    save_adapter(loaded, tmp_path / "again")
    first, again = saved_tensors(tmp_path / "first"), saved_tensors(tmp_path / "again")
    assert sorted(first) == sorted(again) and all(torch.equal(first[k], again[k]) for k in first)


def test_loader_reads_pissa_adapters_saved_before_the_conversion(
    tiny_model_factory, tiny_input_ids, tmp_path
):
    """The earlier format: the rank-r PiSSA adapter as peft saves it, plus the initial factors file."""
    model = apply_method(tiny_model_factory(seed=3), {"name": "pissa", "rank": RANK})
    perturb_trainable(model)
    model.save_pretrained(tmp_path, save_embedding_layers=False)
    save_file(model.initial_adapter_state, str(tmp_path / INITIAL_ADAPTER))
    loaded = load_adapter(tiny_model_factory(seed=3), tmp_path)
    assert torch.equal(logits(loaded, tiny_input_ids), logits(model, tiny_input_ids))


# Plain peft on the unmodified base against the merged trained model, float32: the adapter's delta is added
# to W instead of W_res (PiSSA/OLoRA, SORSA) and the factors are multiplied in another order, so the logits
# agree to float32 rounding, not bit for bit. Measured max |diff| <= 6e-7 at a logit scale ~1.
PLAIN_PEFT_TOL = 1e-5


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_plain_peft_loads_the_saved_adapter_on_the_unmodified_base(
    tiny_model_factory, tiny_input_ids, tmp_path, method
):
    """``PeftModel.from_pretrained(fresh base, adapter)`` gives the trained model: PiSSA/OLoRA are saved as
    a plain LoRA of rank 2r (init_lora_weights true), so peft does not re-run their init on the base."""
    model = apply_method(tiny_model_factory(seed=3), {"name": method, "rank": RANK})
    perturb_trainable(model)
    save_adapter(model, tmp_path, base_model="org/base-model")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    converted = method in CONVERTED
    assert config["init_lora_weights"] is True and config["r"] == (2 * RANK if converted else RANK)
    assert config["base_model_name_or_path"] == "org/base-model"

    with pytest.MonkeyPatch.context() as mp:
        forbid_svd(mp)
        loaded = PeftModel.from_pretrained(tiny_model_factory(seed=3), tmp_path)
    got, want = logits(loaded, tiny_input_ids), logits(merge_model(model), tiny_input_ids)
    assert rel_err(got, want) <= PLAIN_PEFT_TOL
    assert rel_err(want, logits(tiny_model_factory(seed=3), tiny_input_ids)) > 1e-2  # it is not the base


@pytest.mark.parametrize("alpha", [None, 2 * RANK])
def test_sorsa_lora_export_loads_with_plain_peft(tiny_model_factory, tiny_input_ids, tmp_path, alpha):
    """The SORSA weight change W - W0 = scale (U S Vt - U0 S0 V0t) as a rank-2r peft LoRA (scaling 1): plain
    peft and AutoPeftModelForCausalLM (which finds the base by its recorded name) give the merged model."""
    base_dir = tmp_path / "base"
    tiny_model_factory(seed=3).save_pretrained(base_dir)
    model = apply_method(tiny_model_factory(seed=3), {"name": "sorsa", "rank": RANK, "alpha": alpha})
    perturb_trainable(model)
    save_sorsa_lora(model, tmp_path / "lora", base_model=str(base_dir))
    want = logits(merge_sorsa(model), tiny_input_ids)

    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 2 * RANK, 2 * RANK)
    assert config["init_lora_weights"] is True and config["base_model_name_or_path"] == str(base_dir)
    assert sorted(config["target_modules"]) == sorted(DEFAULT_TARGETS)
    keys = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert len(keys) == 2 * len(find_targets(tiny_model_factory(), DEFAULT_TARGETS))
    assert all(k.startswith("base_model.model.model.layers.") for k in keys)  # peft's (and vLLM's) names

    loaded = PeftModel.from_pretrained(tiny_model_factory(seed=3), tmp_path / "lora")
    assert rel_err(logits(loaded, tiny_input_ids), want) <= PLAIN_PEFT_TOL
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "lora").eval()
    assert rel_err(logits(auto, tiny_input_ids), want) <= PLAIN_PEFT_TOL
    assert rel_err(want, logits(tiny_model_factory(seed=3), tiny_input_ids)) > 1e-2


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.parametrize("method", ["lora", "pissa", "olora", "sorsa"])
def test_vllm_reads_the_peft_adapters(tiny_model_factory, tmp_path, method):
    """vLLM's own adapter reader (what ``--enable-lora`` uses, no engine needed) accepts every peft folder:
    ranks 2r for PiSSA/OLoRA and SORSA's export, scaling 1 for them, the 14 target layers found."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    base = tiny_model_factory(seed=3)
    targets = find_targets(base, DEFAULT_TARGETS)
    model = apply_method(base, {"name": method, "rank": RANK})
    (save_sorsa_lora if method == "sorsa" else save_adapter)(model, tmp_path)
    helper = PEFTHelper.from_local_dir(str(tmp_path), max_position_embeddings=1024)
    helper.validate_legal(LoRAConfig(max_lora_rank=2 * RANK))  # raises for init_lora_weights="pissa"
    assert helper.r == (RANK if method == "lora" else 2 * RANK) and helper.vllm_lora_scaling_factor == 1.0
    loaded = LoRAModel.from_local_checkpoint(
        str(tmp_path), set(DEFAULT_TARGETS), helper, device="cpu", dtype=torch.float32
    )
    assert sorted(loaded.loras) == sorted(targets)


def test_base_model_id_is_the_hub_id_or_the_given_name():
    from sorsa_repro.models import base_model_id

    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id(OFFLINE_MODEL) == hub
    assert base_model_id(cache_dir() / "models" / OFFLINE_MODEL) == hub  # never the local cache folder
    assert base_model_id("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert base_model_id("tiny-random") == "tiny-random" and base_model_id(None) is None


@pytest.mark.parametrize("method", ["lora", "pissa", "sorsa"])
def test_adapter_configs_record_the_base_model_name(tiny_model_factory, tmp_path, method):
    """The name given (the offline model's short name becomes its hub id); without one, the name the model
    was loaded from, which for the offline model is its cache folder: recorded as the hub id too."""
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = apply_method(tiny_model_factory(), {"name": method, "rank": RANK})
    save_adapter(model, tmp_path / "given", base_model=OFFLINE_MODEL)
    model.config._name_or_path = str(cache_dir() / "models" / OFFLINE_MODEL)  # as from_pretrained sets it
    save_adapter(model, tmp_path / "default")
    for folder in ("given", "default"):
        if method == "sorsa":
            assert json.loads((tmp_path / folder / "sorsa_config.json").read_text())["base_model"] == hub
        else:
            config = json.loads((tmp_path / folder / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == hub
    if method == "sorsa":
        save_sorsa_lora(model, tmp_path / "lora", base_model=OFFLINE_MODEL)
        config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == hub


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_bf16_pissa_olora_round_trip_within_one_bf16_ulp(
    tiny_model_factory, tiny_input_ids, tmp_path, method
):
    """Known limit, from peft: in a bf16 model peft computes W_res = W - B0 A0 with fp32 factors, then
    rounds B0, A0 to bf16 (``_move_adapter_to_device_of_base_layer``; they are upcast to fp32 again
    afterwards). Only the rounded factors exist after init, so a loader (ours rebuilds
    bf16(W - B0 A0) from them) cannot reproduce peft's residual bit for bit: the factors come back
    exactly, the residual within one bf16 ulp at the weight's scale (the ulp of max |W|, which is
    2^-8 to 2^-7 of max |W|; measured up to 4.3e-3 of it). fp32 models round-trip exactly (test above)."""
    model = apply_method(tiny_model_factory(seed=3, dtype="bfloat16"), {"name": method, "rank": RANK})
    perturb_trainable(model)
    trained = logits(model, tiny_input_ids)
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny_model_factory(seed=3, dtype="bfloat16"), tmp_path)

    before, after = lora_layers(model), lora_layers(loaded)
    assert set(before) == set(after)
    for name, layer in before.items():
        for key in ("lora_A", "lora_B"):
            assert torch.equal(
                getattr(layer, key)["default"].weight, getattr(after[name], key)["default"].weight
            )
        w_trained, w_loaded = layer.get_base_layer().weight, after[name].get_base_layer().weight
        # bf16 keeps 8 significant bits: one ulp in the binade of max |W|
        ulp_at_scale = 2.0 ** (math.floor(math.log2(w_trained.abs().max().item())) - 7)
        assert (w_loaded.float() - w_trained.float()).abs().max().item() <= ulp_at_scale
    assert rel_err(logits(loaded, tiny_input_ids), trained) <= TOL[torch.bfloat16]


def test_save_adapter_refuses_full_fine_tuning(tiny_model_factory, tmp_path):
    model = apply_method(tiny_model_factory(), {"name": "full", "rank": RANK})
    with pytest.raises(ValueError, match="no adapter"):
        save_adapter(model, tmp_path)


# ---------------------------------------------------------------- trainable parameters


def expected_trainable(model: nn.Module, method: str) -> tuple[set[str], int]:
    """(names, count) of the parameters ``method`` should train, from the base model's targets."""
    if method == "full":
        return {n for n, _ in model.named_parameters()}, count_parameters(model)[1]
    names, count = set(), 0
    for target in find_targets(model, DEFAULT_TARGETS):
        out_f, in_f = model.get_submodule(target).weight.shape
        k = min(out_f, in_f)
        if method == "svfit":  # the r singular values only
            names.add(f"{target}.sorsa_S")
            count += RANK
            continue
        if (
            method == "salt"
        ):  # scale and shift of the top r; X, Y of rank lora_rank (= r) in the remaining k - r
            names |= {f"{target}.salt_{key}" for key in ("scale", "shift", "X", "Y")}
            count += 2 * RANK + 2 * (k - RANK) * RANK
            continue
        if method == "soma" and not target.startswith("model.layers.1."):  # round(2 / 3) = 1: block 0 frozen
            continue
        count += RANK * (in_f + out_f)
        if method == "sst":  # all k singular values, the r sampled left and right singular vectors
            names |= {f"{target}.sst_{key}" for key in ("S", "U", "Vt")}
            count += k
            continue
        if method == "sorsa":
            names |= {f"{target}.sorsa_{k}" for k in ("U", "S", "Vt")}
            count += RANK
            continue
        prefix = f"base_model.model.{target}"
        names |= {f"{prefix}.lora_A.default.weight", f"{prefix}.lora_B.default.weight"}
        if method == "dora":
            names.add(f"{prefix}.lora_magnitude_vector.default.weight")
            count += out_f
        if method == "kasa":  # the r learnable singular values d
            names.add(f"{prefix}.lora_diag.default")
            count += RANK
    return names, count


@pytest.mark.parametrize("method", TRAINABLE)
def test_only_intended_parameters_are_trainable(tiny_model_factory, method):
    names, count = expected_trainable(tiny_model_factory(), method)
    model = apply_method(tiny_model_factory(), {"name": method, "rank": RANK})
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names
    assert count_parameters(model)[0] == count
    # the meta-device helper agrees with the real model
    assert trainable_params_on_meta(tiny_llama_config(), {"name": method, "rank": RANK})[0] == count


def test_trainable_params_on_meta_llama2_7b(monkeypatch):
    llama2_7b = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    built, from_config = [], AutoModelForCausalLM.from_config

    def recording_from_config(*args, **kwargs):
        built.append(from_config(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", recording_from_config)
    svd_calls = forbid_svd(monkeypatch)  # no weights, so no SVD

    h, ffn, layers, vocab, r = 4096, 11008, 32, 32000, 128
    # per layer: q, k, v, o are h x h; gate, up are ffn x h; down is h x ffn
    shapes = [(h, h)] * 4 + [(ffn, h)] * 3
    lora = layers * sum(r * (o + i) for o, i in shapes)
    assert lora == 319_815_680
    sorsa = lora + layers * len(shapes) * r  # + the r singular values of each target
    assert sorsa == 319_844_352  # the paper's "320M"
    full = 2 * vocab * h + layers * (sum(o * i for o, i in shapes) + 2 * h) + h  # embed, lm_head, norms
    assert full == 6_738_415_616

    assert trainable_params_on_meta(llama2_7b, {"name": "sorsa", "rank": r})[0] == sorsa
    assert trainable_params_on_meta(llama2_7b, {"name": "full", "rank": r}) == (full, full)
    assert trainable_params_on_meta(llama2_7b, {"name": "lora", "rank": r})[0] == lora
    # MiLoRA trains LoRA's factors (only their init differs); SVFit the r singular values of each target
    milora, svfit = lora, layers * len(shapes) * r
    assert (milora, svfit) == (319_815_680, 28_672)
    assert trainable_params_on_meta(llama2_7b, {"name": "milora", "rank": r})[0] == milora
    assert trainable_params_on_meta(llama2_7b, {"name": "svfit", "rank": r})[0] == svfit
    # KaSA: LoRA's factors + the r learnable singular values of each target (SORSA's count); SoMA: LoRA's factors in
    # the 21 adapted blocks (round(32 / 3) = 11 frozen); SALT (lora_rank = r): 2r + 2 (k - r) r per target, k = 4096;
    # SST: the r sampled vectors of U and V plus all k singular values per target
    k = h
    kasa, soma = sorsa, (layers - 11) * sum(r * (o + i) for o, i in shapes)
    salt = layers * len(shapes) * (2 * r + 2 * (k - r) * r)
    sst = lora + layers * len(shapes) * k
    assert (kasa, soma, salt, sst) == (319_844_352, 209_879_040, 227_598_336, 320_733_184)
    for name, want in (("kasa", kasa), ("soma", soma), ("salt", salt), ("sst", sst)):
        assert trainable_params_on_meta(llama2_7b, {"name": name, "rank": r})[0] == want, name
    assert len(built) == 9 and svd_calls == []
    assert all(p.device.type == "meta" for model in built for p in model.parameters())


# ---------------------------------------------------------------- the orthonormal penalty


def test_penalty_matches_hand_computed_formula():
    gen = torch.Generator().manual_seed(5)
    shapes = [(48, 40, 8), (24, 64, 6), (32, 32, 4)]  # (out, in, rank)
    model = nn.ModuleList(sorsa_layer(o, i, r, seed=k) for k, (o, i, r) in enumerate(shapes))
    with torch.no_grad():  # non-orthonormal factors
        for layer in model:
            layer.sorsa_U.copy_(torch.randn(layer.sorsa_U.shape, generator=gen) * 0.4)
            layer.sorsa_Vt.copy_(torch.randn(layer.sorsa_Vt.shape, generator=gen) * 0.3)

    def frobenius_of_gram_minus_identity(m: np.ndarray) -> float:  # m: r x n, rows are the vectors
        r = m.shape[0]
        total = 0.0
        for i in range(r):
            for j in range(r):
                total += (float(np.dot(m[i], m[j])) - (1.0 if i == j else 0.0)) ** 2
        return total**0.5

    terms = []
    for layer in model:
        terms.append(frobenius_of_gram_minus_identity(layer.sorsa_U.detach().double().numpy().T))
        terms.append(frobenius_of_gram_minus_identity(layer.sorsa_Vt.detach().double().numpy()))
    expected = sum(terms) / (2 * len(model))

    penalty = orthonormal_penalty(model)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 1.0  # the factors really are far from orthonormal

    penalty.backward()  # the penalty acts on the singular vectors only
    for layer in model:
        assert layer.sorsa_U.grad.abs().sum() > 0 and layer.sorsa_Vt.grad.abs().sum() > 0
        assert layer.sorsa_S.grad is None


def test_batched_penalty_and_gradient_equal_the_per_matrix_formula():
    from sorsa_repro.methods.sorsa_penalty import penalty_and_grads, sorsa_factors

    shapes = [
        (48, 40, 8),
        (48, 40, 8),
        (24, 64, 6),
        (32, 32, 4),
        (24, 64, 6),
    ]  # repeated shapes share a batch
    model = nn.ModuleList(sorsa_layer(o, i, r, seed=k) for k, (o, i, r) in enumerate(shapes))
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for layer in model:
            layer.sorsa_U.add_(0.2 * torch.randn(layer.sorsa_U.shape, generator=gen))
            layer.sorsa_Vt.add_(0.2 * torch.randn(layer.sorsa_Vt.shape, generator=gen))
    factors, transposed = sorsa_factors(model)
    terms = []
    for layer in model:  # one small graph per matrix: the formula written out
        u, vt = layer.sorsa_U, layer.sorsa_Vt
        terms += [torch.linalg.matrix_norm(u.T @ u - torch.eye(u.shape[1])),
                  torch.linalg.matrix_norm(vt @ vt.T - torch.eye(vt.shape[0]))]  # fmt: skip
    per_matrix = torch.stack(terms).mean()
    want = torch.autograd.grad(per_matrix, factors)
    batched = orthonormal_penalty(model)
    torch.testing.assert_close(batched, per_matrix, rtol=1e-5, atol=1e-6)
    for got, w in zip(torch.autograd.grad(batched, factors), want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-7)
    value, grads = penalty_and_grads(factors, transposed)  # analytic, no autograd
    torch.testing.assert_close(value, per_matrix.detach(), rtol=1e-5, atol=1e-6)
    for got, w in zip(grads, want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-7)


def test_penalty_of_a_7b_model_takes_a_few_dozen_kernels():
    """Value and gradient for Llama-2-7B's 224 adapted matrices (448 terms): at most ~300 non-view aten ops
    (a graph per matrix took ~7,000). Counted on the meta device: shapes only, no memory."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sorsa_repro.methods.sorsa_penalty import penalty_and_grads, sorsa_factors

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += not func.is_view
            return func(*args, **(kwargs or {}))

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=32, vocab_size=32000)  # fmt: skip
    with torch.device("meta"):
        model = apply_method(AutoModelForCausalLM.from_config(config), {"name": "sorsa", "rank": 128})
    factors, transposed = sorsa_factors(model)
    assert len(factors) == 448
    with CountOps() as autograd_path:
        torch.autograd.grad(orthonormal_penalty(model), factors)
    with CountOps() as analytic_path:
        penalty_and_grads(factors, transposed)
    assert autograd_path.count <= 300 and analytic_path.count <= 300, (
        autograd_path.count,
        analytic_path.count,
    )


def test_penalty_needs_sorsa_layers():
    with pytest.raises(ValueError, match="no SORSA layers"):
        orthonormal_penalty(nn.Sequential(nn.Linear(4, 4)))


# ---------------------------------------------------------------- SVD


def decaying_spectrum_matrix(out_f=256, in_f=512, decay=0.9, seed=0) -> torch.Tensor:
    """U diag(decay**i) V^T with random orthonormal U (out_f x out_f) and V (in_f x out_f)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(out_f, out_f, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(in_f, out_f, generator=gen, dtype=torch.float64))[0]
    s = decay ** torch.arange(out_f, dtype=torch.float64)
    return ((u * s) @ v.T).float()


# relative Frobenius error of the randomized top-32 reconstruction against the exact one;
# measured: niter=1 2.5e-4, niter=2 6.4e-6, niter=4 1.2e-6 (the fp32 floor), niter=0 1.6e-2
RANDOMIZED_SVD_BOUND = {1: 1e-3, 2: 5e-5, 4: 1e-5}


@pytest.mark.parametrize("niter", sorted(RANDOMIZED_SVD_BOUND))
def test_randomized_svd_error_and_determinism(niter):
    w, r = decaying_spectrum_matrix(), 32
    u, s, vt = top_r_svd(w, r, "exact")
    exact = (u * s) @ vt

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        rng_state = torch.random.get_rng_state()
        u1, s1, vt1 = top_r_svd(w, r, "randomized", niter)
        assert torch.equal(torch.random.get_rng_state(), rng_state)  # seeded privately, global RNG untouched
        torch.manual_seed(2)  # whatever the global RNG's state, the same result
        u2, s2, vt2 = top_r_svd(w, r, "randomized", niter)
    assert torch.equal(u1, u2) and torch.equal(s1, s2) and torch.equal(vt1, vt2)

    assert u1.shape == (256, r) and s1.shape == (r,) and vt1.shape == (r, 512)
    error = ((u1 * s1) @ vt1 - exact).norm() / exact.norm()
    assert error <= RANDOMIZED_SVD_BOUND[niter]
    assert orthonormality_error(u1) <= 1e-5 and orthonormality_error(vt1.T) <= 1e-5


def test_randomized_svd_with_no_power_iteration_is_worse():
    """Control for the bounds above: without subspace iterations the error is far above them."""
    w, r = decaying_spectrum_matrix(), 32
    u, s, vt = top_r_svd(w, r, "exact")
    u0, s0, vt0 = top_r_svd(w, r, "randomized", 0)
    exact = (u * s) @ vt
    assert ((u0 * s0) @ vt0 - exact).norm() / exact.norm() > 10 * RANDOMIZED_SVD_BOUND[1]


def test_svd_runs_in_fp32_for_a_bf16_model(tiny_model_factory):
    base = tiny_model_factory(dtype="bfloat16")
    originals = target_weights(base)
    model = apply_method(base, {"name": "sorsa", "rank": RANK})
    for name, layer in sorsa_layers(model).items():
        w = originals[name]
        assert layer.weight.dtype == torch.bfloat16
        assert {layer.sorsa_U.dtype, layer.sorsa_S.dtype, layer.sorsa_Vt.dtype} == {torch.float32}
        u, s, vt = torch.linalg.svd(w.float(), full_matrices=False)  # fp32 SVD of the upcast bf16 weight
        u, s, vt = u[:, :RANK], s[:RANK], vt[:RANK]
        sign = torch.sign((u * layer.sorsa_U).sum(0))
        # far tighter than a bf16 SVD could be (bf16 eps is 7.8e-3)
        torch.testing.assert_close(layer.sorsa_U, u * sign, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.sorsa_Vt, vt * sign[:, None], rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.sorsa_S, s, rtol=1e-6, atol=0)
        # the residual is the fp32 difference cast once to bf16 (default bf16 tolerance: one rounding)
        torch.testing.assert_close(layer.weight, (w.float() - (u * s) @ vt).to(torch.bfloat16))


def test_sorsa_forward_never_saves_a_dense_update():
    """Only the frozen weight may be an (out x in) tensor saved for backward."""
    layer = sorsa_layer(48, 40)
    perturb_trainable(layer)
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(4), requires_grad=True)

    def saved_dense(forward) -> tuple[list, bool]:
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward().square().sum().backward()
        # an (out x in) matrix, or its transpose (F.linear saves W^T for a batched input)
        dense = [t for t in saved if sorted(t.shape) == [40, 48] and t.data_ptr() != layer.weight.data_ptr()]
        weight_saved = any(t.data_ptr() == layer.weight.data_ptr() for t in saved)
        return dense, weight_saved

    dense, weight_saved = saved_dense(lambda: layer(x))
    assert dense == [] and weight_saved
    assert all(p.grad is not None for p in (layer.sorsa_U, layer.sorsa_S, layer.sorsa_Vt))
    # control: the reference's dense forward, x (W_res + U S V^T)^T, is caught by the same check
    dense, _ = saved_dense(
        lambda: F.linear(x, layer.weight + (layer.sorsa_U * layer.sorsa_S) @ layer.sorsa_Vt)
    )
    assert len(dense) >= 1


# ---------------------------------------------------------------- bad input


BAD_CONFIGS = [
    pytest.param({"name": "qlora"}, "unknown method 'qlora'", id="unknown-method"),
    pytest.param({"rank": 0}, "rank must be a positive integer, got 0", id="rank-0"),
    pytest.param({"rank": -4}, "rank must be a positive integer, got -4", id="rank-negative"),
    pytest.param(  # k_proj is 32 x 64 in the tiny model
        {"rank": 33},
        r"rank 33 is larger than min\(out, in\) = 32 of model\.layers\.0\.self_attn\.k_proj",
        id="rank-too-large",
    ),
    pytest.param(
        {"target_modules": ["qkv_proj"]}, r"target_modules \['qkv_proj'\] match no nn\.Linear", id="no-target"
    ),
    pytest.param({"alpha": 0}, "alpha must be > 0", id="alpha-0"),
    pytest.param({"alpha": -8.0}, "alpha must be > 0", id="alpha-negative"),
    pytest.param({"rnak": 8}, r"unknown method config keys \['rnak'\]", id="unknown-key"),
    pytest.param(  # it used to be accepted and ignored (training reads train.weight_decay)
        {"weight_decay": 0.1},
        r"unknown method config keys \['weight_decay'\]; set weight_decay as train\.weight_decay",
        id="weight-decay-is-a-training-setting",
    ),
]


@pytest.mark.parametrize("method", ["sorsa", "pissa", "lora", "milora", "svfit"])
@pytest.mark.parametrize(("override", "message"), BAD_CONFIGS)
def test_bad_config_raises_before_any_svd(tiny_model_factory, monkeypatch, method, override, message):
    model = tiny_model_factory()
    svd_calls = forbid_svd(monkeypatch)
    with pytest.raises(ValueError, match=message):
        apply_method(model, {"name": method, "rank": RANK, **override})
    assert svd_calls == []
    # nothing was changed: no adapter layers, nothing frozen
    assert not sorsa_layers(model) and not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_milora_uses_the_exact_svd_whatever_svd_says(tiny_model_factory):
    """A randomized SVD sketches the top of the spectrum and cannot give MiLoRA's minor components: like the
    other LoRA inits MiLoRA ignores ``svd`` (the mini/small experiments set randomized for every method)."""
    exact = apply_method(tiny_model_factory(), {"name": "milora", "rank": RANK})
    randomized = apply_method(tiny_model_factory(), {"name": "milora", "rank": RANK, "svd": "randomized"})
    first, second = exact.state_dict(), randomized.state_dict()
    assert sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)
