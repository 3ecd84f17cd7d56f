"""The protocol table: each setting as the SORSA reference ran it, as PiSSA (whose rows the paper copied)
and MetaMath's evaluation ran it, and as this suite's runs ran it (from their resolved configs).

References (facts, cited; read with git show <commit>:<path>): SORSA = Gunale0926/SORSA@809cca0; PiSSA =
GraphPKU/PiSSA@e2b128e (its code when the paper's numbers were published, spring 2024); MetaMath =
meta-math/MetaMath@fe667b1; WizardMath = nlpxucan/WizardLM@8c68227 (the scripts PiSSA's README ran).

    python -m sorsa_repro.reporting.protocol_table experiment=paper_llama2_7b   # from the composed configs
"""

from __future__ import annotations

import sys
from collections.abc import Callable

METHODS = ("full", "lora", "pissa", "sorsa")


def _get(cfg: dict, dotted: str, default=None):
    for key in dotted.split("."):
        if not isinstance(cfg, dict) or key not in cfg:
            return default
        cfg = cfg[key]
    return cfg


def _precision(c: dict) -> str:
    p = _get(c, "train.precision")
    detail = {
        "reference": "fp32 load, residual in {}, bf16 autocast".format(
            _get(c, "method.residual_dtype") or "fp32"
        ),
        "bf16-true": "bf16 weights (memory-saving)",
    }
    return f"{p} ({detail[p]})" if p in detail else str(p)


def _regularizer(c: dict) -> str:
    if _get(c, "method.name") != "sorsa":
        return "–"
    mode = _get(c, "method.ortho_mode")
    if mode == "reference":
        return f"reference, coefficient {_get(c, 'method.ortho_coef')} after clipping"
    return f"{mode}, gamma {_get(c, 'method.gamma')}"


def _batch(c: dict) -> str:
    b, k = _get(c, "train.batch_size"), _get(c, "train.accumulate")
    devices = _get(c, "trainer.devices", 1)
    devices = devices if isinstance(devices, int) else 1
    steps = _get(c, "train.max_steps") or "floor(micro-batches / accumulation)"
    return f"{b} x {k} x {devices} device(s) = {b * k * devices} per step; steps {steps}"


def _adapter(c: dict) -> str:
    if _get(c, "method.name") == "full":
        return "–"
    alpha = _get(c, "method.alpha")
    return f"r={_get(c, 'method.rank')}, alpha={'unset (scale 1)' if alpha is None else alpha}"


def _generation(c: dict) -> str:
    from sorsa_repro.evaluation.tasks import DEFAULT_GENERATION, generation_protocol

    name = _get(c, "evaluate.generation") or DEFAULT_GENERATION
    protocol = generation_protocol(name)
    budget = _get(c, "evaluate.max_new_tokens")
    tokens = budget if budget is not None else "/".join(str(v) for v in protocol.max_new_tokens.values())
    return f"{name}: {len(protocol.stop)} stop strings, max new tokens {tokens}"


