"""A run's exports outside this suite: loading SORSA's and PiSSA's exports offline with plain transformers and
peft (the base from ``sorsa_repro.exports.base_model_path``), model cards that agree with adapter_config.json,
and pushing to the hub where a user is logged in (the hub mocked: no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from sorsa_repro import exports
from sorsa_repro.models import OFFLINE_HUB_ID

ROOT = Path(__file__).resolve().parents[1]

# run in a fresh process with HF_HUB_OFFLINE=1 (huggingface_hub reads it at import): the documented way
OFFLINE_LOADER = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from sorsa_repro.exports import base_model_path, export_kind, load_export

torch.set_num_threads(2)
out = {}
for run in sys.argv[1:]:
    merged = AutoModelForCausalLM.from_pretrained(f"{run}/merged")
    ids = AutoTokenizer.from_pretrained(f"{run}/merged")("What is 12 + 30? The answer is", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = merged(ids).logits
        for export in ("adapter", "adapter_lora"):
            path = f"{run}/{export}"
            try:
                kind = export_kind(path)
            except FileNotFoundError:
                continue
            if kind == "peft":  # plain peft on a plain transformers base
                base = AutoModelForCausalLM.from_pretrained(base_model_path(path))
                model = PeftModel.from_pretrained(base, path)
            else:  # SORSA's own format
                model = load_export(path)
            logits = model(ids).logits
            out[f"{run.rsplit('/', 1)[-1]}/{export}"] = {
                "kind": kind,
                "max_diff": (logits - reference).abs().max().item(),
                "same_argmax": bool((logits.argmax(-1) == reference.argmax(-1)).all()),
            }
print(json.dumps(out))
"""


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, offline_model_dir) -> dict[str, Path]:
    """SORSA and PiSSA on the offline SmolLM2, one optimizer step each, exported as training exports them."""
    from sorsa_repro.train import after_evaluation
    from sorsa_repro.training.task import run_training

    results = tmp_path_factory.mktemp("exports")
    runs = {}
    for method in ("sorsa", "pissa"):
        cfg = compose_train(
            "experiment=mini", f"method={method}", "method.target_modules=[q_proj,v_proj]", "data.limit=4",
            "train.max_steps=1", "train.spectral_every=0", "evaluate.benchmarks=[]", f"results_dir={results}",
        )  # fmt: skip
        runs[method] = run_training(cfg)
        after_evaluation(runs[method], cfg)  # the model cards, as the training command writes them
    return runs


