"""Spectral analysis: metrics on matrices with known answers, the callback, the compare command, figures."""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from sorsa_repro.analysis import SVD, parse_layer_name, spectral_metrics, spectral_table, svd

F64 = torch.float64


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))[0]


@pytest.fixture
def w0() -> torch.Tensor:
    return torch.randn(40, 32, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_identity_is_zero_change(w0):
    m = spectral_metrics(w0, w0.clone(), dtype=F64)
    assert m["d_sigma"] == 0 and m["d_d"] == pytest.approx(0, abs=1e-12)
    assert m["intruders_eps0.5"] == 0 and m["k"] == 10


def test_rotation_keeps_singular_values(w0):
    gen = torch.Generator().manual_seed(1)
    wt = _orthogonal(40, gen) @ w0 @ _orthogonal(32, gen)
    m = spectral_metrics(w0, wt, dtype=F64)
    assert m["d_sigma"] == pytest.approx(0, abs=1e-10) and m["d_sigma_rel"] == pytest.approx(0, abs=1e-12)
    assert m["d_d"] > 0.5  # random rotations scramble the vectors


def test_rescaling_keeps_singular_vectors(w0):
    U, s, Vh = svd(w0, F64)
    m = spectral_metrics(w0, U @ torch.diag(1.5 * s) @ Vh, dtype=F64)
    assert m["d_d"] == pytest.approx(0, abs=1e-10) and m["d_d_topk"] == pytest.approx(0, abs=1e-10)
    assert m["d_sigma"] == pytest.approx(0.5 * s.mean().item(), rel=1e-10)
    assert m["d_sigma_rel"] == pytest.approx(0.5, rel=1e-10)


def test_sign_flips_are_not_change(w0):
    U, s, Vh = svd(w0, F64)
    flip = torch.where(torch.arange(32) % 3 == 0, -1.0, 1.0).to(F64)
    # the same matrix with an equally valid SVD whose vector pairs have flipped signs
    m = spectral_metrics(None, w0, svd0=SVD(U * flip, s, flip[:, None] * Vh))
    assert m["d_d"] == pytest.approx(0, abs=1e-10)
    # a different matrix (u_i -> -u_i) whose singular vectors differ from W0's only in sign
    m = spectral_metrics(w0, (U * flip) @ torch.diag(s) @ Vh, dtype=F64)
    assert m["d_d"] == pytest.approx(0, abs=1e-10) and m["d_sigma"] == pytest.approx(0, abs=1e-10)


def test_intruder_dimension():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(64, 64, generator=gen, dtype=F64)
    U, s, Vh = svd(w0, F64)
    # a direction spread over the bottom 50 left (right) vectors: |cos| = 1/sqrt(50) = 0.14 with each of them
    x, y = U[:, 14:].sum(1) / 50**0.5, Vh[14:].sum(0) / 50**0.5
    m = spectral_metrics(w0, w0 + 10 * s[0] * torch.outer(x, y), dtype=F64)
    assert (m["intruders_eps0.1"], m["intruders_eps0.3"], m["intruders_eps0.5"]) == (0, 1, 1)
    small = spectral_metrics(w0, w0 + 1e-3 * torch.randn(64, 64, generator=gen, dtype=F64), dtype=F64)
    assert (small["intruders_eps0.1"], small["intruders_eps0.3"], small["intruders_eps0.5"]) == (0, 0, 0)


def test_float_dtypes_and_errors(w0):
    m = spectral_metrics(w0.to(torch.bfloat16), w0.to(torch.bfloat16) * 2, k=4, eps=(0.2,))
    assert m["d_sigma_rel"] == pytest.approx(1, rel=1e-5) and set(m) >= {"intruders_eps0.2", "d_d_topk"}
    with pytest.raises(ValueError):
        spectral_metrics(w0, w0.T)
    with pytest.raises(ValueError):
        spectral_metrics(None, w0)


def test_parse_layer_name_and_table(w0):
    assert parse_layer_name("model.layers.12.mlp.down_proj") == (12, "down_proj")
    assert parse_layer_name("base_model.model.model.layers.3.self_attn.q_proj.base_layer") == (3, "q_proj")
    assert parse_layer_name("lm_head") == (None, "lm_head")
    df = spectral_table(
        {"model.layers.0.self_attn.q_proj": (w0, w0), "model.layers.1.mlp.up_proj": (w0, 2 * w0)}
    )
    assert df.index.name == "layer" and list(df["module"]) == ["q_proj", "up_proj"]
    assert list(df["layer_num"]) == [0, 1] and df["d_sigma"].iloc[0] == 0 and df["d_sigma"].iloc[1] > 0


# --- callback ---------------------------------------------------------------------------------------


def _train(tmp_path, callback=None, max_steps=5) -> list[float]:
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        """A frozen linear layer plus a LoRA-like update, with dropout so that RNG use would show."""

        def __init__(self):
            super().__init__()
            self.base = nn.Linear(16, 12).requires_grad_(False)
            self.A = nn.Parameter(0.1 * torch.randn(4, 16))
            self.B = nn.Parameter(torch.zeros(12, 4))
            self.v = nn.Linear(16, 12)
            self.drop = nn.Dropout(0.2)
            self.losses = []

        def forward(self, x):
            return self.base(x) + self.drop(x) @ self.A.T @ self.B.T + self.v(self.drop(x))

        def training_step(self, batch, batch_idx):
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    pl.seed_everything(0, verbose=False)
    model = Tiny()
    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randn(64, 12))
    trainer = pl.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback] if callback else [],
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4, shuffle=True))
    return model.losses


