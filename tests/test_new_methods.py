"""KaSA, SoMA, SALT and SST: what each promises beyond the invariants every method shares (tests/test_methods.py:
output at init, merged == unmerged, adapter round trip, trainable parameters, counts at Llama-2-7B).

KaSA: the truncated base, its regularizer against a hand computation and entering the loss through the training
module, its adapter (peft truncates the fresh base again). SoMA: the frozen first blocks, the minor components,
the annealed weight decay. SALT: the factored forward against the dense formula, the ReLU that replaces the
official one, no dense matrix saved for backward, the frozen memory, its LoRA export. SST: sampling, the enhanced
gradient, the re-SVD, the optimizer state, and a resumed run reproducing the uninterrupted one across a re-SVD.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from sorsa_repro.methods import (
    DEFAULT_TARGETS,
    apply_method,
    find_targets,
    load_adapter,
    merge_model,
    save_adapter,
    save_lora_export,
)
from sorsa_repro.methods.peft_layers import lora_layers
from tests.test_methods import (
    PLAIN_PEFT_TOL,
    logits,
    perturb_trainable,
    rel_err,
    saved_tensors,
    target_weights,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RANK = 8


def fro_gram_minus_identity(rows: np.ndarray) -> float:
    """||M M^T - I||_F written out, for M whose rows are the vectors (r x n)."""
    r = rows.shape[0]
    total = 0.0
    for i in range(r):
        for j in range(r):
            total += (float(np.dot(rows[i], rows[j])) - (1.0 if i == j else 0.0)) ** 2
    return math.sqrt(total)


# ---------------------------------------------------------------- KaSA


def test_kasa_truncates_each_base_to_its_top_k_minus_r_components(tiny_model_factory, tiny_input_ids):
    """The frozen base is W's top min(out, in) - r part (its r smallest components dropped) and the update is 0
    at init, so the adapted model is the truncated model, not the base model (KaSA does not promise that)."""
    originals = target_weights(tiny_model_factory())
    model = apply_method(tiny_model_factory(), {"name": "kasa", "rank": RANK})
    truncated = tiny_model_factory()
    for name, layer in lora_layers(model).items():
        name = name.removeprefix("base_model.model.")
        w = originals[name].double()
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        keep = min(w.shape) - RANK
        want = (u[:, :keep] * s[:keep]) @ vt[:keep]
        assert rel_err(layer.get_base_layer().weight, want) <= 1e-5
        assert torch.linalg.matrix_rank(layer.get_base_layer().weight.double(), rtol=1e-6) == keep
        assert not layer.lora_B["default"].weight.any()  # B = 0: no update at init
        truncated.get_submodule(name).weight.data = want.float()
    assert rel_err(logits(model, tiny_input_ids), logits(truncated, tiny_input_ids)) <= 1e-5
    assert rel_err(logits(model, tiny_input_ids), logits(tiny_model_factory(), tiny_input_ids)) > 1e-3


def kasa_model_with_moved_factors(tiny_model_factory, beta=0.3, gamma=0.7):
    model = apply_method(
        tiny_model_factory(), {"name": "kasa", "rank": RANK, "kasa_beta": beta, "kasa_gamma": gamma}
    )
    perturb_trainable(model, seed=3, scale=0.2)  # B no longer zero, A and d moved: every term is non-trivial
    return model


def test_kasa_regularizer_equals_a_hand_computation(tiny_model_factory):
    """beta sum(d^2) + gamma (||B^T B - I_r||_F + ||A A^T - I_r||_F), summed over the 14 adapted matrices (peft's
    form: r x r Grams, a sum; methods/kasa.py), written out with loops in float64."""
    from sorsa_repro.methods.kasa import kasa_loss

    beta, gamma = 0.3, 0.7
    model = kasa_model_with_moved_factors(tiny_model_factory, beta, gamma)
    layers = lora_layers(model)
    assert len(layers) == 14
    expected = 0.0
    for layer in layers.values():
        a = layer.lora_A["default"].weight.detach().double().numpy()  # r x in: rows are the vectors
        b = layer.lora_B["default"].weight.detach().double().numpy()  # out x r: columns are
        d = layer.lora_diag["default"].detach().double().numpy()
        expected += beta * sum(float(v) ** 2 for v in d)
        expected += gamma * (fro_gram_minus_identity(b.T) + fro_gram_minus_identity(a))
    assert expected > 10  # far from orthonormal: the terms matter
    assert kasa_loss(model).item() == pytest.approx(expected, rel=1e-6)


def test_kasa_regularizer_enters_the_loss_through_the_training_module(tiny_model_factory, tiny_input_ids):
    """The module's training step returns task loss + the KaSA term; at init (B = 0) the task gives d no gradient,
    so d's gradient is exactly the regularizer's, 2 beta d. The logged loss stays the task's."""
    from sorsa_repro.methods.kasa import kasa_loss, training_hooks
    from sorsa_repro.training.module import FineTuneModule
    from sorsa_repro.training.optim import OptimSettings

    beta, gamma = 0.3, 0.7
    model = apply_method(
        tiny_model_factory(), {"name": "kasa", "rank": RANK, "kasa_beta": beta, "kasa_gamma": gamma}
    )
    hooks = training_hooks({"name": "kasa", "kasa_beta": beta, "kasa_gamma": gamma}, total_steps=4)
    module = FineTuneModule(model, optim=OptimSettings(1e-3), total_steps=4, hooks=hooks)
    batch = {"input_ids": tiny_input_ids, "attention_mask": torch.ones_like(tiny_input_ids),
             "labels": tiny_input_ids.clone()}  # fmt: skip
    task = model(**batch).loss.detach()
    loss = module.training_step(dict(batch), 0)
    torch.testing.assert_close(loss.detach(), task + kasa_loss(model).detach())
    assert module._window["loss"] == pytest.approx(task.item())  # metrics.csv logs the task loss
    loss.backward()
    for layer in lora_layers(model).values():
        d = layer.lora_diag["default"]
        torch.testing.assert_close(d.grad, 2 * beta * d.detach(), rtol=1e-5, atol=1e-8)
    assert hooks.record()["beta"] == beta and hooks.record()["gamma"] == gamma


