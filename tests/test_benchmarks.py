"""The benchmark scripts run (``--smoke``: tiny sizes) and write JSON with the expected keys and positive
numbers, so they do not rot between benchmark sessions. No timing is asserted."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import generation
from benchmarks.run import BENCHMARKS, main
from sorsa_repro.evaluation.backends import vllm_available

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROW_NUMBERS = {  # per benchmark: numeric columns that must be positive in every row
    "adapter_step": (
        "step_ms",
        "peak_mib",
        "saved_mib",
        "static_mib",
        "time_vs_lora",
        "peak_vs_lora",
        "trainable",
    ),
    "svd_init": ("total_s",),
    "generation": ("tokens_per_s", "generated_tokens", "generate_s", "load_s"),
    "train_throughput": ("tokens_per_s", "step_s", "tokens_per_step", "trainable", "params"),
    "cpu_contention": ("step_s", "slowdown", "vs_default"),
}


def run_smoke(name: str, tmp_path) -> dict:
    out = tmp_path / f"{name}.json"
    main(["--smoke", "--only", name, "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name and payload["smoke"] is True and payload["preset"] == "cpu"
    assert {"machine", "command", "settings", "columns", "rows", "wall_s"} <= set(payload)
    assert payload["machine"]["cpu_count"] >= 1 and payload["rows"]
    for row in payload["rows"]:
        assert set(payload["columns"]) <= set(row), row
        for key in ROW_NUMBERS[name]:
            assert isinstance(row[key], int | float) and math.isfinite(row[key]) and row[key] > 0, (key, row)
    return payload


def test_adapter_step_smoke(tmp_path):
    payload = run_smoke("adapter_step", tmp_path)
    variants = {r["variant"] for r in payload["rows"]}
    assert variants == {"sorsa", "sorsa_reference", "lora", "pissa", "full", "kasa", "soma", "salt", "sst"}
    assert all(r["init_s"] >= 0 for r in payload["rows"])
    assert all(r["time_vs_lora"] == 1 for r in payload["rows"] if r["variant"] == "lora")
    for checks in payload["targets"].values():
        assert set(checks) == {
            "time_vs_lora<=1.10",
            "peak_vs_lora<=1.05",
            "faster_than_reference",
            "leaner_than_reference",
        }
    # what autograd saves is deterministic: the reference layer keeps its dense update, SORSA does not
    for unit in {r["unit"] for r in payload["rows"]}:
        saved = {r["variant"]: r["saved_mib"] for r in payload["rows"] if r["unit"] == unit}
        assert saved["sorsa"] < saved["sorsa_reference"]


def test_svd_init_smoke(tmp_path):
    payload = run_smoke("svd_init", tmp_path)
    methods = {(r["spectrum"], r["method"]) for r in payload["rows"]}
    assert ("random", "exact") in methods and ("random", "randomized") in methods
    assert any(r["spectrum"].startswith("power_law") for r in payload["rows"])
    for row in payload["rows"]:
        assert 0 <= row["max_rel_err"] < 2 and row["matrices_measured"] >= 1


@pytest.mark.slow
def test_generation_smoke(tmp_path):
    payload = run_smoke("generation", tmp_path)
    assert [r["backend"] for r in payload["rows"]] == ["hf"]


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_generation_vllm_smoke():
    result = generation.run("cpu", smoke=True, backends=("vllm",))
    (row,) = result["rows"]
    assert row["backend"] == "vllm" and row["tokens_per_s"] > 0 and row["generated_tokens"] > 0


def test_train_throughput_smoke(tmp_path):
    payload = run_smoke("train_throughput", tmp_path)
    assert [r["method"] for r in payload["rows"]] == ["sorsa", "lora"]


@pytest.mark.slow
def test_cpu_contention_smoke(tmp_path):
    payload = run_smoke("cpu_contention", tmp_path)
    rows = {(r["policy"], r["competitor"]): r for r in payload["rows"]}
    assert set(rows) == {(p, c) for p in ("default", "passive") for c in (False, True)}
    assert all(rows[(p, False)]["slowdown"] == 1 for p in ("default", "passive"))
    assert rows[("default", False)]["vs_default"] == 1


def test_every_benchmark_is_tested():
    assert set(BENCHMARKS) == set(ROW_NUMBERS)