def _tiny_weights(model):
    yield "model.layers.0.self_attn.q_proj", (model.base.weight + model.B @ model.A).detach().float()
    yield "model.layers.0.self_attn.v_proj", model.v.weight.detach().float()


def test_callback_records_without_changing_training(tmp_path):
    from sorsa_repro.training.spectral_callback import SpectralCallback

    cb = SpectralCallback(every_n_steps=2, k=3, target_modules=["q_proj"], weights_fn=_tiny_weights)
    with_cb = _train(tmp_path / "a", cb)
    without = _train(tmp_path / "b")
    assert with_cb == without and len(with_cb) == 10  # 5 steps x 2 accumulated batches

    df = pd.read_csv(tmp_path / "a" / "spectral.csv")
    assert list(df["step"]) == [2, 4, 5] and set(df["module"]) == {"q_proj"}
    assert list(df.columns[:4]) == ["step", "layer", "module", "layer_num"]
    assert (df["d_sigma"] > 0).all() and (df["k"] == 3).all()
    assert not (tmp_path / "b" / "spectral.csv").exists()


@pytest.mark.parametrize("method", ["sorsa", "lora", "full"])
def test_callback_with_effective_weights(tmp_path, method):
    """The default weights function on a LightningModule that wraps an adapted tiny Llama as .model."""
    import lightning.pytorch as pl
    from transformers import LlamaConfig, LlamaForCausalLM

    from sorsa_repro.methods import apply_method
    from sorsa_repro.training.spectral_callback import SpectralCallback

    class Wrapper(pl.LightningModule):
        def __init__(self):
            super().__init__()
            config = LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=64,
            )
            self.model = apply_method(LlamaForCausalLM(config), {"name": method, "rank": 4})

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0], labels=batch[0]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    pl.seed_everything(0, verbose=False)
    ids = torch.randint(0, 64, (8, 12))
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SpectralCallback(every_n_steps=1, k=4, path=tmp_path / "s.csv")],
    )
    trainer.fit(Wrapper(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=4))
    df = pd.read_csv(tmp_path / "s.csv")
    assert list(df.groupby("step").size()) == [14, 14]  # 7 projections x 2 layers
    assert df["layer"].iloc[0] == "model.layers.0.self_attn.q_proj" and (df["d_sigma"] > 0).all()


# --- compare command --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llamas(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llamas")
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base")
    model.save_pretrained(root / "same")
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.add_(0.1 * torch.randn(32, 32))
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(root / "tuned")
    return root


