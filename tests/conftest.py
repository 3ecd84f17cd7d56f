"""Shared fixtures: tiny random Llama models, a fixed batch of token ids, the packaged offline model.

The offline SmolLM2 lives in the default cache (``$SORSA_CACHE_DIR`` or ``~/.cache/sorsa_repro``); the
tests never redirect it, so the dequantized model is built at most once per machine.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sorsa_repro.models import load_base_model, offline_model_path


@pytest.fixture(scope="session")
def offline_model_dir() -> Path:
    """Folder of the dequantized offline SmolLM2 (config, safetensors, tokenizer), built on first use."""
    return offline_model_path()


@pytest.fixture(scope="session")
def tiny_model_factory(offline_model_dir) -> Callable[..., torch.nn.Module]:
    """``make(seed=0, dtype="float32")`` -> a fresh 2-layer random Llama in eval mode.

    The same seed gives the same weights, so two calls give two independent copies of one base model
    (one to adapt, one to compare with, or a "fresh base" to load an adapter into). Each (seed, dtype)
    is loaded once with ``load_base_model`` and handed out as deep copies, which callers may modify.
    """
    loaded: dict[tuple[int, str], torch.nn.Module] = {}

    def make(seed: int = 0, dtype: str | torch.dtype = "float32") -> torch.nn.Module:
        key = (seed, str(dtype).removeprefix("torch."))
        if key not in loaded:
            loaded[key], _ = load_base_model("tiny-random", dtype=dtype, seed=seed)
        return copy.deepcopy(loaded[key])

    return make


@pytest.fixture(scope="session")
def tiny_input_ids() -> torch.Tensor:
    """A fixed batch of token ids (2 sequences x 16 tokens) inside the tiny model's vocabulary."""
    return torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(1234))


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's tiny-tensor tests on one intra-op thread (opt in with ``usefixtures``).

    On a 2-core machine shared with other work, two OpenMP threads per tiny op mostly wait for each
    other: measured here under load, 10 s with two threads against 1.6 s with one for the same tests.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Killed(Exception):
    """Stands for a kill in the middle of training (``train_killed_after_step``)."""


def train_killed_after_step(cfg, step: int, monkeypatch) -> Path:
    """Run ``cfg``'s training and stop it right after optimizer step ``step`` as a kill would; the run folder."""
    from sorsa_repro.training.module import FineTuneModule
    from sorsa_repro.training.task import run_training

    original = FineTuneModule.on_train_batch_end

    def die_after_step(self, *args):
        if self.trainer.global_step == step:
            raise Killed
        return original(self, *args)

    monkeypatch.setattr(FineTuneModule, "on_train_batch_end", die_after_step, raising=False)
    with pytest.raises(Killed):
        run_training(cfg)
    monkeypatch.undo()
    return Path(cfg.run_dir)
