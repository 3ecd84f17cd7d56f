"""Evaluation: config, bad input, predictions/result.json, resume, merged == unmerged, vLLM == transformers."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sorsa_repro.data import build_prompt, load_eval_examples
from sorsa_repro.evaluate import CONF_DIR, model_override
from sorsa_repro.evaluation import backends
from sorsa_repro.evaluation import run as ev
from sorsa_repro.evaluation.backends import Completion, HFBackend
from sorsa_repro.evaluation.config import DEFAULT_MAX_NEW_TOKENS, EvalConfig
from sorsa_repro.evaluation.run import evaluate, evaluate_run
from sorsa_repro.methods import apply_method, merge_model
from sorsa_repro.models import OFFLINE_MODEL, load_base_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULT_KEYS = {
    "n",
    "limit",
    "max_new_tokens",
    "backend",
    "prompt_version",
    "wall_time_s",
    "tokens_per_s",
    "scores",
}
SCORE_KEYS = {"version", "strict", "flexible", "n_strict", "n_flexible"}
ROW_KEYS = {"id", "prompt", "completion", "n_tokens", "strict_answer", "flexible_answer", "gold", "correct"}
# a few GSM8K-style problems for when no benchmark data is around
GSM8K_ROWS = [
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "3 + 5 = 8\n#### 8"),
    ("A box holds 12 eggs. How many eggs are in 4 boxes?", "12 * 4 = 48\n#### 48"),
    ("Sara had 20 dollars and spent 7. How many dollars are left?", "20 - 7 = 13\n#### 13"),
    ("A train travels 60 miles per hour for 3 hours. How far does it go?", "60 * 3 = 180\n#### 180"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """$SORSA_DATA_DIR or shared/data when they hold GSM8K, else a tiny GSM8K-style folder."""
    for candidate in (os.environ.get("SORSA_DATA_DIR"), SHARED):
        if candidate and (Path(candidate) / "gsm8k" / "test.jsonl").is_file():
            return str(candidate)
    folder = tmp_path_factory.mktemp("data")
    lines = [json.dumps({"question": q, "answer": a}) for q, a in GSM8K_ROWS]
    (folder / "gsm8k").mkdir()
    (folder / "gsm8k" / "test.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeBackend:
    """Answers from a table (prompt -> text); records the prompts of every call."""

    name = "hf"

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def generate(self, prompts, max_new_tokens, stop=()):
        self.calls.append(list(prompts))
        return [Completion(self.answer(p), 5, "stop") for p in prompts]

    def close(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    """Install a FakeBackend (answer function settable) in place of the real ones."""
    backend = FakeBackend(lambda p: "")
    monkeypatch.setattr(ev, "make_backend", lambda *a, **k: backend)
    return backend


# ---------------------------------------------------------------------------------------------- config


def test_eval_yaml_matches_evalconfig():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["run=x"])
        assert compose("eval", overrides=["model=smollm2_135m"]).model.name == OFFLINE_MODEL
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg)
    defaults = EvalConfig(run="x")
    assert set(values) == {f for f in vars(defaults)}
    for key, value in values.items():
        assert value == getattr(defaults, key), key


def test_hf_batch_fills_a_gpu_and_suits_a_cpu(monkeypatch):
    assert EvalConfig(run="x").hf_batch_size == 8 and EvalConfig(run="x", batch_size=3).hf_batch_size == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert EvalConfig(run="x").hf_batch_size == 64


def test_the_evaluation_worker_gets_exactly_the_config(tmp_path, monkeypatch):
    from sorsa_repro.evaluation import worker

    cfg = EvalConfig(
        model="/some where/it's", benchmarks=["gsm8k", "math500"], limit=3, max_new_tokens={"gsm8k": 7}
    )
    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda mapping: seen.append(EvalConfig.from_mapping(mapping)))
    (tmp_path / "config.json").write_text(
        json.dumps(dataclasses.asdict(cfg))
    )  # as _evaluate_in_subprocess does
    worker.main([str(tmp_path / "config.json")])
    assert seen == [cfg]


def test_model_override_keeps_group_options():
    assert model_override("model=smollm2_135m") == "model=smollm2_135m"
    assert model_override(f"model={OFFLINE_MODEL}") == f"+model.name={OFFLINE_MODEL}"
    assert model_override("model=/a/b") == "+model.name=/a/b"
    assert model_override("limit=3") == "limit=3"
    # a conf/model entry brings its dtype
    assert EvalConfig(model={"name": "x/y", "dtype": "bfloat16"}).dtype == "bfloat16"


def test_max_new_tokens_per_benchmark():
    assert EvalConfig(run="r").max_new_tokens_for("gsm8k") == 1024
    assert EvalConfig(run="r").max_new_tokens_for("math") == 2048
    assert EvalConfig(run="r", max_new_tokens=16).max_new_tokens_for("math500") == 16
    assert EvalConfig(run="r", max_new_tokens={"math": 5}).max_new_tokens_for("gsm8k") == 1024


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "cfg, error, match",
    [
        ({"run": "r", "benchmarks": ["gsm9k"]}, ValueError, "unknown benchmark"),
        ({"run": "r", "backend": "tgi"}, ValueError, "unknown backend"),
        ({}, ValueError, "exactly one of"),
        ({"run": "r", "model": OFFLINE_MODEL}, ValueError, "exactly one of"),
        ({"run": "r", "limit": 0}, ValueError, "limit"),
        ({"run": "r", "dtype": "float8"}, ValueError, "dtype"),
        ({"run": "r", "max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"run": "r", "colour": "red"}, ValueError, "unknown evaluation option"),
    ],
)
def test_bad_config(cfg, error, match):
    with pytest.raises(error, match=match):
        EvalConfig.from_mapping(cfg)


def test_bad_input_fails_before_any_model_load(tmp_path, monkeypatch, data_dir):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "make_backend", no_model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate({"run": str(tmp_path / "missing"), "backend": "hf"})
    with pytest.raises(FileNotFoundError, match="no merged model"):
        evaluate({"run": str(tmp_path), "backend": "hf"})
    with pytest.raises(FileNotFoundError, match="gsm8k test data not found"):
        evaluate(
            {"model": OFFLINE_MODEL, "backend": "hf", "data_dir": str(tmp_path), "out_dir": str(tmp_path)}
        )
    with pytest.raises(FileNotFoundError, match="no config.json"):
        evaluate({"model": str(tmp_path / "nowhere" / "model"), "backend": "hf"})
    with pytest.raises(ValueError, match="vllm needs a folder"):
        evaluate({"model": "tiny-random", "backend": "vllm", "out_dir": str(tmp_path)})
    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    with pytest.raises(RuntimeError, match="vllm is not installed"):
        evaluate({"model": OFFLINE_MODEL, "backend": "vllm", "data_dir": data_dir, "out_dir": str(tmp_path)})
    assert backends.resolve_backend("auto") == "hf"
    assert not (tmp_path / "result.json").exists()


def test_cli_reports_bad_input(tmp_path):
    cmd = [sys.executable, "-m", "sorsa_repro.evaluate", f"run={tmp_path}", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "has no merged model" in proc.stderr


# ---------------------------------------------------------------------------------------------- loop (fake backend)


def test_degenerate_output_counts_wrong_and_never_crashes(tmp_path, fake, monkeypatch):
    examples = load_eval_examples("synthetic", limit=6)
    answers = {build_prompt(e["query"], for_eval=True): e["reference"] for e in examples}
    texts = iter(
        [
            lambda a: f"Adding up. The answer is: {a}",  # right
            lambda a: "",  # empty
            lambda a: "ha " * 20000,  # endless repetition
            lambda a: "\\boxed{" * 300 + "1",  # unbalanced
            lambda a: "I do not know.",  # no answer
            lambda a: "GRADER-BOOM",  # the grader itself fails
        ]
    )
    table = {p: next(texts)(a) for p, a in answers.items()}
    fake.answer = table.__getitem__
    from sorsa_repro.evaluation import graders

    score = graders.score_completion

    def flaky(benchmark, completion, reference):
        if completion == "GRADER-BOOM":
            raise RuntimeError("boom")
        return score(benchmark, completion, reference)

    monkeypatch.setattr(graders, "score_completion", flaky)  # grade() looks it up at call time
    out = evaluate(
        {"model": OFFLINE_MODEL, "benchmarks": ["synthetic"], "limit": 6, "out_dir": str(tmp_path)}
    )
    scores = out["synthetic"]["scores"]["numeric"]
    assert scores["n_strict"] == 1 and scores["strict"] == pytest.approx(1 / 6)
    rows = _rows(tmp_path / "predictions" / "synthetic.jsonl")
    assert [r["correct"]["numeric"]["strict"] for r in rows] == [True] + [False] * 5
    assert rows[-1]["strict_answer"] is None


def test_rerun_generates_only_missing_and_keeps_order(tmp_path, fake):
    fake.answer = lambda p: "The answer is: 1"
    cfg = {"model": OFFLINE_MODEL, "benchmarks": ["synthetic"], "out_dir": str(tmp_path), "chunk_size": 2}
    evaluate({**cfg, "limit": 3})
    first = json.loads((tmp_path / "result.json").read_text())["eval"]["synthetic"]
    fake.calls.clear()
    evaluate({**cfg, "limit": 3})  # everything answered: no generation, earlier timings kept
    assert fake.calls == []
    again = json.loads((tmp_path / "result.json").read_text())["eval"]["synthetic"]
    assert again["wall_time_s"] == first["wall_time_s"] and again["n_generated"] == 0
    evaluate({**cfg, "limit": 5})
    assert [len(c) for c in fake.calls] == [2]  # only the two new problems
    ids = [r["id"] for r in _rows(tmp_path / "predictions" / "synthetic.jsonl")]
    assert ids == [e["id"] for e in load_eval_examples("synthetic", limit=5)]
    fake.calls.clear()
    evaluate({**cfg, "limit": 5, "max_new_tokens": 9})  # a changed setting makes old rows stale
    assert sum(len(c) for c in fake.calls) == 5


def test_a_completion_with_unicode_line_separators_is_kept(tmp_path, fake):
    """A diverged model's completion may hold U+2028 or U+0085, written unescaped: the row must read back (not
    be split, dropped and generated again on every call), for the evaluation, the claims and W&B."""
    from sorsa_repro.evaluation.predictions import read_predictions
    from sorsa_repro.wandb_eval import prediction_rows

    fake.answer = lambda p: "oresLess\u2028 10.0 \x85\u2029 The answer is: 1"
    cfg = {"model": OFFLINE_MODEL, "benchmarks": ["synthetic"], "out_dir": str(tmp_path), "limit": 3}
    evaluate(cfg)
    path = tmp_path / "predictions" / "synthetic.jsonl"
    rows = read_predictions(path)
    assert len(rows) == 3 and all("\u2028" in r["completion"] for r in rows.values())
    fake.calls.clear()
    evaluate(cfg)
    assert fake.calls == []
    assert len(prediction_rows(path)[1]) == 3


def test_smaller_limit_keeps_generated_rows_and_timings_add_up(tmp_path, fake):
    fake.answer = lambda p: "The answer is: 1"
    cfg = {"model": OFFLINE_MODEL, "benchmarks": ["synthetic"], "out_dir": str(tmp_path)}
    path = tmp_path / "predictions" / "synthetic.jsonl"
    evaluate({**cfg, "limit": 6})
    first = json.loads((tmp_path / "result.json").read_text())["eval"]["synthetic"]
    rows = path.read_text()
    evaluate({**cfg, "limit": 2})  # reports on the first two, keeps all six
    assert path.read_text() == rows
    small = json.loads((tmp_path / "result.json").read_text())["eval"]["synthetic"]
    assert small["n"] == 2 and small["wall_time_s"] == first["wall_time_s"]
    assert small["generated_tokens"] == first["generated_tokens"] == 6 * 5
    evaluate({**cfg, "limit": 8})  # two more generated; timings of both calls add up
    more = json.loads((tmp_path / "result.json").read_text())["eval"]["synthetic"]
    assert more["n"] == 8 and more["n_generated"] == 2 and more["generated_tokens"] == 8 * 5
    assert more["wall_time_s"] > first["wall_time_s"]
    assert [r["id"] for r in _rows(path)] == [e["id"] for e in load_eval_examples("synthetic", limit=8)]


def test_evaluate_after_training_reads_the_train_config(tmp_path, fake):
    from omegaconf import OmegaConf

    from sorsa_repro.evaluation.run import evaluate_after_training

    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    (tmp_path / "result.json").write_text(json.dumps({"train": {"status": "finished"}}))
    cfg = OmegaConf.create(
        {
            "model": {"name": OFFLINE_MODEL, "dtype": "bfloat16"},
            "data": {"name": "synthetic"},
            "evaluate": {"benchmarks": ["synthetic"], "limit": 3, "backend": "hf", "max_new_tokens": None,
                         "batch_size": 16},
        }
    )  # fmt: skip
    out = evaluate_after_training(tmp_path, cfg)
    assert out["synthetic"]["n"] == 3 and out["synthetic"]["dtype"] == "bfloat16"
    assert out["synthetic"]["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS["synthetic"]
    assert json.loads((tmp_path / "result.json").read_text())["train"] == {"status": "finished"}


def test_an_evaluated_run_is_skipped_without_its_merged_export(tmp_path, fake):
    """A finished, evaluated run resumed from a clean clone of a committed reference (merged/ is git-ignored):
    the same evaluation is skipped and its files stay byte-identical; other settings still need the export."""
    import shutil

    from omegaconf import OmegaConf

    from sorsa_repro.evaluation.run import evaluate_after_training

    fake.answer = lambda p: "The answer is: 1"
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    (tmp_path / "result.json").write_text(json.dumps({"train": {"status": "finished"}}))
    evaluation = {"benchmarks": ["synthetic"], "limit": 3, "backend": "hf", "max_new_tokens": None}
    cfg = OmegaConf.create(
        {"model": {"name": OFFLINE_MODEL}, "data": {"name": "synthetic"}, "evaluate": evaluation}
    )
    first = evaluate_after_training(tmp_path, cfg)
    files = {
        p: p.read_bytes() for p in (tmp_path / "result.json", tmp_path / "predictions" / "synthetic.jsonl")
    }
    shutil.rmtree(tmp_path / "merged")
    fake.calls.clear()
    assert evaluate_after_training(tmp_path, cfg) == first
    assert fake.calls == [] and all(p.read_bytes() == b for p, b in files.items())
    with pytest.raises(FileNotFoundError, match="has no merged model"):  # four problems: one is unanswered
        evaluate_after_training(tmp_path, OmegaConf.merge(cfg, {"evaluate": {"limit": 4}}))


# ---------------------------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def offline(offline_model_dir):
    return load_base_model(OFFLINE_MODEL)


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch, offline, single_torch_thread):
    model, tokenizer = offline
    cfg = {"run": None, "benchmarks": ["synthetic"], "limit": 6, "max_new_tokens": 12, "backend": "hf",
           "batch_size": 2, "chunk_size": 2}  # fmt: skip
    for name in ("whole", "cut"):
        (tmp_path / name).mkdir()
    evaluate_run(tmp_path / "whole", cfg, model=copy.deepcopy(model), tokenizer=tokenizer)

    calls = {"n": 0}
    original = HFBackend.generate

    def interrupted(self, prompts, max_new_tokens, stop=()):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, prompts, max_new_tokens, stop)

    monkeypatch.setattr(HFBackend, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(tmp_path / "cut", cfg, model=copy.deepcopy(model), tokenizer=tokenizer)
    assert len(_rows(tmp_path / "cut" / "predictions" / "synthetic.jsonl")) == 2  # the first chunk survived
    monkeypatch.setattr(HFBackend, "generate", original)
    evaluate_run(tmp_path / "cut", cfg, model=copy.deepcopy(model), tokenizer=tokenizer)
    whole = (tmp_path / "whole" / "predictions" / "synthetic.jsonl").read_text()
    assert (tmp_path / "cut" / "predictions" / "synthetic.jsonl").read_text() == whole
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["eval"]["synthetic"]["n_generated"] == 4


@pytest.mark.slow
def test_merged_sorsa_generates_like_unmerged(offline, single_torch_thread):
    model, tokenizer = offline
    adapted = apply_method(copy.deepcopy(model), {"name": "sorsa", "rank": 8, "svd": "randomized"})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the adapter off its initialisation
        for name, param in adapted.named_parameters():
            if "sorsa_" in name:
                param.add_(0.02 * param.abs().mean() * torch.randn(param.shape, generator=gen))
    merged = merge_model(copy.deepcopy(adapted))
    assert not any("sorsa_" in n for n, _ in merged.named_parameters())
    prompts = [build_prompt(q, for_eval=True) for q, _ in GSM8K_ROWS]
    unmerged_out = HFBackend(adapted, tokenizer, batch_size=4).generate(prompts, 32)
    merged_out = HFBackend(merged, tokenizer, batch_size=4).generate(prompts, 32)
    base_out = HFBackend(model, tokenizer, batch_size=4).generate(prompts, 32)
    assert [c.text for c in merged_out] == [c.text for c in unmerged_out]
    assert [c.n_tokens for c in merged_out] == [c.n_tokens for c in unmerged_out]
    assert [c.text for c in merged_out] != [c.text for c in base_out]  # the perturbation did change the model


@pytest.mark.slow
def test_stop_strings_cut_generation_where_the_reference_scripts_cut(offline, single_torch_thread):
    from sorsa_repro.evaluation.backends import cut_at_stop
    from sorsa_repro.evaluation.tasks import generation_protocol

    model, tokenizer = offline
    prompts = [build_prompt(q, for_eval=True) for q, _ in GSM8K_ROWS]
    backend = HFBackend(model, tokenizer, batch_size=4)
    free = backend.generate(prompts, 48)
    # a stop string the untrained model does write: the first word of its longest completion
    word = max(free, key=lambda c: len(c.text)).text.split()[1]
    stopped = backend.generate(prompts, 48, stop=(word,))
    for f, c in zip(free, stopped, strict=True):
        cut = cut_at_stop(f.text, (word,))
        assert c.text == (f.text if cut is None else cut) and word not in c.text
        assert c.n_tokens <= f.n_tokens and (cut is None or c.finish_reason == "stop")
    assert any(cut_at_stop(f.text, (word,)) is not None for f in free)
    assert generation_protocol("metamath-v1").stop[-1] == "Response"  # eval_gsm8k.py:89
    assert generation_protocol("metamath-v1").max_new_tokens["gsm8k"] == 512  # eval_gsm8k.py:90


def test_generation_protocol_is_recorded_and_never_mixed(tmp_path, fake):
    fake.answer = lambda p: "The answer is: 1"
    calls = []
    fake.generate = lambda prompts, max_new_tokens, stop=(): (
        calls.append((max_new_tokens, stop)) or [Completion("The answer is: 1", 5, "stop") for _ in prompts]
    )
    cfg = {"model": OFFLINE_MODEL, "benchmarks": ["synthetic"], "out_dir": str(tmp_path), "limit": 2}
    evaluate(cfg)
    assert calls == [(256, ())]  # sorsa-v1: no stop strings
    evaluate({**cfg, "generation": "metamath-v1"})  # other stop strings: the rows are generated again
    assert calls[1][1][:2] == ("Question:", "Question") and len(calls) == 2
    entry = json.loads((tmp_path / "result.json").read_text())["eval"]["synthetic"]
    assert entry["generation_protocol"] == "metamath-v1" and entry["stop"][-1] == "Response"
    with pytest.raises(ValueError, match="unknown generation protocol"):
        evaluate({**cfg, "generation": "nosuch"})


@pytest.mark.slow
def test_cli_end_to_end_writes_predictions_and_result(tmp_path, data_dir):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sorsa_repro.evaluate", f"model={OFFLINE_MODEL}", "benchmarks=[gsm8k]", "limit=4",
           "backend=hf", "max_new_tokens=24", f"out_dir={out}", f"hydra.run.dir={tmp_path / 'h'}"]  # fmt: skip
    env = {**os.environ, "SORSA_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out / "predictions" / "gsm8k.jsonl")
    assert [r["id"] for r in rows] == [f"gsm8k/test/{i}" for i in range(4)]
    for row in rows:
        assert ROW_KEYS <= set(row) and set(row["correct"]) == {"metamath", "numeric"}
        assert set(row["correct"]["numeric"]) == {"strict", "flexible"} and 1 <= row["n_tokens"] <= 24
    result = json.loads((out / "result.json").read_text())
    entry = result["eval"]["gsm8k"]
    assert RESULT_KEYS <= set(entry) and entry["n"] == 4 and entry["limit"] == 4 and entry["backend"] == "hf"
    assert entry["max_new_tokens"] == 24 and entry["tokens_per_s"] > 0
    assert set(entry["scores"]) == {"metamath", "numeric"} and SCORE_KEYS <= set(entry["scores"]["numeric"])
    assert result["provenance"]["model"] == OFFLINE_MODEL


# ---------------------------------------------------------------------------------------------- vLLM


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not backends.vllm_available(), reason="vllm is not installed")
def test_vllm_matches_transformers(tmp_path, offline_model_dir, data_dir, single_torch_thread):
    """Greedy fp32 completions of vLLM (subprocess via evaluate_run) equal the hf backend's."""
    runs = {}
    for name in ("vllm", "hf"):  # run folders whose merged export is the offline model
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "merged").symlink_to(offline_model_dir)
        (runs[name] / "result.json").write_text(json.dumps({"train": {"status": "finished"}}))
    cfg = {
        "benchmarks": ["gsm8k"],
        "limit": 4,
        "max_new_tokens": 48,
        "dtype": "float32",
        "data_dir": data_dir,
    }
    evaluate_run(runs["vllm"], cfg, backend="vllm", max_model_len=2048)
    evaluate_run(runs["hf"], cfg, backend="hf", batch_size=4)
    got = {name: _rows(runs[name] / "predictions" / "gsm8k.jsonl") for name in runs}
    keys = ("id", "prompt", "completion", "n_tokens", "finish_reason", "correct")
    assert [{k: r[k] for k in keys} for r in got["vllm"]] == [{k: r[k] for k in keys} for r in got["hf"]]
    result = json.loads((runs["vllm"] / "result.json").read_text())
    assert result["train"] == {"status": "finished"}  # merged into, not replaced
    assert result["eval"]["gsm8k"]["backend"] == "vllm" and result["eval"]["gsm8k"]["tokens_per_s"] > 0


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_every_backend_option_reaches_the_constructor(monkeypatch, name):
    """Each constructor setting of a backend is an evaluation option, and a value set for it in the
    evaluation config arrives at the constructor (kv_cache_gib used to be dropped on the way to vLLM)."""
    real = backends.BACKEND_CLASSES[name]
    settings = set(inspect.signature(real).parameters) - {"model", "tokenizer", "seed"}
    fields = {f.name for f in dataclasses.fields(EvalConfig)} | {"batch_size"}
    assert settings <= fields, f"{name} settings with no evaluation option: {settings - fields}"

    received = {}

    class Recorder:
        __signature__ = inspect.signature(real)

        def __init__(self, model, *args, **kwargs):
            received.update(kwargs)

    monkeypatch.setitem(backends.BACKEND_CLASSES, name, Recorder)
    values = {"batch_size": 3, "dtype": "float16", "device": "cpu", "tensor_parallel_size": 2,
              "gpu_memory_utilization": 0.5, "kv_cache_gib": 1.5, "enforce_eager": True,
              "max_model_len": 777}  # fmt: skip
    cfg = EvalConfig(model="m", **{k: v for k, v in values.items() if k in fields - {"batch_size"}},
                     batch_size=values["batch_size"])  # fmt: skip
    backends.make_backend(name, "m", object(), **ev.backend_options(cfg))
    assert received == {k: values[k] for k in settings}
