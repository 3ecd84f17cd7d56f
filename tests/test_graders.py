r"""Golden cases for the GSM8K / MATH answer graders (sorsa_repro.evaluation.graders).

Each case states the verdict a careful human grader would give, per grader. Where ``metamath``
(normalised string equality) and ``math_verify`` (symbolic equivalence) disagree by design, the
case says so in a comment.
"""

import logging
import threading
import time

import pytest

from sorsa_repro.evaluation import graders
from sorsa_repro.evaluation.graders import (
    GRADER_VERSIONS,
    GRADERS,
    extract_gold,
    extract_strict,
    grade_gsm8k,
    grade_math,
    last_boxed,
    normalize_math_answer,
    score_completion,
)


def said(answer: str) -> str:
    """A completion in MetaMathQA's format."""
    return f"Let's think step by step.\nShe has 3 + 15 = 18 of them.\nThe answer is: {answer}"


def gsm(gold: str) -> str:
    """A GSM8K ``answer`` field."""
    return f"Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = <<9*2=18>>{gold}.\n#### {gold}"


def sol(gold: str) -> str:
    """A MATH ``solution`` field."""
    return f"We simplify step by step, so the answer is $\\boxed{{{gold}}}$."


# ---------------------------------------------------------------------------------------------
# GSM8K: (completion, reference, strict verdict, flexible verdict)

GSM8K_CASES = [
    pytest.param(said("18"), gsm("18"), True, True, id="plain"),
    pytest.param(said("17"), gsm("18"), False, False, id="wrong"),
    pytest.param(said("1,000"), gsm("1000"), True, True, id="thousands-sep-pred"),
    pytest.param(said("1000"), gsm("1,000"), True, True, id="thousands-sep-gold"),
    pytest.param(said("1,000,000"), gsm("1000000"), True, True, id="millions-sep"),
    pytest.param(said("$18"), gsm("18"), True, True, id="dollar"),
    pytest.param(said("\\$18.00"), gsm("18"), True, True, id="escaped-dollar-cents"),
    pytest.param(said("18 dollars"), gsm("18"), True, True, id="unit-word"),
    pytest.param(said("18 eggs."), gsm("18"), True, True, id="unit-word-period"),
    pytest.param(said("18."), gsm("18"), True, True, id="trailing-period"),
    pytest.param(said("18.0"), gsm("18"), True, True, id="decimal-vs-int"),
    pytest.param(
        said("18.5"), gsm("18"), False, False, id="decimal-wrong"
    ),  # MetaMath's script rounds; we don't
    pytest.param(said("-5"), gsm("-5"), True, True, id="negative"),
    pytest.param(said("5"), gsm("-5"), False, False, id="negative-sign-missing"),
    pytest.param(said("\u22125"), gsm("-5"), True, True, id="unicode-minus"),
    pytest.param(said("$-5"), gsm("-5"), True, True, id="negative-dollar"),
    pytest.param(said("1/2"), gsm("0.5"), True, True, id="slash-fraction-vs-decimal"),
    pytest.param(said("\\frac{1}{2}"), gsm("0.5"), True, True, id="latex-fraction"),
    pytest.param(said("\\dfrac12"), gsm("0.5"), True, True, id="dfrac-no-braces"),
    pytest.param(said(".5"), gsm("0.5"), True, True, id="leading-dot"),
    pytest.param(said("1/3"), gsm("0.33"), False, False, id="fraction-not-rounded"),
    pytest.param(said("25%"), gsm("25"), True, True, id="percent-sign"),
    pytest.param(said("25 percent"), gsm("25"), True, True, id="percent-word"),
    pytest.param(said("0.25"), gsm("25"), False, False, id="percent-as-fraction-rejected"),
    pytest.param(said("\\boxed{18}"), gsm("18"), True, True, id="boxed-after-marker"),
    pytest.param(said("eighteen"), gsm("18"), False, False, id="number-in-words"),
    pytest.param(said("1/0"), gsm("18"), False, False, id="division-by-zero"),
    pytest.param(said("9" * 5000), gsm("18"), False, False, id="absurdly-long-number"),
    pytest.param("The answer is: 17\nOops.\nThe answer is: 18", gsm("18"), True, True, id="last-marker-wins"),
    pytest.param(
        "The answer is: 18\nOops.\nThe answer is: 17", gsm("18"), False, False, id="last-marker-wrong"
    ),
    pytest.param("The answer is:\n18", gsm("18"), True, True, id="answer-on-next-line"),
    pytest.param(
        said("18") + "\n\nQuestion: what is 2 + 3?", gsm("18"), True, True, id="rambles-after-answer"
    ),
    # no marker: strict is wrong, the flexible fallback may still find the answer
    pytest.param("So she makes 9 * 2 = 18 dollars.", gsm("18"), False, True, id="no-marker-last-number"),
    pytest.param("So she makes $\\boxed{18}$, 3 more than 15.", gsm("18"), False, True, id="no-marker-boxed"),
    pytest.param("the answer is: 18", gsm("18"), False, True, id="marker-wrong-case"),
    pytest.param(
        "The answer is: 17\nActually it is 18.", gsm("18"), False, False, id="flexible-keeps-strict"
    ),
    # degenerate output
    pytest.param("", gsm("18"), False, False, id="empty"),
    pytest.param("I think " * 50_000, gsm("18"), False, False, id="endless-repetition"),
    pytest.param("x" * 5_000_000 + said("18"), gsm("18"), True, True, id="huge-text"),
    pytest.param("\\boxed{" * 100_000, gsm("18"), False, False, id="unclosed-boxes"),
    # synthetic benchmark and MetaMathQA-style references
    pytest.param(said("18"), "18", True, True, id="bare-gold"),
    pytest.param(said("18"), 18, True, True, id="int-gold"),
    pytest.param(said("18"), "9 * 2 = 18\nThe answer is: 18", True, True, id="metamath-style-gold"),
]


