"""Base-model loading: the packaged offline SmolLM2, hub ids without a network, the tiny random Llama."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from sorsa_repro.methods import DEFAULT_TARGETS, count_parameters, find_targets, trainable_params_on_meta
from sorsa_repro.models import OFFLINE_MODEL, load_base_model, load_config, resolve_dtype

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def smollm(offline_model_dir):
    """(model, tokenizer) of the offline SmolLM2-135M-Instruct, loaded once for this module."""
    return load_base_model(OFFLINE_MODEL)


def test_offline_model_has_architecture_tokenizer_and_chat_template(smollm, offline_model_dir):
    model, tokenizer = smollm
    assert (offline_model_dir / "config.json").exists() and (offline_model_dir / "tokenizer.json").exists()
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert len(find_targets(model, DEFAULT_TARGETS)) == 210  # 7 projections x 30 layers
    assert next(model.parameters()).dtype == torch.float32 and not model.training

    assert tokenizer.chat_template is not None
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == model.config.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_offline_model_is_a_trained_language_model(smollm):
    """The dequantized weights are a working model: fluent text is far likelier than the same words shuffled."""
    model, tokenizer = smollm

    def loss(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    fluent = loss("The capital of France is Paris. It is known for the Eiffel Tower.")
    shuffled = loss("Paris Tower Eiffel the for known is It. France of capital The is")
    assert fluent < 4.0  # measured 2.07 nats per token
    assert shuffled > fluent + 2.0  # measured 8.44


def test_meta_parameter_count_matches_the_loaded_model(smollm):
    model, _ = smollm
    trainable, total = trainable_params_on_meta(load_config(OFFLINE_MODEL), {"name": "full", "rank": 8})
    assert trainable == total == count_parameters(model)[1]  # tied embeddings counted once


def test_uncached_hub_id_offline_names_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    name = "sorsa-repro-tests/not-a-cached-model"
    with pytest.raises(OSError) as info:
        load_base_model(name)
    message = str(info.value)
    assert name in message and "HF_HUB_OFFLINE=1" in message
    assert OFFLINE_MODEL in message and "local folder" in message


def test_tiny_random_is_seeded():
    first, tokenizer = load_base_model("tiny-random", seed=7)
    second, _ = load_base_model("tiny-random", seed=7)
    other, _ = load_base_model("tiny-random", seed=8)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"]
    )
    assert first.config.vocab_size == len(tokenizer) and tokenizer.chat_template is not None


def test_tiny_random_in_bf16():
    model, _ = load_base_model("tiny-random", dtype="bf16", seed=7)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