def test_kasa_merge_and_adapter_round_trip(tiny_model_factory, tiny_input_ids, tmp_path):
    """Merged equals unmerged; the saved adapter is peft's own (init True, kasa_config), which plain peft and this
    suite's loader restore by truncating the fresh base again (an exact SVD: the same bits on this machine)."""
    model = kasa_model_with_moved_factors(tiny_model_factory)
    trained = logits(model, tiny_input_ids)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["kasa_config"] == {"beta": 0.3, "gamma": 0.7} and config["r"] == RANK
    assert not (tmp_path / "conversion.json").exists()  # peft cannot convert KaSA to a plain LoRA
    loaded = load_adapter(tiny_model_factory(), tmp_path)
    assert torch.equal(logits(loaded, tiny_input_ids), trained)
    plain = PeftModel.from_pretrained(tiny_model_factory(), tmp_path)
    assert rel_err(logits(plain, tiny_input_ids), trained) <= PLAIN_PEFT_TOL
    merged = merge_model(model)
    assert not lora_layers(merged) and rel_err(logits(merged, tiny_input_ids), trained) <= 1e-5


def test_kasa_settings_are_validated(tiny_model_factory):
    with pytest.raises(ValueError, match="must be smaller than min"):
        apply_method(tiny_model_factory(), {"name": "kasa", "rank": 32})  # k_proj is 32 x 64
    with pytest.raises(ValueError, match="goes with method=kasa"):
        apply_method(tiny_model_factory(), {"name": "lora", "rank": RANK, "kasa_beta": 0.1})
    with pytest.raises(ValueError, match="kasa_gamma must be >= 0"):
        apply_method(tiny_model_factory(), {"name": "kasa", "rank": RANK, "kasa_gamma": -1})


# ---------------------------------------------------------------- SoMA