@pytest.mark.parametrize("completion, reference, strict, flexible", GSM8K_CASES)
def test_gsm8k(completion, reference, strict, flexible):
    start = time.perf_counter()
    scored = score_completion("gsm8k", completion, reference)
    assert scored["correct"]["numeric"] == {"strict": strict, "flexible": flexible}
    assert grade_gsm8k(completion, reference) is strict
    assert time.perf_counter() - start < 1.0


def test_synthetic_grades_like_gsm8k():
    assert score_completion("synthetic", said("18"), "18") == score_completion("gsm8k", said("18"), gsm("18"))


# ---------------------------------------------------------------------------------------------
# MATH: (answer after "The answer is:", boxed gold, metamath verdict, math_verify verdict)

MATH_ANSWER_CASES = [
    pytest.param("5", "5", True, True, id="integer"),
    pytest.param("4", "5", False, False, id="wrong-integer"),
    pytest.param("-3", "-3", True, True, id="negative"),
    pytest.param("3", "-3", False, False, id="sign-missing"),
    pytest.param("18.0", "18", True, True, id="decimal-vs-int"),
    pytest.param("1000", "1,\\!000", True, True, id="thousands-sep"),
    pytest.param("\\$18.90", "\\$18.90", True, True, id="escaped-dollar"),
    pytest.param("18.9", "\\$18.90", True, True, id="dollar-vs-bare"),
    pytest.param("\\frac{1}{2}", "\\frac{1}{2}", True, True, id="frac"),
    pytest.param("\\dfrac12", "\\frac{1}{2}", True, True, id="dfrac-no-braces"),
    pytest.param("\\tfrac{1}{2}", "\\frac12", True, True, id="tfrac-vs-frac-no-braces"),
    pytest.param("1/2", "\\frac{1}{2}", True, True, id="slash-fraction"),
    pytest.param("-\\frac{1}{2}", "-\\frac12", True, True, id="negative-fraction"),
    pytest.param("\\frac{1}{2}", "\\frac{1}{3}", False, False, id="wrong-fraction"),
    # the classic normalisation maps exactly "0.5" to \frac{1}{2}, so both accept it ...
    pytest.param("0.5", "\\frac{1}{2}", True, True, id="half-as-decimal"),
    # ... but other decimals are compared as strings: by design only math_verify accepts them
    pytest.param("0.25", "\\frac{1}{4}", False, True, id="quarter-as-decimal-disagree"),
    pytest.param("1.5", "\\frac{3}{2}", False, True, id="decimal-vs-improper-disagree"),
    pytest.param("0.33", "\\frac{1}{3}", False, False, id="rounded-decimal-rejected"),
    pytest.param("$\\frac{1}{2}$", "\\frac{1}{2}", True, True, id="inline-math-dollars"),
    pytest.param("\\boxed{5}", "5", True, True, id="boxed-after-marker"),
    pytest.param("\\text{(C)}", "\\text{(C)}", True, True, id="text-choice"),
    pytest.param("(C)", "\\text{(C)}", True, True, id="text-wrapper-removed"),
    # metamath keeps the parentheses of "(C)"; math_verify reads both as the letter C
    pytest.param("C", "\\text{(C)}", False, True, id="choice-letter-disagree"),
    pytest.param("\\text{Monday}", "\\text{Monday}", True, True, id="text-word"),
    pytest.param("5\\text{ cm}", "5", True, True, id="text-unit"),
    pytest.param("10 \\text{inches}", "10", True, True, id="text-unit-no-space"),
    pytest.param("18 dollars", "18", False, False, id="bare-unit-word-rejected"),
    pytest.param("90^\\circ", "90", True, True, id="degrees-pred"),
    pytest.param("90", "90^{\\circ}", True, True, id="degrees-gold"),
    pytest.param("10\\%", "10", True, True, id="percent"),
    pytest.param("5\\%", "0.05", False, False, id="percent-vs-fraction-rejected"),
    pytest.param("[-2, 3)", "[-2,3)", True, True, id="interval"),
    pytest.param("[-2, 3]", "[-2,3)", False, False, id="interval-wrong-bracket"),
    pytest.param("(-\\infty, 2]", "(-\\infty,2]", True, True, id="interval-infinity"),
    pytest.param("\\left( 1, 2 \\right)", "(1,2)", True, True, id="tuple-left-right"),
    pytest.param("(2, 1)", "(1,2)", False, False, id="tuple-wrong-order"),
    # an unbracketed list is a set to math_verify; metamath compares the strings
    pytest.param("3, 2", "2, 3", False, True, id="solution-list-order-disagree"),
    pytest.param("\\{1, 2\\}", "\\{1,2\\}", True, True, id="set"),
    pytest.param("\\sqrt3", "\\sqrt{3}", True, True, id="sqrt-no-braces"),
    pytest.param("3 \\sqrt 2", "3\\sqrt{2}", True, True, id="sqrt-spaces"),
    pytest.param("2\\sqrt{3}", "\\sqrt{12}", False, True, id="sqrt-simplified-disagree"),
    pytest.param("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True, True, id="nested-braces"),
    pytest.param("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{2}", False, False, id="nested-braces-wrong"),
    pytest.param("2 \\pi", "2\\pi", True, True, id="pi"),
    pytest.param("\\pi/2", "\\frac{\\pi}{2}", False, True, id="pi-slash-disagree"),
    pytest.param("3.14", "\\pi", False, False, id="pi-approximation-rejected"),
    pytest.param("\\infty", "\\infty", True, True, id="infinity"),
    # both drop a short left-hand side ("x ="), so they agree here
    pytest.param("x = 2", "2", True, True, id="assignment"),
    pytest.param("y = 2x + 3", "2x+3", True, True, id="assignment-expression"),
    # equivalent expressions in different forms: only math_verify sees through
    pytest.param("(x+1)^2", "x^2+2x+1", False, True, id="expanded-form-disagree"),
    pytest.param("x^2+2x+2", "x^2+2x+1", False, False, id="wrong-polynomial"),
    pytest.param(
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        True,
        True,
        id="vector",
    ),
]


@pytest.mark.parametrize("answer, gold, metamath, math_verify", MATH_ANSWER_CASES)
def test_math_answers(answer, gold, metamath, math_verify):
    completion, reference = said(answer), sol(gold)
    assert grade_math(completion, reference, grader="metamath") is metamath
    assert grade_math(completion, reference, grader="math_verify") is math_verify
    scored = score_completion("math", completion, reference)
    assert scored["gold"] == gold
    assert scored["correct"]["metamath"]["strict"] is metamath
    assert scored["correct"]["math_verify"]["strict"] is math_verify


# whole completions: (completion, reference, strict verdict, flexible verdict), same for both graders
MATH_COMPLETION_CASES = [
    pytest.param(said("\\frac{1}{2}."), sol("\\frac{1}{2}"), True, True, id="trailing-period"),
    pytest.param(
        "The answer is: 3\nWait, recheck.\nThe answer is: \\frac{1}{2}",
        sol("\\frac12"),
        True,
        True,
        id="last-wins",
    ),
    pytest.param("So $x = \\boxed{\\frac{1}{2}}$.", sol("\\frac{1}{2}"), False, True, id="no-marker-boxed"),
    pytest.param("So the area is 7 and the side is 12.", sol("12"), False, True, id="no-marker-last-number"),
    pytest.param(
        "We get $\\boxed{12}$, twice the 6 from before.", sol("12"), False, True, id="boxed-beats-number"
    ),
    pytest.param(said("5"), "Hence $\\boxed{3}$ and $\\boxed{5}$.", True, True, id="gold-last-boxed"),
    pytest.param(said("5"), "Hence $\\fbox{5}$.", True, True, id="gold-fbox"),
    pytest.param(said("7"), "So it is $\\boxed 7$.", True, True, id="gold-boxed-space"),
    pytest.param(said("\\frac{1}{2}"), "\\frac{1}{2}", True, True, id="bare-gold-math500"),
    pytest.param(
        said("\\frac75 + \\frac15 i"), sol("\\frac{7}{5} + \\frac{1}{5} i."), True, True, id="gold-period"
    ),
    pytest.param(said(""), sol("5"), False, False, id="empty-answer"),
    pytest.param("", sol("5"), False, False, id="empty-completion"),
    pytest.param("\\frac{" * 50_000, sol("5"), False, False, id="degenerate-braces"),
]


@pytest.mark.parametrize("completion, reference, strict, flexible", MATH_COMPLETION_CASES)
def test_math_completions(completion, reference, strict, flexible):
    start = time.perf_counter()
    for benchmark in ("math", "math500"):
        correct = score_completion(benchmark, completion, reference)["correct"]
        assert correct == {g: {"strict": strict, "flexible": flexible} for g in ("metamath", "math_verify")}
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------------------------
# extraction details


@pytest.mark.parametrize(
    "solution, gold",
    [
        pytest.param("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}", id="nested"),
        pytest.param("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}", id="escaped-braces"),
        pytest.param("first \\boxed{1}, last \\boxed{\\text{(B)}}", "\\text{(B)}", id="last-of-two"),
        pytest.param("\\boxed{2} then cut off \\boxed{\\frac{1", "2", id="unclosed-last-skipped"),
        pytest.param("no box at all", None, id="none"),
    ],
)
def test_last_boxed(solution, gold):
    assert last_boxed(solution) == gold


def test_extract_strict_and_gold():
    assert extract_strict("... The answer is: 42. \n") == "42"
    assert extract_strict("no marker here") is None
    assert extract_gold("gsm8k", gsm("1,234")) == "1,234"
    assert extract_gold("math", sol("\\frac{1}{2}")) == "\\frac{1}{2}"
    with pytest.raises(ValueError):
        extract_gold("mmlu", "A")


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("5\\text{ cm}^2", "5"),
        ("x = \\sqrt2", "\\sqrt{2}"),
        (".5", "\\frac{1}{2}"),
        ("3/4", "\\frac{3}{4}"),
    ],
)
def test_normalize_math_answer(raw, normalised):
    assert normalize_math_answer(raw) == normalised