def test_compare_identical_and_changed(tiny_llamas, tmp_path):
    from sorsa_repro.analysis.compare import compare_models, main

    out = main([f"base={tiny_llamas / 'base'}", f"tuned={tiny_llamas / 'same'}", f"out={tmp_path / 's.csv'}"])
    same = pd.read_csv(out, index_col="layer")
    assert len(same) == 14 and set(same["module"]) >= {"q_proj", "down_proj"}
    assert same["d_sigma"].abs().max() < 1e-6 and same["d_d"].abs().max() < 1e-5

    changed = compare_models(str(tiny_llamas / "base"), str(tiny_llamas / "tuned"), k=4)
    moved = changed[changed["d_sigma"] > 1e-4]
    assert set(moved.index) == {"model.layers.1.self_attn.q_proj", "model.layers.0.mlp.down_proj"}
    assert moved.loc["model.layers.1.self_attn.q_proj", "d_d"] > 0.01
    assert moved.loc["model.layers.0.mlp.down_proj", "d_sigma_rel"] == pytest.approx(0.5, rel=1e-4)
    # loading the whole models gives the same numbers as reading tensors one at a time
    whole = compare_models(str(tiny_llamas / "base"), str(tiny_llamas / "tuned"), k=4, lazy=False)
    pd.testing.assert_frame_equal(whole, changed)


# --- figures ----------------------------------------------------------------------------------------


def _fake_run(root, name, run_block, seed):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for step in (10, 20, 30):
        for layer in range(3):
            for module in ("q_proj", "v_proj", "down_proj"):
                r = torch.rand(4, generator=gen).tolist()
                rows.append(
                    dict(step=step, layer=f"model.layers.{layer}.x.{module}", module=module, layer_num=layer)
                    | dict(d_sigma=step * r[0], d_sigma_rel=r[1], d_sigma_topk=r[0], d_d=step * r[2] / 100)
                    | dict(
                        d_d_topk=r[3], k=10, **{"intruders_eps0.1": 1, "intruders_eps0.5": int(1 + 5 * r[0])}
                    )
                )
    run = root / name
    run.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "spectral.csv", index=False)
    if run_block:
        (run / "result.json").write_text(json.dumps({"run": run_block}))


def test_figures_regenerate_identically(tmp_path):
    from sorsa_repro.reporting.aggregate import load_experiment
    from sorsa_repro.reporting.spectral_figures import write_spectral_figures

    exp = tmp_path / "results" / "mini"
    _fake_run(exp, "sorsa-r8-s0", {"experiment": "mini", "method": "sorsa", "rank": 8, "seed": 0}, 0)
    _fake_run(exp, "sorsa-r8-s1", None, 1)  # method and seed from the folder name
    _fake_run(exp, "lora-r8-s0", None, 2)
    gamma0 = {"experiment": "mini", "method": "sorsa", "rank": 8, "seed": 0, "variant": "gamma0"}
    _fake_run(exp, "sorsa-gamma0-r8-s0", gamma0, 3)  # a variant: its own row, never averaged with SORSA
    (exp / "pissa-r8-s0").mkdir()  # a run without spectral.csv is skipped

    def write():
        return write_spectral_figures(load_experiment(tmp_path / "results", "mini"), tmp_path / "tables")

    paths = write()
    assert {p.name for p in paths} >= {"spectral_curves.png", "spectral_curves.pdf", "spectral_summary.md"}
    assert {p.name for p in paths} >= {"spectral_heatmap_d_d.pdf", "spectral_intruders.png"}
    first = {p: p.read_bytes() for p in paths}
    assert write() == paths
    assert all(p.read_bytes() == data for p, data in first.items())

    summary = (tmp_path / "tables" / "spectral_summary.md").read_text()
    rows = [line.split(" | ")[:2] for line in summary.splitlines() if line.startswith("| ")][1:]  # no header
    assert rows == [["| LoRA r=8", "1"], ["| SORSA r=8", "2"], ["| SORSA r=8 [variant=gamma0]", "1"]], summary
    (exp / "lora-r8-s0" / "spectral.csv").unlink()
    for run in ("sorsa-r8-s0", "sorsa-r8-s1", "sorsa-gamma0-r8-s0"):
        (exp / run / "spectral.csv").unlink()
    assert write() == []