def test_soma_freezes_the_first_blocks_and_trains_the_minor_components(tiny_model_factory):
    """round(2 / 3) = 1: block 0 stays a plain Linear with its weight; block 1's targets get MiLoRA's factors (the
    minor components, W_res = W - B0 A0). method.first_block moves the start."""
    from sorsa_repro.methods.soma import annealed_weight_decay, first_adapted_block

    originals = target_weights(tiny_model_factory())
    model = apply_method(tiny_model_factory(), {"name": "soma", "rank": RANK})
    milora = apply_method(tiny_model_factory(), {"name": "milora", "rank": RANK})
    layers = {n.removeprefix("base_model.model."): layer for n, layer in lora_layers(model).items()}
    reference = {n.removeprefix("base_model.model."): layer for n, layer in lora_layers(milora).items()}
    assert sorted(layers) == sorted(n for n in originals if n.startswith("model.layers.1."))
    for name, w in originals.items():
        if name.startswith("model.layers.0."):
            module = model.base_model.model.get_submodule(name)
            assert type(module) is nn.Linear and torch.equal(module.weight, w)
            continue
        for key in ("lora_A", "lora_B"):
            assert torch.equal(
                getattr(layers[name], key)["default"].weight, getattr(reference[name], key)["default"].weight
            )
        assert torch.equal(layers[name].get_base_layer().weight, reference[name].get_base_layer().weight)
    assert model.peft_config["default"].init_lora_weights == "soma"  # saved converted, as MiLoRA
    assert model.peft_config["default"].layers_to_transform == [1]
    assert first_adapted_block(model, type("C", (), {"first_block": None})()) == 1
    whole = apply_method(tiny_model_factory(), {"name": "soma", "rank": RANK, "first_block": 0})
    assert len(lora_layers(whole)) == 14
    with pytest.raises(ValueError, match="first_block=2: the model has 2 decoder blocks"):
        apply_method(tiny_model_factory(), {"name": "soma", "rank": RANK, "first_block": 2})
    # the paper's weight decay: 0.05 at the first step, 1e-5 after the last, cosine between
    assert annealed_weight_decay(0, 10, 0.05, 1e-5) == 0.05
    assert annealed_weight_decay(10, 10, 0.05, 1e-5) == pytest.approx(1e-5)
    assert annealed_weight_decay(5, 10, 0.05, 1e-5) == pytest.approx((0.05 + 1e-5) / 2)


def test_soma_anneals_the_optimizers_weight_decay_before_each_step(tiny_model_factory):
    from sorsa_repro.methods.soma import annealed_weight_decay, training_hooks

    model = apply_method(tiny_model_factory(), {"name": "soma", "rank": RANK})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    hooks = training_hooks({"weight_decay_start": 0.05, "weight_decay_end": 1e-5}, total_steps=8)
    seen = []
    for step in range(8):
        hooks.before_step(model, optimizer, step)
        seen.append(optimizer.param_groups[0]["weight_decay"])
    assert seen == [annealed_weight_decay(t, 8, 0.05, 1e-5) for t in range(8)]
    assert seen[0] == 0.05 and all(a > b for a, b in zip(seen, seen[1:], strict=False))


# ---------------------------------------------------------------- SALT


def salt_layer(out_f=48, in_f=40, rank=RANK, lora_rank=4, seed=0):
    from sorsa_repro.methods.salt import SALTLinear

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SALTLinear(nn.Linear(in_f, out_f, bias=True), rank, lora_rank)


def test_salt_factored_forward_equals_the_dense_formula():
    """y = x (U Sigma' V^T)^T + bias with Sigma' = diag(relu(a s_r + b), s_c) + [0 0; 0 X Y]: the official SALTLinear
    forward (SALT.py lines 84-129) without the elementwise ReLU on the X Y block (salt.py says why)."""
    layer = salt_layer()
    perturb_trainable(layer, seed=2, scale=0.3)
    with torch.no_grad():
        layer.salt_shift[:2] = -100.0  # two modified top singular values below 0: the ReLU clamps them to 0
    u = torch.cat([layer.salt_U_r, layer.salt_U_c], 1)
    vt = torch.cat([layer.salt_Vt_r, layer.salt_Vt_c], 0)
    s = layer.salt_S
    sigma = torch.diag(s).clone()
    top = F.relu(layer.salt_scale * s[:RANK] + layer.salt_shift)
    assert (top[:2] == 0).all()
    sigma[:RANK, :RANK] = torch.diag(top)
    sigma[RANK:, RANK:] += layer.salt_X @ layer.salt_Y
    dense = u @ sigma @ vt
    torch.testing.assert_close(
        u @ torch.diag(s) @ vt, layer.weight, rtol=0, atol=1e-5
    )  # the SVD reconstructs W
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, dense, layer.bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.effective_weight(), dense, rtol=1e-5, atol=1e-5)
        b, a = layer.lora_factors()  # the LoRA export: W' - W = B A, rank r + lora_rank
        assert b.shape == (48, RANK + 4) and a.shape == (RANK + 4, 40)
        torch.testing.assert_close(layer.weight + b @ a, dense, rtol=1e-5, atol=1e-5)


