"""The method registry (sorsa_repro/method_registry.py): one entry per method, and everything that needs to know a
method reads it: apply_method, validation, counts, adapters and exports, the training hooks, the display names,
the base-changing list, the untrained and data-driven methods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from sorsa_repro import method_registry as registry
from sorsa_repro.methods import apply_method, find_targets, trainable_params_on_meta
from sorsa_repro.methods.config import DATA_METHODS, METHODS, UNTRAINED_METHODS
from sorsa_repro.methods.layers_io import AdapterLayer
from sorsa_repro.methods.sorsa import SORSALinear
from sorsa_repro.models import tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
SIXTEEN = ("full", "lora", "pissa", "dora", "olora", "sorsa", "milora", "svfit", "mica", "miss", "eva", "corda",
           "kasa", "soma", "salt", "sst")  # fmt: skip


def test_every_registered_method_has_its_yaml_and_every_yaml_an_entry():
    yamls = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "conf" / "method").glob("*.yaml")}
    assert set(yamls) == set(registry.names()) == set(METHODS)
    assert all(config["name"] == stem for stem, config in yamls.items())
    assert set(SIXTEEN) | {"base", "peft"} == set(METHODS)


def test_the_methods_sweep_runs_every_trainable_method_and_the_base_model():
    sweep = yaml.safe_load((ROOT / "conf" / "sweep" / "methods.yaml").read_text())
    listed = sweep["hydra"]["sweeper"]["params"]["method"].split(",")
    assert sorted(listed) == sorted({*SIXTEEN, "base"}) and listed[0] == "base"


@pytest.mark.parametrize("entry", registry.ENTRIES, ids=lambda m: m.name)
def test_every_entry_is_complete_and_its_references_resolve(entry):
    assert entry.display and entry.source and entry.apply
    for reference in (entry.apply, entry.check, entry.count, entry.training):
        if reference:
            assert callable(registry.resolve(reference)), reference
    assert (entry.adapter is None) == (entry.name in ("full", "base"))


def test_the_lists_other_code_reads_come_from_the_registry():
    from sorsa_repro.reporting.aggregate import METHOD_NAMES, SEEDLESS
    from sorsa_repro.training.ortho import REGULARIZED_METHODS

    assert METHOD_NAMES == registry.display_names() and set(METHOD_NAMES) == set(METHODS)
    assert SEEDLESS == UNTRAINED_METHODS == ("base",)
    assert DATA_METHODS == ("eva", "corda")
    assert REGULARIZED_METHODS == ("sorsa",)
    assert {m.name for m in registry.ENTRIES if m.regularizer == "loss"} == {"kasa"}
    assert set(registry.base_changing_methods()) == {
        "pissa",
        "olora",
        "sorsa",
        "corda",
        "milora",
        "svfit",
        "kasa",
        "soma",
    }
    with pytest.raises(ValueError, match="unknown method 'qlora'; known: base, full, lora"):
        registry.get("qlora")


def test_reporting_reads_display_names_without_loading_torch():
    code = "import sys; import sorsa_repro.reporting.aggregate as a; print(a.METHOD_NAMES['salt'], 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["SALT", "False"]


def frozen_base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weight each adapted target applies besides its adapter (None where the layer has none: SST
    keeps the factorization instead of W)."""
    weights = {}
    for name, module in model.named_modules():
        clean = name.removeprefix("base_model.model.")
        if hasattr(module, "get_base_layer") and hasattr(module, "lora_A"):
            weights[clean] = module.get_base_layer().weight
        elif isinstance(module, SORSALinear) or (
            isinstance(module, AdapterLayer) and hasattr(module, "weight")
        ):
            weights[clean] = module.weight
    return weights


@pytest.mark.parametrize("name", [m for m in SIXTEEN if m not in ("full", "eva", "corda", "sst", "miss")])
def test_changes_base_says_what_the_init_does(tiny_model_factory, name):
    """The registry's ``changes_base`` is what applying the method does to the frozen base weights (EVA and CorDA
    need data, MiSS has no base layer of its own shape, SST keeps no W; full FT trains them)."""
    originals = {
        n: tiny_model_factory().get_submodule(n).weight
        for n in find_targets(tiny_model_factory(), ("q_proj",))
    }
    model = apply_method(tiny_model_factory(), {"name": name, "rank": 4})
    frozen = frozen_base_weights(model)
    changed = any(not torch.equal(frozen[n], w) for n, w in originals.items() if n in frozen)
    assert changed == registry.get(name).changes_base


def test_adding_a_method_is_one_entry(tiny_model_factory, monkeypatch):
    """A new entry is all apply_method, validation, counting and display need (here a toy method in a module of its
    own that freezes everything and records that it ran)."""
    calls = []

    def toy_apply(model, cfg, targets, batches, initial):
        calls.append((cfg.name, len(targets)))
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    monkeypatch.setitem(sys.modules, "toy_method", type(sys)("toy_method"))
    sys.modules["toy_method"].apply = toy_apply
    registry.resolve.cache_clear()
    entry = registry.Method("toy", "Toy", "tests", "toy_method:apply", rank_limit="none",
                            count="sorsa_repro.methods:count_by_applying")  # fmt: skip
    monkeypatch.setitem(registry.REGISTRY, "toy", entry)
    model = apply_method(tiny_model_factory(), {"name": "toy", "rank": 4})
    assert calls == [("toy", 14)] and model.method_config.name == "toy"
    assert trainable_params_on_meta(tiny_llama_config(), {"name": "toy", "rank": 4})[0] == 0
    assert registry.display_names()["toy"] == "Toy"
    registry.resolve.cache_clear()