def test_score_completion_shape():
    scored = score_completion("math500", "So $\\boxed{0.5}$.", "\\frac{1}{2}")
    assert scored == {
        "strict_answer": None,
        "flexible_answer": "0.5",
        "gold": "\\frac{1}{2}",
        "correct": {
            "metamath": {"strict": False, "flexible": True},
            "math_verify": {"strict": False, "flexible": True},
        },
    }


def test_registry():
    assert set(GRADERS) == {"gsm8k", "synthetic", "math", "math500"}
    assert {g for names in GRADERS.values() for g in names} == set(GRADER_VERSIONS)
    assert GRADER_VERSIONS["math_verify"].startswith("math_verify-0.")
    with pytest.raises(ValueError):
        grade_math(said("5"), sol("5"), grader="lenient")


# ---------------------------------------------------------------------------------------------
# time limits and failures: counted wrong, logged, never raised

SLOW = "2^{2^{100}}"  # sympy tries to evaluate this integer power for ever


def test_timeout_main_thread(monkeypatch, caplog):
    monkeypatch.setattr(graders, "MATH_VERIFY_TIMEOUT_S", 0.3)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger=graders.__name__):
        assert grade_math(said(SLOW), sol("5")) is False
    assert time.perf_counter() - start < 3
    assert "timed out" in caplog.text


def test_timeout_other_thread(monkeypatch, caplog):
    """Signals work only in the main thread: elsewhere a worker process is killed instead."""
    monkeypatch.setattr(graders, "MATH_VERIFY_TIMEOUT_S", 0.5)
    verdicts = []

    def grade_in_thread():
        for answer in (SLOW, "\\frac{10}{2}", "4"):  # the worker comes back after being killed
            verdicts.append(grade_math(said(answer), sol("5")))

    with caplog.at_level(logging.WARNING, logger=graders.__name__):
        thread = threading.Thread(target=grade_in_thread)
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert verdicts == [False, True, False]
    assert "timed out" in caplog.text


def test_grader_error_is_logged_and_wrong(monkeypatch, caplog):
    def boom(answer, gold):
        raise RuntimeError("boom")

    monkeypatch.setitem(graders._CHECKS, "metamath", boom)
    with caplog.at_level(logging.WARNING, logger=graders.__name__):
        assert grade_math(said("5"), sol("5"), grader="metamath") is False
    assert "boom" in caplog.text