def test_salt_forward_saves_no_dense_matrix_for_backward():
    """Only W itself may be an (out x in) tensor saved for backward: the update goes through Y V_c^T (r_lora x in)
    and U_c X (out x r_lora), never U Sigma' V^T."""
    layer = salt_layer()
    perturb_trainable(layer, seed=2)
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(4), requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).square().sum().backward()
    dense = [t for t in saved if sorted(t.shape) == [40, 48] and t.data_ptr() != layer.weight.data_ptr()]
    assert dense == []
    assert all(getattr(layer, f"salt_{k}").grad is not None for k in ("scale", "shift", "X", "Y"))


def test_salt_and_sst_frozen_memory_per_4096_matrix():
    """Measured from the layers' own frozen tensors (built on the meta device: shapes and dtypes, no memory).
    SALT keeps U (4096 x 4096) and V^T beside W: 2 x 4096^2 float32 = 128 MiB extra per matrix. SST keeps U and V^T
    instead of W: 4096^2 = 64 MiB extra."""
    from sorsa_repro.methods.salt import SALTLinear
    from sorsa_repro.methods.sst import SSTLinear

    mib = 2**20
    with torch.device("meta"):
        base = nn.Linear(4096, 4096, bias=False)
    w_bytes = 4096 * 4096 * 4
    salt = SALTLinear(base, 128, 128)
    salt_extra = sum(b.numel() * b.element_size() for n, b in salt.named_buffers() if n != "salt_S")
    assert salt_extra == 2 * w_bytes and salt_extra / mib == 128
    sst = SSTLinear(base, 128)
    sst_frozen = sum(
        b.numel() * b.element_size() for n, b in sst.named_buffers() if n in ("sst_Uf", "sst_Vtf")
    )
    assert sst_frozen - w_bytes == w_bytes and (sst_frozen - w_bytes) / mib == 64
    assert not any(n == "weight" for n, _ in sst.named_parameters())  # SST keeps no W


def test_salt_adapter_and_lora_export_round_trip(tiny_model_factory, tiny_input_ids, tmp_path):
    """The own format holds the trained values and the base's singular values; loading runs the same exact SVD
    (signs fixed) and gives the same bits. adapter_lora/ (W' - W as a rank r + lora_rank LoRA) loads in plain
    peft. A base with other singular values is refused."""
    model = apply_method(tiny_model_factory(seed=3), {"name": "salt", "rank": RANK})
    perturb_trainable(model, scale=0.05)
    trained = logits(model, tiny_input_ids)
    save_adapter(model, tmp_path / "adapter")
    save_lora_export(model, tmp_path / "lora")
    loaded = load_adapter(tiny_model_factory(seed=3), tmp_path / "adapter")
    assert torch.equal(logits(loaded, tiny_input_ids), trained)
    save_adapter(loaded, tmp_path / "again")
    first, again = saved_tensors(tmp_path / "adapter"), saved_tensors(tmp_path / "again")
    assert sorted(first) == sorted(again) and all(torch.equal(first[k], again[k]) for k in first)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2 * RANK, 2 * RANK)  # r + lora_rank (= r), scaling 1
    plain = PeftModel.from_pretrained(tiny_model_factory(seed=3), tmp_path / "lora")
    assert rel_err(logits(plain, tiny_input_ids), trained) <= PLAIN_PEFT_TOL
    merged = merge_model(model)
    assert rel_err(logits(merged, tiny_input_ids), trained) <= 1e-5
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(tiny_model_factory(seed=4), tmp_path / "adapter")


