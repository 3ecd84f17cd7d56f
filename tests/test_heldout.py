"""The held-out loss: its rows (after the training subset, disjoint from it), its value against a hand
computation, and that measuring it changes nothing in training; the untrained base model's run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sorsa_repro.data import PadCollator, encode_examples, make_synthetic
from sorsa_repro.data.heldout import split_train_heldout
from sorsa_repro.data.sources import DataFormatError
from sorsa_repro.training.heldout import HeldOut, heldout_loss
from tests.test_training import compose_train, read_metrics, tiny_cfg

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_synthetic_heldout_rows_are_the_next_problems_never_the_training_ones():
    train, held = split_train_heldout("synthetic", 20, 16, seed=1234)
    assert train == make_synthetic(
        "train", 20, 1234
    )  # the training set is what it was without a held-out set
    assert held == make_synthetic("train", 36, 1234)[20:]
    assert {e["id"] for e in train}.isdisjoint(e["id"] for e in held)
    assert {e["key"] for e in train}.isdisjoint(e["key"] for e in held)  # not even the same arithmetic
    assert all(
        e["id"].startswith("synthetic/train/") for e in held
    )  # the training source, never the test split


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
def test_gsm8k_heldout_rows_follow_the_training_subset():
    train, held = split_train_heldout("gsm8k", 64, 32, data_dir=SHARED)
    assert [e["id"] for e in train] == [f"gsm8k/train/{i}" for i in range(64)]
    assert [e["id"] for e in held] == [f"gsm8k/train/{i}" for i in range(64, 96)]


def test_own_data_without_a_limit_holds_out_its_last_rows(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"query": f"q{i}", "response": f"r{i}"}) + "\n" for i in range(10)))
    train, held = split_train_heldout(str(path), None, 3)
    assert [e["query"] for e in train] == [f"q{i}" for i in range(7)]
    assert [e["query"] for e in held] == ["q7", "q8", "q9"]
    with pytest.raises(DataFormatError, match="only 2 rows after the 8 training rows"):
        split_train_heldout(str(path), 8, 3)
    assert split_train_heldout(str(path), 4, 0) == (train[:4], [])


def _encoded(tokenizer, n=5):
    examples = make_synthetic("train", n, 7)
    return encode_examples(tokenizer, examples, 128, tokenization="concatenated")


@pytest.fixture(scope="module")
def tokenizer():
    from sorsa_repro.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def test_heldout_loss_is_the_token_weighted_mean_of_a_hand_computation(tiny_model_factory, tokenizer):
    model = tiny_model_factory(seed=3)
    items = _encoded(tokenizer)
    collate = PadCollator(tokenizer.pad_token_id)
    total, tokens = 0.0, 0
    with torch.no_grad():  # one example at a time, no padding: -log p(token) summed over response tokens
        for item in items:
            ids = torch.tensor([item["input_ids"]])
            logp = F.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for pos, label in enumerate(item["labels"][1:]):
                if label != -100:
                    total -= float(logp[pos, label])
                    tokens += 1
    expected = total / tokens
    got = heldout_loss(model, [collate(items[:2]), collate(items[2:])])
    assert got == pytest.approx(expected, rel=1e-5)
    assert heldout_loss(model, [collate(items[i : i + 1]) for i in range(5)]) == pytest.approx(got, rel=1e-6)
    assert not model.training  # left as it was (the factory's models are in eval mode)
    model.train()
    heldout_loss(model, [collate(items)])
    assert model.training  # put back in training mode
    assert math.isnan(heldout_loss(model, []))


def test_heldout_schedule():
    batches = [{"input_ids": torch.zeros(2, 3)}]
    every = HeldOut(batches, every=4)
    assert [s for s in range(1, 11) if every.due(s, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if HeldOut(batches).due(s, 10)] == [10]
    assert not HeldOut([]).due(10, 10) and HeldOut(batches).rows == 2
    with pytest.raises(ValueError, match="heldout_every"):
        HeldOut(batches, every=-1)


def test_an_experiments_selected_rates_set_each_methods_multiplier():
    rule = "train.lr_multiplier='${lr_multiplier_for:${method.name}}'"  # as mini.yaml and small.yaml say it
    cfg = compose_train(
        "experiment=mini", "method=lora", "+lr_selection={default: 10, lora: 30, sorsa: 3}", rule
    )
    assert cfg.train.lr_multiplier == 30
    cfg = compose_train("experiment=mini", "+arm=sorsa_gamma0", "+lr_selection={default: 10, sorsa: 3}", rule)
    assert cfg.train.lr_multiplier == 3  # SORSA's control trains at SORSA's rate
    cfg = compose_train("experiment=mini", "method=dora", "+lr_selection={default: 10, sorsa: 3}", rule)
    assert cfg.train.lr_multiplier == 10  # a method outside the study: the default


@pytest.mark.slow
def test_measuring_the_heldout_loss_changes_nothing_in_training(tmp_path):
    measured = run_training_rows(tiny_cfg(tmp_path / "a", "sorsa", "train.heldout_every=1"))
    unmeasured = run_training_rows(tiny_cfg(tmp_path / "b", "sorsa", "data.heldout_size=0"))
    assert [r["loss"] for r in measured] == [r["loss"] for r in unmeasured]
    assert all(r["heldout_loss"] != "" for r in measured) and all(r["heldout_loss"] == "" for r in unmeasured)
    assert [r["step"] for r in measured] == ["1", "2", "3"]


def run_training_rows(cfg):
    from sorsa_repro.training.task import run_training

    run_dir = run_training(cfg)
    result = json.loads((run_dir / "result.json").read_text())
    rows = read_metrics(run_dir)
    last = [float(r["heldout_loss"]) for r in rows if r["heldout_loss"]]
    assert result["train"]["heldout_loss"] == (last[-1] if last else None)
    return rows


@pytest.mark.slow
def test_the_base_model_run_is_the_floor_and_one_folder_for_every_seed(tmp_path, tiny_model_factory):
    from sorsa_repro.training.task import prepare_training, run_training

    cfgs = [tiny_cfg(tmp_path, "base", f"seed={s}", f"train.lr_multiplier={m}") for s, m in ((0, 1), (5, 30))]
    assert cfgs[0].run_dir == cfgs[1].run_dir and Path(cfgs[0].run_dir).name.startswith("base-r4-s0-")
    run_dir = run_training(cfgs[0])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["trainable_params"] == 0 and result["train"]["steps"] == 0
    assert result["run"]["seed"] == 0 and result["protocol"]["train"]["steps"] == 3  # the experiment's budget
    prepared = prepare_training(cfgs[0])
    expected = heldout_loss(tiny_model_factory(seed=0), prepared.data.heldout_batches(16))
    assert result["train"]["heldout_loss"] == pytest.approx(expected, rel=1e-6)
    assert [r["step"] for r in read_metrics(run_dir)] == ["0"]
    assert (run_dir / "merged" / "config.json").exists() and not (run_dir / "adapter").exists()
    assert run_training(cfgs[1]) == run_dir  # the second seed finds it finished


def test_a_finished_training_only_job_is_skipped_before_anything_loads(tmp_path):
    from sorsa_repro.results import atomic_write_json
    from sorsa_repro.train import finished_training_only
    from sorsa_repro.training.identity import config_hash

    cfg = tiny_cfg(tmp_path, "base")
    run_dir = Path(cfg.run_dir)
    assert not finished_training_only(cfg, run_dir)  # nothing there yet
    atomic_write_json(
        run_dir / "result.json", {"config_hash": config_hash(cfg), "train": {"status": "finished"}}
    )
    assert finished_training_only(cfg, run_dir)
    assert not finished_training_only(tiny_cfg(tmp_path, "base", "evaluate.benchmarks=[synthetic]"), run_dir)
    atomic_write_json(run_dir / "result.json", {"config_hash": "another", "train": {"status": "finished"}})
    assert not finished_training_only(cfg, run_dir)  # another config's run: the normal path refuses it


@pytest.mark.slow
def test_a_training_only_study_run_leaves_no_checkpoint_behind(tmp_path):
    """keep_checkpoints=false (the learning-rate studies): a finished run removes checkpoints/ (full FT's are
    GBs each); without exports no final checkpoint is written at all."""
    from sorsa_repro.training.task import run_training

    extra = ("train.keep_checkpoints=false", "train.save_adapter=false", "train.export_merged=false")
    run_dir = run_training(tiny_cfg(tmp_path / "a", "lora", *extra))
    assert json.loads((run_dir / "result.json").read_text())["train"]["status"] == "finished"
    assert not (run_dir / "checkpoints").exists()
    kept = run_training(tiny_cfg(tmp_path / "b", "lora"))  # the default keeps them, to resume an export
    assert (kept / "checkpoints" / "last.ckpt").exists()