# setting, SORSA reference, PiSSA / MetaMath, this suite (from a resolved training config)
ROWS: list[tuple[str, str, str, Callable[[dict], str]]] = [
    ("base model", "Llama-2-7B (`scripts/train_sorsa.sh:2`)", "Llama-2-7B (README)",
     lambda c: str(_get(c, "model.name"))),
    ("training data", "MetaMathQA train[:100000] (`run.py:127-129`)",
     "MetaMathQA-395K.json[:100000] (`train.py:191`, README `--data_length 100000`)",
     lambda c: f"{_get(c, 'data.name')}, limit {_get(c, 'data.limit')}"),
    ("precision", "fp32 load, SVD in fp32, residual bf16, adapters fp32, bf16 autocast + tf32 "
     "(`run.py:165-178,212-214`, `train_sorsa.sh:12-13`)",
     "fp32 load, residual and adapters fp32, `--bf16 True --tf32 True` (`train.py:154-157`, README)",
     _precision),
    ("regularizer", "grad of gamma/lr x L_orth after clipping, /64 by accelerate: 4e-4/(3e-5 x 64) = 0.2083 "
     "(`sorsalib/.../trainer.py:2625-2674`)", "–", _regularizer),
    ("tokenization", "prompt and response apart, each cut to 512 (`dataset.py:85-123`)",
     "prompt + response as one string, cut to 512 together (`train.py:85-121`)",
     lambda c: f"{_get(c, 'data.tokenization')}, {_get(c, 'data.truncation')} truncation, "
     f"max length {_get(c, 'data.max_length')}"),
    ("prompts longer than max length", "kept, prompt cut (`dataset.py:91-97`)",
     "kept, all labels masked (`train.py:85-121`)", lambda c: str(_get(c, "data.long_prompts"))),
    ("batch and steps", "2 x 64 on one GPU = 128 (`train_sorsa.sh:8-9`); floor(100000/128) = 781 steps "
     "(transformers 4.44 `trainer.py:2231-2251`)", "2 x 32 x 2 GPUs = 128 (README); 781 steps", _batch),
    ("optimizer, schedule", "AdamW, wd 0, cosine, warmup 0.03, clip 1.0 (`run.py:76-84`, `train_sorsa.sh`)",
     "AdamW, wd 0, cosine, warmup 0.03, clip 1.0 (README, `train.py:46`)",
     lambda c: f"AdamW, wd {_get(c, 'train.weight_decay')}, cosine, warmup {_get(c, 'train.warmup_ratio')}, "
     f"clip {_get(c, 'train.grad_clip')}"),
    ("learning rate", "SORSA 3e-5 (`train_sorsa.sh:5`)", "2e-5 (README)",
     lambda c: f"{_get(c, 'method.lr')} x {_get(c, 'train.lr_multiplier')}"),
    ("adapter", "r=128, alpha unset (scale 1) (`run.py:157-163`)", "r=128, alpha=r (`train.py:158-166`)",
     _adapter),
    ("generation", "no stop strings, 1024 GSM8K / 2048 MATH new tokens, bf16 (`test.py:21,60`)",
     "MetaMath: 10 stop strings, 512 / 2048 (`eval_gsm8k.py:89-90`, `eval_math.py:77-78`); WizardMath: 4, "
     "1024 / 2048 (`gsm8k_inference.py:90-91`)", _generation),
    ("graders", "GSM8K as MetaMath; MATH lenient (`inference/util.py:238-257`)",
     "MetaMath: `util.py:229-244` strip_string equality", lambda c: "metamath (faithful), numeric, lenient, "
     "math_verify, side by side"),
]  # fmt: skip


def protocol_table(configs: list[dict]) -> str:
    """Markdown table; the suite's column lists each method's value where methods differ."""
    lines = ["| setting | SORSA reference | PiSSA / MetaMath | this suite |", "|:--|:--|:--|:--|"]
    for setting, sorsa, pissa, suite in ROWS:
        values: dict[str, list[str]] = {}
        for cfg in configs:
            try:
                value = suite(cfg)
            except (TypeError, ValueError, KeyError):  # a config written before the setting existed
                value = "not recorded"
            values.setdefault(value, []).append(str(_get(cfg, "method.name")))
        if len(values) == 1:
            ours = next(iter(values))
        else:
            ours = "; ".join(f"{'/'.join(sorted(set(ms)))}: {v}" for v, ms in values.items())
        lines.append(f"| {setting} | {sorsa} | {pissa} | {ours.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def composed_configs(experiment: str, methods=METHODS) -> list[dict]:
    """Each method's resolved training config of ``experiment`` (no runs needed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sorsa_repro.training  # noqa: F401  (config resolvers)
    from sorsa_repro.layout import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [
            OmegaConf.to_container(
                compose("train", [f"experiment={experiment}", f"method={m}"]), resolve=True
            )
            for m in methods
        ]


def document(experiment: str) -> str:
    """The protocol file of an experiment without runs (paper_tables/<experiment>/protocol.md)."""
    return (
        f"<!-- generated by python -m sorsa_repro.reporting.protocol_table experiment={experiment} -->\n\n"
        f"# {experiment}: protocol against the references\n\n"
        "Each setting as the SORSA reference code ran it, as PiSSA's code (whose full FT, LoRA and PiSSA rows "
        "the SORSA paper copied) and MetaMath's or WizardMath's evaluation scripts ran it, and as this "
        "experiment's configs run it (`conf/experiment/" + experiment + ".yaml`). Sources: "
        "Gunale0926/SORSA@809cca0, GraphPKU/PiSSA@e2b128e, meta-math/MetaMath@fe667b1, "
        "nlpxucan/WizardLM@8c68227.\n\n" + protocol_table(composed_configs(experiment))
    )


def main(argv: list[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv) if "=" in a)
    experiment = args.get("experiment", "paper_llama2_7b")
    text = document(experiment)
    if "out" in args:
        from sorsa_repro.results import atomic_write_text

        atomic_write_text(args["out"], text)
        print(f"wrote {args['out']}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