# ---------------------------------------------------------------- SST


def sst_layer(out_f=48, in_f=40, rank=RANK, seed=0):
    from sorsa_repro.methods.sst import SSTLinear

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SSTLinear(nn.Linear(in_f, out_f, bias=True), rank)


def test_sst_starts_at_the_weight_with_r_sampled_vectors():
    from sorsa_repro.methods.salt import canonical_svd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = nn.Linear(40, 48, bias=True)
    layer = sst_layer()
    assert layer.sst_S.numel() == 40 and layer.sst_index.numel() == RANK
    assert len(set(layer.sst_index.tolist())) == RANK  # without replacement
    torch.testing.assert_close(layer.effective_weight(), base.weight.detach(), rtol=0, atol=1e-5)
    _, s, _ = canonical_svd(base.weight)
    torch.testing.assert_close(layer.sst_S.detach(), s)
    # the sampled slots of the frozen vectors are zero; the trainable ones hold them
    assert not layer.sst_Uf[:, layer.sst_index].any() and not layer.sst_Vtf[layer.sst_index].any()
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), base(x), rtol=1e-5, atol=1e-5)


def test_sst_samples_in_proportion_to_the_singular_values():
    """Round j samples with the layer's seed + j: the same round gives the same vectors; one dominant singular
    value is always sampled; over many rounds the frequencies follow s (sampling without replacement, r of k)."""
    layer = sst_layer(rank=1)
    with torch.no_grad():
        layer.new_round(0, resvd=False)
        first = layer.sst_index.clone()
        layer.new_round(0, resvd=False)
        assert torch.equal(layer.sst_index, first)
        layer.sst_S.copy_(torch.tensor([1000.0] + [1e-3] * 39))
        for j in range(1, 6):
            layer.new_round(j, resvd=False)
            assert layer.sst_index.tolist() == [0]
        layer.sst_S.copy_(torch.tensor([3.0, 1.0] + [0.0] * 38))
        counts = [0, 0]
        for j in range(6, 406):
            layer.new_round(j, resvd=False)
            counts[int(layer.sst_index)] += 1
        assert sum(counts) == 400 and 0.65 < counts[0] / 400 < 0.85  # expected 3 / 4


def test_sst_sampled_vectors_get_the_gradient_without_the_sigma_factor():
    """autograd's dL/dU_i = (dL/dW) v_i s_i; SST steps with (dL/dW) v_i: the gradient divided by s_i (likewise
    V^T's rows). The singular values get their plain gradient."""
    layer = sst_layer()
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    g = torch.randn(6, 48, generator=torch.Generator().manual_seed(3))
    (layer(x) * g).sum().backward()
    idx = layer.sst_index
    u = layer.sst_Uf.clone()
    u[:, idx] = layer.sst_U.detach()
    vt = layer.sst_Vtf.clone()
    vt[idx] = layer.sst_Vt.detach()
    s = layer.sst_S.detach()
    grad_w = g.T @ x  # dL/dW (out x in) of y = x W^T
    torch.testing.assert_close(layer.sst_U.grad, grad_w @ vt[idx].T, rtol=1e-4, atol=1e-5)  # no s factor
    torch.testing.assert_close(layer.sst_Vt.grad, u[:, idx].T @ grad_w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.sst_S.grad, ((u.T @ grad_w) * vt).sum(1), rtol=1e-4, atol=1e-5)
    assert (s[idx] - 1).abs().max() > 0.5  # the s factor would have mattered
    assert not torch.allclose(layer.sst_U.grad, grad_w @ vt[idx].T * s[idx], rtol=1e-2)  # autograd's own


