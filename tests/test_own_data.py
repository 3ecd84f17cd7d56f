"""Your own training data gets an experiment name of its own (sorsa_repro/training/derived.py); the console
line saying how many rows a run uses is checked end to end in tests/test_new_user_run.py."""

from __future__ import annotations

from pathlib import Path

from sorsa_repro.data.rows import file_rows, source_rows

ROOT = Path(__file__).resolve().parents[1]


def test_an_explicit_experiment_name_is_kept_and_built_in_data_keeps_the_experiments():
    from hydra import compose, initialize_config_dir

    from sorsa_repro.training.derived import apply_derived_settings, data_label

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        custom = ["experiment=small", "data=custom", "data.path=/data/my_data.jsonl"]
        cfg = compose(config_name="train", overrides=custom)
        apply_derived_settings(cfg, custom)
        assert cfg.experiment_name == "small-my_data"
        named = [*custom, "experiment_name=mine"]
        cfg = compose(config_name="train", overrides=named)
        assert apply_derived_settings(cfg, named) == [] and cfg.experiment_name == "mine"
        cfg = compose(config_name="train", overrides=["experiment=small"])
        assert apply_derived_settings(cfg, ["experiment=small"]) == [] and cfg.experiment_name == "small"
    assert [data_label(n) for n in ("/a/b.jsonl", "owner/name", "x y.json")] == ["b", "name", "x_y"]


def test_rows_of_a_source(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_text('{"q": 1}\n\n{"q": 2}\n{"q": 3}\n')
    (tmp_path / "b.json").write_text('[{"q": 1}, {"q": 2}]')
    assert [file_rows(tmp_path / n) for n in ("a.jsonl", "b.json", "missing.jsonl")] == [3, 2, None]
    assert source_rows(str(tmp_path / "a.jsonl")) == 3
    assert source_rows("synthetic") is None  # generated: any number
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n' * 5)
    monkeypatch.setenv("SORSA_DATA_DIR", str(tmp_path))
    assert source_rows("gsm8k") == 5