@pytest.mark.slow
def test_sorsa_and_pissa_exports_load_offline_with_plain_peft_and_match_merged(trained_runs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SORSA_VERBOSE": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOADER, *(str(p) for p in trained_runs.values())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    sorsa, pissa = (trained_runs[m].name for m in ("sorsa", "pissa"))
    assert {k: v["kind"] for k, v in loaded.items()} == {
        f"{sorsa}/adapter": "sorsa",
        f"{sorsa}/adapter_lora": "peft",
        f"{pissa}/adapter": "peft",
    }
    for name, check in loaded.items():  # fp32 throughout (mini's precision)
        assert check["max_diff"] < 2e-3 and check["same_argmax"], (name, check)


@pytest.mark.slow
def test_the_base_command_prints_the_local_base_offline(trained_runs, offline_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for export in ("adapter", "adapter_lora"):
        proc = subprocess.run(
            [sys.executable, "-m", "sorsa_repro.exports", "base", f"path={trained_runs['sorsa'] / export}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == str(offline_model_dir)


@pytest.mark.slow
def test_model_cards_agree_with_the_adapter_configs(trained_runs):
    from sorsa_repro.methods.sorsa_io import ADAPTER_CONFIG

    expected = {  # export -> (library, what the card says about the folder's rank)
        ("sorsa", "adapter"): (None, "SORSA factors U, S, Vt of rank 16"),
        ("sorsa", "adapter_lora"): ("peft", "standard peft LoRA of rank 32 = 2 x 16"),
        ("sorsa", "merged"): ("transformers", "plain transformers model"),
        ("pissa", "adapter"): ("peft", "standard peft LORA of rank 32 = 2 x 16, converted"),
        ("pissa", "merged"): ("transformers", "plain transformers model"),
    }
    for (method, export), (library, rank_text) in expected.items():
        folder = trained_runs[method] / export
        text = (folder / "README.md").read_text()
        meta = yaml.safe_load(text.split("---")[1])
        if (folder / "adapter_config.json").is_file():
            config = json.loads((folder / "adapter_config.json").read_text())
            assert meta["base_model"] == config["base_model_name_or_path"] == OFFLINE_HUB_ID
            assert f"rank {config['r']}" in text
        elif (folder / ADAPTER_CONFIG).is_file():
            assert meta["base_model"] == json.loads((folder / ADAPTER_CONFIG).read_text())["base_model"]
        else:
            assert meta["base_model"] == OFFLINE_HUB_ID and meta["base_model_relation"] == "finetune"
        assert meta.get("library_name") == library and method in meta["tags"]
        assert rank_text in text, (method, export)
        assert f"{method}, rank 16" in text and "dequantized" in text  # which base weights it trained on
        # the papers' 3e-5 and 2e-5 at the multipliers mini's learning-rate study selected: SORSA x1, PiSSA x10
        lr = {"sorsa": "3e-05", "pissa": "0.0002"}[method]
        assert f"1 optimizer steps x 2 sequences, lr {lr}," in text and "synthetic, 4 examples" in text
        assert "Not evaluated yet" in text


def fake_export(tmp_path: Path) -> Path:
    from peft import LoraConfig

    run = tmp_path / "lora-r4-s0-0123abcd"
    LoraConfig(r=4, target_modules=["q_proj"], base_model_name_or_path=OFFLINE_HUB_ID).save_pretrained(
        run / "adapter"
    )
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "result.json").write_text(
        json.dumps({"run": {"experiment": "mini", "method": "lora", "rank": 4, "seed": 0}})
    )
    (run / "config.yaml").write_text("model:\n  name: smollm2-135m-instruct\n")
    return run / "adapter"


def test_push_to_hub_needs_a_login_and_uploads_the_folder_with_its_card(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    adapter = fake_export(tmp_path)
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)) or f"https://hf.co/{repo}")  # fmt: skip
    monkeypatch.setattr(
        huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw))
    )
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert exports.main(["push", f"path={adapter}", "repo=me/sorsa-test"]) == 2
    assert "not logged in to the Hugging Face hub" in capsys.readouterr().err and calls == []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    assert exports.main(["push", f"path={adapter}", "repo=me/sorsa-test", "private=true"]) == 0
    assert calls[0] == ("create", "me/sorsa-test", {"private": True, "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(adapter) and calls[1][1]["repo_id"] == "me/sorsa-test"
    card = (adapter / "README.md").read_text()  # written before the upload: it goes with the folder
    assert yaml.safe_load(card.split("---")[1])["base_model"] == OFFLINE_HUB_ID
    assert capsys.readouterr().out.strip() == "https://hf.co/me/sorsa-test"


def test_base_model_path_without_the_run_folder(tmp_path, offline_model_dir):
    adapter = fake_export(tmp_path)
    assert exports.base_model_path(adapter) == str(offline_model_dir)  # from the run's config.yaml
    copied = tmp_path / "elsewhere"
    adapter.rename(copied)  # away from its run folder: the adapter's own record (the hub id), not cached here
    assert exports.base_model_path(copied) == str(offline_model_dir)
    config = json.loads((copied / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(offline_model_dir)  # a local folder is used as it is
    (copied / "adapter_config.json").write_text(json.dumps(config))
    assert exports.base_model_path(copied) == str(offline_model_dir)
    config["base_model_name_or_path"] = "tiny-random"
    (copied / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="random model built in memory"):
        exports.base_model_path(copied)