def test_sst_round_keeps_the_weight_and_restores_orthonormal_vectors():
    """After training moved the vectors off orthonormality, a round's re-SVD gives the same effective weight with
    orthonormal singular vectors, samples again, and the hooks reset the optimizer state of the SST parameters."""
    from sorsa_repro.methods.sst import SSTHooks

    model = nn.Sequential(sst_layer())
    layer = model[0]
    optimizer = torch.optim.AdamW(list(layer.parameters()), lr=1e-2)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        layer(x).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    before = layer.effective_weight()
    u = layer.sst_Uf.clone()
    u[:, layer.sst_index] = layer.sst_U.detach()
    assert (u.T @ u - torch.eye(40)).abs().max() > 1e-3  # the vectors drifted
    assert len(optimizer.state) == 3
    hooks = SSTHooks(rounds=2, total_steps=6)
    hooks.after_step(model, optimizer, 2)  # not a round boundary (every 3 steps)
    assert len(optimizer.state) == 3
    hooks.after_step(model, optimizer, 3)
    torch.testing.assert_close(layer.effective_weight(), before, rtol=1e-4, atol=1e-5)
    u = layer.sst_Uf.clone()
    u[:, layer.sst_index] = layer.sst_U.detach()
    assert (u.T @ u - torch.eye(40)).abs().max() < 1e-4
    assert len(optimizer.state) == 0  # the moments of the old vectors are gone
    assert hooks.checkpoint_keys(model) == {"0.sst_Uf", "0.sst_Vtf", "0.sst_index", "0.sst_seed"}
    hooks.after_step(model, optimizer, 6)  # the last step: no round after it
    assert hooks.record()["round_steps"] == 3


@pytest.mark.slow
def test_sst_resume_across_a_resvd_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    """6 steps, 3 rounds (re-SVD after steps 2 and 4), a checkpoint at step 3, a kill after step 4: the resumed run
    restores the re-SVD'd vectors, the sampled indices and the optimizer state from the checkpoint and logs the
    uninterrupted run's losses; its adapter (the whole factorization) is the same bits."""
    from sorsa_repro.training.task import run_training
    from tests.conftest import train_killed_after_step
    from tests.test_training import read_metrics, tiny_cfg

    extra = ("train.max_steps=6", "train.checkpoint_every=3", "data.limit=24", "method.rounds=3")
    full = run_training(tiny_cfg(tmp_path / "full", "sst", *extra))
    expected = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(full)]
    result = json.loads((full / "result.json").read_text())
    assert result["train"]["method_hooks"]["round_steps"] == 2

    cfg = tiny_cfg(tmp_path / "part", "sst", *extra)
    run_dir = train_killed_after_step(cfg, 4, monkeypatch)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.endswith(".sst_Uf") for k in checkpoint["state_dict"])  # the frozen vectors are kept
    run_training(cfg)
    assert [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run_dir)] == expected
    first = load_file(str(full / "adapter" / "layers_adapter.safetensors"))
    again = load_file(str(run_dir / "adapter" / "layers_adapter.safetensors"))
    assert sorted(first) == sorted(again) and all(torch.equal(first[k], again[k]) for k in first)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("method", "override", "message"),
    [
        ("lora", "+method.rounds=3", "method.rounds=3 \\(a setting of method=sst\\)"),
        ("lora", "+method.weight_decay_start=0.1", "a setting of method=soma"),
        ("soma", "train.weight_decay=0.1", "anneals its own weight decay"),
        ("sst", "method.rounds=0", "method.rounds must be an integer >= 1"),
    ],
)
def test_a_methods_training_settings_go_with_it_only(tmp_path, method, override, message):
    from sorsa_repro.training.validate import training_settings
    from tests.test_training import compose_train

    cfg = compose_train("experiment=mini", "model=tiny_random", f"method={method}", override)
    with pytest.raises(ValueError, match=message):
        training_settings(cfg)


def test_the_spectral_analysis_sees_every_target_of_the_new_methods(tiny_model_factory):
    from sorsa_repro.methods import effective_weights

    targets = set(find_targets(tiny_model_factory(), DEFAULT_TARGETS))
    originals = target_weights(tiny_model_factory())
    for name in ("kasa", "soma", "salt", "sst"):
        model = apply_method(tiny_model_factory(), {"name": name, "rank": RANK})
        assert set(dict(effective_weights(model))) == targets, name  # the same 14 matrices for every method
    # SoMA's frozen first block is there, unchanged: the analysis sees the whole model's change
    soma = dict(effective_weights(apply_method(tiny_model_factory(), {"name": "soma", "rank": RANK})))
    assert all(torch.equal(soma[n], originals[n]) for n in targets if n.startswith("model.layers.0."))
