"""One record per benchmark, and the named generation protocols: read by evaluation, graders and reporting.

A benchmark says what it is (display name, test size, gold field) and which graders score it; where its
rows come from is the data layer's business (``sorsa_repro.data.sources``). A generation protocol is what a
reference's evaluation script generated with: stop strings and new-token budget per benchmark, the prompt
being the Alpaca/MetaMath template + " Let's think step by step." in all of them (``data.prompt``).
Reports never average results of different protocols (``reporting.protocol``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    display: str
    test_size: int | None  # rows of the full test set (synthetic: generated, any number)
    gold: str  # the raw gold field a grader reads
    graders: tuple[str, ...]  # first = the one the paper's numbers compare with


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("gsm8k", "GSM8K", 1319, "answer, ending '#### N'", ("metamath", "numeric")),
        Task("math", "MATH", 5000, "solution, last \\boxed{}", ("metamath", "lenient", "math_verify")),
        Task("math500", "MATH-500", 500, "solution, last \\boxed{}", ("metamath", "lenient", "math_verify")),
        Task("synthetic", "synthetic", None, "the generated answer", ("numeric",)),
    )
}
BENCHMARKS = tuple(TASKS)


@dataclass(frozen=True)
class GenerationProtocol:
    name: str  # versioned: change the stop list or a budget -> new name
    stop: tuple[str, ...]
    max_new_tokens: dict[str, int]
    source: str  # where the reference sets these (repository@commit file:line)


_METAMATH_STOP = ("Question:", "Question", "USER:", "USER", "ASSISTANT:", "ASSISTANT",
                  "Instruction:", "Instruction", "Response:", "Response")  # fmt: skip
GENERATION_PROTOCOLS: dict[str, GenerationProtocol] = {
    p.name: p
    for p in (
        GenerationProtocol(
            "sorsa-v1",
            (),
            {"gsm8k": 1024, "math": 2048, "math500": 2048, "synthetic": 256},
            "SORSA's test.py (Gunale0926/SORSA@809cca0 test.py:21 GSM8K, :60 MATH): greedy, no stop strings",
        ),
        GenerationProtocol(
            "metamath-v1",
            _METAMATH_STOP,
            {"gsm8k": 512, "math": 2048, "math500": 2048, "synthetic": 256},
            "MetaMath's eval scripts (meta-math/MetaMath@fe667b1 eval_gsm8k.py:89-90, eval_math.py:77-78)",
        ),
        GenerationProtocol(
            "wizardmath-v1",
            ("Instruction:", "Instruction", "Response:", "Response"),
            {"gsm8k": 1024, "math": 2048, "math500": 2048, "synthetic": 256},
            "WizardMath's inference scripts, which PiSSA's paper-time README runs (nlpxucan/WizardLM@8c68227 "
            "WizardMath/inference/gsm8k_inference.py:90-91, MATH_inference.py:77-78)",
        ),
    )
}
DEFAULT_GENERATION = "sorsa-v1"


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return TASKS[name]


def generation_protocol(name: str) -> GenerationProtocol:
    if name not in GENERATION_PROTOCOLS:
        raise ValueError(
            f"unknown generation protocol {name!r}; choose from {', '.join(GENERATION_PROTOCOLS)}"
        )
    return GENERATION_PROTOCOLS[name]


def display_name(benchmark: str) -> str:
    return TASKS[benchmark].display if benchmark in TASKS else benchmark
