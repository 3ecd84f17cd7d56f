r"""Golden cases for the GSM8K / MATH answer graders (sorsa_repro.evaluation.graders).

Each case states the verdict per grader. ``metamath`` is MetaMath's own evaluation code, whose verdicts
are derived from reading it: citations ``eval_gsm8k.py:N``, ``eval_math.py:N``, ``util.py:N`` are lines of
meta-math/MetaMath at commit fe667b14f9a4c51bde9809adafb82b6b5d255800. ``lenient`` (normalised string
equality plus number equality) and ``math_verify`` (symbolic equivalence) disagree with it by design
where a comment says so.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sorsa_repro.data.answer_format import last_boxed
from sorsa_repro.evaluation import graders, symbolic
from sorsa_repro.evaluation.extract import extract_gold, extract_strict
from sorsa_repro.evaluation.graders import (
    GRADER_VERSIONS,
    GRADERS,
    grade_gsm8k,
    grade_math,
    normalize_math_answer,
    score_completion,
)
from sorsa_repro.evaluation.metamath import metamath_is_equiv, metamath_strip_string


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
# GSM8K, numeric grader: (completion, reference, strict verdict, flexible verdict)

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
    assert grade_gsm8k(completion, reference, grader="numeric") is strict
    assert time.perf_counter() - start < 1.0


def test_synthetic_grades_like_gsm8k():
    synthetic = score_completion("synthetic", said("18"), "18")
    gsm8k = score_completion("gsm8k", said("18"), gsm("18"))
    assert synthetic["correct"] == {"numeric": gsm8k["correct"]["numeric"]}
    assert {k: v for k, v in synthetic.items() if k != "correct"} == {
        k: v for k, v in gsm8k.items() if k != "correct"
    }


# ---------------------------------------------------------------------------------------------
# GSM8K, metamath grader (eval_gsm8k.py): (completion, reference, strict verdict, flexible verdict).
# strict is MetaMath's pipeline on the raw completion; flexible is true when strict is, else the suite's
# flexible answer read with MetaMath's number rule.

METAMATH_GSM8K_CASES = [
    pytest.param(said("18"), gsm("18"), True, True, id="plain"),
    pytest.param(said("17"), gsm("18"), False, False, id="wrong"),
    # :46 round(float(...)) -> 18; numeric says wrong
    pytest.param(said("18.4"), gsm("18"), True, True, id="decimal-rounded"),
    # :46 Python's round is half to even: 18.5 -> 18, 19.5 -> 20
    pytest.param(said("18.5"), gsm("18"), True, True, id="half-to-even-down"),
    pytest.param(said("19.5"), gsm("20"), True, True, id="half-to-even-up"),
    # :28 the regex takes one separator only: "1,000,000" reads as "1,000" -> 1000
    pytest.param(said("1,000,000"), gsm("1000000"), False, False, id="millions-read-as-thousand"),
    pytest.param(said("1,000,000"), gsm("1000"), True, True, id="millions-equals-thousand"),
    # :44/:46 commas dropped; :80-81 the gold's too
    pytest.param(said("1,000"), gsm("1,000"), True, True, id="thousands-sep"),
    pytest.param(said("1,5"), gsm("15"), True, True, id="decimal-comma-read-as-15"),
    # :49-50 no "The answer is: " -> None -> wrong (:110-115); flexible reads the last number
    pytest.param("So she makes 9 * 2 = 18 dollars.", gsm("18"), False, True, id="no-marker"),
    # :25 the split string has a trailing space: without it there is no marker
    pytest.param("Step.\nThe answer is:18", gsm("18"), False, True, id="marker-without-space"),
    pytest.param("Step.\nThe answer is:\n18", gsm("18"), False, True, id="answer-on-next-line"),
    # :30-40 a/b divided, then rounded: 3/4 -> 1, 7/2 -> 4, 5/2 -> 2
    pytest.param(said("3/4"), gsm("1"), True, True, id="fraction-rounded-up"),
    pytest.param(said("3/4"), gsm("0"), False, False, id="fraction-not-zero"),
    pytest.param(said("7/2"), gsm("4"), True, True, id="fraction-half-even-up"),
    pytest.param(said("5/2"), gsm("2"), True, True, id="fraction-half-even-down"),
    # :34-35 a zero denominator: the numerator is the answer
    pytest.param(said("5/0"), gsm("5"), True, True, id="zero-denominator"),
    # :28 the sign is part of the match
    pytest.param(said("-5"), gsm("-5"), True, True, id="negative"),
    pytest.param(said("5"), gsm("-5"), False, False, id="negative-sign-missing"),
    pytest.param(said("+5"), gsm("5"), True, True, id="plus-sign"),
    # :28 the unicode minus is no sign: reads 5 (numeric accepts it)
    pytest.param(said("\u22125"), gsm("-5"), False, False, id="unicode-minus"),
    # :28 the first number anywhere after the marker
    pytest.param(said("$18"), gsm("18"), True, True, id="dollar"),
    pytest.param(said("\\$18.00"), gsm("18"), True, True, id="escaped-dollar-cents"),
    pytest.param(said("18 eggs."), gsm("18"), True, True, id="unit-word"),
    pytest.param(said("25%"), gsm("25"), True, True, id="percent"),
    pytest.param(said("eighteen, from step 2"), gsm("2"), True, True, id="first-number-anywhere"),
    pytest.param(said("eighteen"), gsm("18"), False, False, id="number-in-words"),
    # :27 the last part of the split
    pytest.param("The answer is: 17\nOops.\nThe answer is: 18", gsm("18"), True, True, id="last-marker-wins"),
    pytest.param(
        "The answer is: 18\nOops.\nThe answer is: 17", gsm("18"), False, False, id="last-marker-wrong"
    ),
    pytest.param(said("18") + "\n\nQuestion: what is 2 + 3?", gsm("18"), True, True, id="rambles-after"),
    # :44-45 a number too long for a float is None; "-inf" would crash MetaMath's script: wrong here
    pytest.param(said("9" * 5000), gsm("18"), False, False, id="absurdly-long-number"),
    pytest.param(said("-" + "9" * 5000), gsm("18"), False, False, id="absurdly-long-negative"),
    pytest.param("", gsm("18"), False, False, id="empty"),
    pytest.param("x" * 5_000_000 + said("18"), gsm("18"), True, True, id="huge-text"),
    pytest.param("\\boxed{" * 100_000, gsm("18"), False, False, id="unclosed-boxes"),
    # the suite's gold where there is no "#### " (synthetic, bare answers)
    pytest.param(said("18"), "18", True, True, id="bare-gold"),
    pytest.param(said("18"), 18, True, True, id="int-gold"),
]


@pytest.mark.parametrize("completion, reference, strict, flexible", METAMATH_GSM8K_CASES)
def test_metamath_gsm8k(completion, reference, strict, flexible):
    start = time.perf_counter()
    scored = score_completion("gsm8k", completion, reference)
    assert scored["correct"]["metamath"] == {"strict": strict, "flexible": flexible}
    assert grade_gsm8k(completion, reference, grader="metamath") is strict
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------
# MATH: (answer after "The answer is: ", boxed gold, metamath, lenient, math_verify verdicts)

MATH_ANSWER_CASES = [
    pytest.param("5", "5", True, True, True, id="integer"),
    pytest.param("4", "5", False, False, False, id="wrong-integer"),
    pytest.param("-3", "-3", True, True, True, id="negative"),
    pytest.param("3", "-3", False, False, False, id="sign-missing"),
    # metamath compares strings (util.py:242); lenient and math_verify compare numbers
    pytest.param("18.0", "18", False, True, True, id="decimal-vs-int"),
    pytest.param("1000", "1,\\!000", False, True, True, id="thousands-sep"),
    pytest.param("\\$18.90", "\\$18.90", True, True, True, id="escaped-dollar"),
    pytest.param("18.9", "\\$18.90", False, True, True, id="dollar-vs-bare"),
    pytest.param("\\frac{1}{2}", "\\frac{1}{2}", True, True, True, id="frac"),
    pytest.param("\\dfrac12", "\\frac{1}{2}", True, True, True, id="dfrac-no-braces"),
    pytest.param("\\tfrac{1}{2}", "\\frac12", True, True, True, id="tfrac-vs-frac-no-braces"),
    pytest.param("1/2", "\\frac{1}{2}", True, True, True, id="slash-fraction"),
    pytest.param("-\\frac{1}{2}", "-\\frac12", True, True, True, id="negative-fraction"),
    pytest.param("\\frac{1}{2}", "\\frac{1}{3}", False, False, False, id="wrong-fraction"),
    # util.py:220-221 maps exactly "0.5" to \frac{1}{2}, so all accept it ...
    pytest.param("0.5", "\\frac{1}{2}", True, True, True, id="half-as-decimal"),
    # ... but other decimals are compared as strings: by design only math_verify accepts them
    pytest.param("0.25", "\\frac{1}{4}", False, False, True, id="quarter-as-decimal-disagree"),
    pytest.param("1.5", "\\frac{3}{2}", False, False, True, id="decimal-vs-improper-disagree"),
    pytest.param("0.33", "\\frac{1}{3}", False, False, False, id="rounded-decimal-rejected"),
    # util.py:187 removes only "\$": bare dollars stay
    pytest.param("$\\frac{1}{2}$", "\\frac{1}{2}", False, True, True, id="inline-math-dollars"),
    # strip_string does not unbox
    pytest.param("\\boxed{5}", "5", False, True, True, id="boxed-after-marker"),
    pytest.param("\\text{(C)}", "\\text{(C)}", True, True, True, id="text-choice"),
    pytest.param("(C)", "\\text{(C)}", False, True, True, id="text-wrapper-removed"),
    # lenient keeps the parentheses of "(C)"; math_verify reads both as the letter C
    pytest.param("C", "\\text{(C)}", False, False, True, id="choice-letter-disagree"),
    pytest.param("\\text{Monday}", "\\text{Monday}", True, True, True, id="text-word"),
    # util.py:140-147 cuts at "\text{ " (with the space) only
    pytest.param("5\\text{ cm}", "5", True, True, True, id="text-unit"),
    pytest.param("10 \\text{inches}", "10", False, True, True, id="text-unit-no-space"),
    pytest.param("18 dollars", "18", False, False, False, id="bare-unit-word-rejected"),
    pytest.param("90^\\circ", "90", True, True, True, id="degrees-pred"),
    pytest.param("90", "90^{\\circ}", True, True, True, id="degrees-gold"),
    pytest.param("10\\%", "10", True, True, True, id="percent"),
    pytest.param("5\\%", "0.05", False, False, False, id="percent-vs-fraction-rejected"),
    pytest.param("[-2, 3)", "[-2,3)", True, True, True, id="interval"),
    pytest.param("[-2, 3]", "[-2,3)", False, False, False, id="interval-wrong-bracket"),
    pytest.param("(-\\infty, 2]", "(-\\infty,2]", True, True, True, id="interval-infinity"),
    pytest.param("\\left( 1, 2 \\right)", "(1,2)", True, True, True, id="tuple-left-right"),
    pytest.param("(2, 1)", "(1,2)", False, False, False, id="tuple-wrong-order"),
    # an unbracketed list is a set to math_verify; the others compare the strings
    pytest.param("3, 2", "2, 3", False, False, True, id="solution-list-order-disagree"),
    pytest.param("\\{1, 2\\}", "\\{1,2\\}", True, True, True, id="set"),
    pytest.param("\\sqrt3", "\\sqrt{3}", True, True, True, id="sqrt-no-braces"),
    # util.py:155-157 braces the character after \sqrt, here a space: "3\sqrt{}2"
    pytest.param("3 \\sqrt 2", "3\\sqrt{2}", False, True, True, id="sqrt-spaces"),
    pytest.param("2\\sqrt{3}", "\\sqrt{12}", False, False, True, id="sqrt-simplified-disagree"),
    pytest.param("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True, True, True, id="nested-braces"),
    pytest.param(
        "\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{2}", False, False, False, id="nested-braces-wrong"
    ),
    pytest.param("2 \\pi", "2\\pi", True, True, True, id="pi"),
    pytest.param("\\pi/2", "\\frac{\\pi}{2}", False, False, True, id="pi-slash-disagree"),
    pytest.param("3.14", "\\pi", False, False, False, id="pi-approximation-rejected"),
    pytest.param("\\infty", "\\infty", True, True, True, id="infinity"),
    # util.py:206-208 drops a left-hand side of at most two characters, space included ("x ")
    pytest.param("x = 2", "2", True, True, True, id="assignment"),
    pytest.param("y = 2x + 3", "2x+3", True, True, True, id="assignment-expression"),
    # equivalent expressions in different forms: only math_verify sees through
    pytest.param("(x+1)^2", "x^2+2x+1", False, False, True, id="expanded-form-disagree"),
    pytest.param("x^2+2x+2", "x^2+2x+1", False, False, False, id="wrong-polynomial"),
    pytest.param(
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        True,
        True,
        True,
        id="vector",
    ),
]


@pytest.mark.parametrize("answer, gold, metamath, lenient, math_verify", MATH_ANSWER_CASES)
def test_math_answers(answer, gold, metamath, lenient, math_verify):
    completion, reference = said(answer), sol(gold)
    assert grade_math(completion, reference, grader="metamath") is metamath
    assert grade_math(completion, reference, grader="lenient") is lenient
    assert grade_math(completion, reference, grader="math_verify") is math_verify
    scored = score_completion("math", completion, reference)
    assert scored["gold"] == gold
    assert scored["correct"]["metamath"]["strict"] is metamath
    assert scored["correct"]["lenient"]["strict"] is lenient
    assert scored["correct"]["math_verify"]["strict"] is math_verify
    assert scored["timeouts"] == {}


# Peer cases: where MetaMath's own code (eval_math.py + util.py) and the lenient grader now differ, and
# some that both accept. (completion, reference, metamath strict verdict, lenient strict verdict)
METAMATH_VS_LENIENT = [
    # util.py:187 removes "\$" only; a bare $ stays
    pytest.param(said("$5$"), sol("5"), False, True, id="bare-dollars"),
    pytest.param(said("\\$5"), sol("5"), True, True, id="escaped-dollar-both"),
    # util.py:193-194 remove "\%" (twice); a bare % stays
    pytest.param(said("50%"), sol("50"), False, True, id="bare-percent"),
    pytest.param(said("50\\%"), sol("50"), True, True, id="escaped-percent-both"),
    # util.py:142-145 cut at "\text{ " with its space; "\text{cm}" stays
    pytest.param(said("5 \\text{ cm}"), sol("5"), True, True, id="text-unit-with-space-both"),
    pytest.param(said("5 \\text{cm}"), sol("5"), False, True, id="text-unit-without-space"),
    # util.py:144 two "\text{ " fail the assert: raw strings compared (util.py:243-244)
    pytest.param(said("5 \\text{ cm} \\text{ m}"), sol("5"), False, False, id="two-text-units"),
    # strip_string does not unbox
    pytest.param(said("\\boxed{5}"), sol("5"), False, True, id="boxed-after-marker"),
    # util.py:155-157: "\sqrt 3" -> "\sqrt{ }3" -> "\sqrt{}3" once spaces go (util.py:214)
    pytest.param(said("\\sqrt 3"), sol("\\sqrt{3}"), False, True, id="sqrt-space"),
    pytest.param(said("\\sqrt3"), sol("\\sqrt{3}"), True, True, id="sqrt-no-space-both"),
    # util.py:242 string equality: no number equality
    pytest.param(said("18.0"), sol("18"), False, True, id="decimal-vs-int"),
    pytest.param(said("1,000"), sol("1000"), False, True, id="thousands-sep"),
    # a list of two numbers is not 32349: lenient's old bug fixed
    pytest.param(said("32, 349"), sol("32349"), False, False, id="list-not-thousands"),
    pytest.param(said("32,349"), sol("32,349"), True, True, id="same-thousands-both"),
    # eval_math.py:23 splits on "The answer is: " with the space
    pytest.param("Step.\nThe answer is:5", sol("5"), False, True, id="marker-without-space"),
    # eval_math.py:26 reads up to the first ".\n", across lines; util.py:166 drops the line breaks
    pytest.param(
        "Step.\nThe answer is: \\begin{pmatrix} 1 \\\\\n 2 \\end{pmatrix}",
        sol("\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        True,
        False,
        id="multi-line-answer",
    ),
    pytest.param(said("18") + "\n\nQuestion: what is 2 + 3?", sol("18"), False, True, id="rambles-after"),
    pytest.param(said("18.\nQuestion: what is 2 + 3?"), sol("18"), True, True, id="cut-at-period-newline"),
    # util.py:102-103 leaves "\frac{1}2" alone (its first argument is braced)
    pytest.param(said("\\frac{1}2"), sol("\\frac{1}{2}"), False, True, id="frac-second-arg-unbraced"),
    # util.py:131-137 int("\pi") raises ValueError, uncaught: raw strings compared (util.py:243-244)
    pytest.param(said("\\pi / 2"), sol("\\pi/2"), False, True, id="slash-raises-raw-equality"),
    pytest.param(said("\\pi/2"), sol("\\pi/2"), True, True, id="slash-raises-same-raw-both"),
    # util.py:206-208 the left-hand side "xy " is three characters: kept
    pytest.param(said("xy = 5"), sol("5"), False, True, id="two-letter-lhs"),
    pytest.param(said("x=5"), sol("5"), True, True, id="one-letter-lhs-both"),
    # both accept
    pytest.param(said("\\frac12"), sol("\\frac{1}{2}"), True, True, id="frac12-both"),
    pytest.param(said("0.5"), sol("\\frac{1}{2}"), True, True, id="half-both"),
    pytest.param(said(".5"), sol("\\frac12"), True, True, id="leading-dot-half-both"),
    pytest.param(said("\\dfrac{3}{4}"), sol("3/4"), True, True, id="dfrac-vs-slash-both"),
    pytest.param(said("\\left( 1, 2 \\right)"), sol("(1,2)"), True, True, id="left-right-both"),
    pytest.param(said("x = 5"), sol("5"), True, True, id="x-equals-both"),
    pytest.param(said("90^\\circ"), sol("90"), True, True, id="degrees-both"),
]


@pytest.mark.parametrize("completion, reference, metamath, lenient", METAMATH_VS_LENIENT)
def test_metamath_vs_lenient(completion, reference, metamath, lenient):
    assert grade_math(completion, reference, grader="metamath") is metamath
    assert grade_math(completion, reference, grader="lenient") is lenient


# whole completions: (completion, reference, strict, flexible) for lenient and math_verify, then metamath's
MATH_COMPLETION_CASES = [
    pytest.param(
        said("\\frac{1}{2}."), sol("\\frac{1}{2}"), (True, True), (True, True), id="trailing-period"
    ),
    pytest.param(
        "The answer is: 3\nWait, recheck.\nThe answer is: \\frac{1}{2}",
        sol("\\frac12"),
        (True, True),
        (True, True),
        id="last-wins",
    ),
    pytest.param(
        "So $x = \\boxed{\\frac{1}{2}}$.",
        sol("\\frac{1}{2}"),
        (False, True),
        (False, True),
        id="no-marker-boxed",
    ),
    pytest.param(
        "So the area is 7 and the side is 12.",
        sol("12"),
        (False, True),
        (False, True),
        id="no-marker-last-number",
    ),
    pytest.param(
        "We get $\\boxed{12}$, twice the 6 from before.",
        sol("12"),
        (False, True),
        (False, True),
        id="boxed-beats-number",
    ),
    pytest.param(
        said("5"), "Hence $\\boxed{3}$ and $\\boxed{5}$.", (True, True), (True, True), id="gold-last-boxed"
    ),
    # eval_math.py:13-20 remove_boxed accepts "\boxed{...}" only; util.py:10-35 needs braces: no gold
    pytest.param(said("5"), "Hence $\\fbox{5}$.", (True, True), (False, False), id="gold-fbox"),
    pytest.param(said("7"), "So it is $\\boxed 7$.", (True, True), (False, False), id="gold-boxed-space"),
    pytest.param(
        said("7"), "So $\\boxed{7}$, not $\\boxed{8", (True, True), (False, False), id="gold-unclosed"
    ),
    pytest.param(said("\\frac{1}{2}"), "\\frac{1}{2}", (True, True), (True, True), id="bare-gold-math500"),
    # MetaMath's gold keeps the period inside the box (eval_math.py:68)
    pytest.param(
        said("\\frac75 + \\frac15 i"),
        sol("\\frac{7}{5} + \\frac{1}{5} i."),
        (True, True),
        (False, False),
        id="gold-period",
    ),
    # flexible reads the rest of the line only; metamath's strict reads on (eval_math.py:26)
    pytest.param(
        said("5") + "\n\nQuestion: 2 + 3?", sol("5"), (True, True), (False, True), id="rambles-after"
    ),
    pytest.param("Step.\nThe answer is:5", sol("5"), (True, True), (False, True), id="marker-without-space"),
    pytest.param(said(""), sol("5"), (False, False), (False, False), id="empty-answer"),
    pytest.param("", sol("5"), (False, False), (False, False), id="empty-completion"),
    pytest.param("\\frac{" * 50_000, sol("5"), (False, False), (False, False), id="degenerate-braces"),
    pytest.param(said("\\frac{" * 50_000), sol("5"), (False, False), (False, False), id="degenerate-answer"),
]


@pytest.mark.parametrize("completion, reference, others, metamath", MATH_COMPLETION_CASES)
def test_math_completions(completion, reference, others, metamath):
    start = time.perf_counter()
    for benchmark in ("math", "math500"):
        correct = score_completion(benchmark, completion, reference)["correct"]
        expected = {
            g: dict(zip(("strict", "flexible"), others, strict=True)) for g in ("lenient", "math_verify")
        }
        expected["metamath"] = dict(zip(("strict", "flexible"), metamath, strict=True))
        assert correct == expected
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------------------------
# MetaMath's strip_string, step by step (util.py:164-226)


@pytest.mark.parametrize(
    "raw, stripped",
    [
        ("\\sqrt 3", "\\sqrt{}3"),  # :155-157 then :214
        ("\\sqrt[3]{2}", "\\sqrt{[}3]{2}"),  # :155-157
        ("\\frac12", "\\frac{1}{2}"),  # :111-116
        ("\\frac1{72}", "\\frac{1}{72}"),  # :117-122
        ("\\frac{72}1", "\\frac{72}1"),  # :102-103
        ("x = 5", "5"),  # :206-208
        ("xy = 5", "xy=5"),  # :207 "xy " is three characters
        ("k=\\frac{1}{2}", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),  # :220-221
        (".5", "\\frac{1}{2}"),  # :202-203 then :220-221
        ("1 .5", "10.5"),  # :197
        ("3/4", "\\frac{3}{4}"),  # :224, :126-138
        ("-3/4", "\\frac{-3}{4}"),
        ("+3/4", "+3/4"),  # :134 the assert fails: unchanged
        ("5 \\text{ cm}", "5"),  # :190
        ("5 \\text{cm}", "5\\text{cm}"),
        ("50%", "50%"),  # :193-194
        ("50\\%", "50"),
        ("\\\\%%", "%"),  # :172 makes "\\" one backslash, then :193 removes "\%"
        ("\\\\\\%%", ""),  # :172 leaves "\\%%", :193 leaves "\%", :194 removes it
        ("$5$", "$5$"),  # :187
        ("\\$5", "5"),
        ("\\left( 1, 2 \\right)", "(1,2)"),  # :179-180
        ("90^{\\circ}", "90"),  # :183
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),  # :176
        ("", ""),  # :200-201
    ],
)
def test_metamath_strip_string(raw, stripped):
    assert metamath_strip_string(raw) == stripped


@pytest.mark.parametrize(
    "raw, error",
    [
        ("a \\text{ b} \\text{ c}", ValueError),  # :144 (an AssertionError there)
        ("\\pi/2", ValueError),  # :132 int("\pi"), not caught by :137
        ("x\\sqrt", IndexError),  # :155 split[0] of ""
        ("\\frac", IndexError),  # :102 substr[0] of ""
    ],
)
def test_metamath_strip_string_raises_where_metamath_does(raw, error):
    with pytest.raises(error):
        metamath_strip_string(raw)


def test_metamath_is_equiv_falls_back_to_raw_equality():
    assert metamath_is_equiv("\\pi/2", "\\pi/2")  # util.py:243-244
    assert not metamath_is_equiv("\\pi / 2", "\\pi/2")
    assert metamath_is_equiv(None, None) and not metamath_is_equiv("5", None)  # util.py:230-234


# ---------------------------------------------------------------------------------------------
# extraction details


@pytest.mark.parametrize(
    "solution, gold",
    [
        pytest.param("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}", id="nested"),
        pytest.param("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}", id="escaped-braces"),
        pytest.param("first \\boxed{1}, last \\boxed{\\text{(B)}}", "\\text{(B)}", id="last-of-two"),
        pytest.param("\\boxed{2} then cut off \\boxed{\\frac{1", "2", id="unclosed-last-skipped"),
        pytest.param("so $x = \\boxed {12}$.", "12", id="space-before-brace"),
        pytest.param("so $x = \\boxed 9$.", "9", id="boxed-space-argument"),
        pytest.param("\\fbox{x{y}}", "x{y}", id="fbox"),
        pytest.param("no box at all", None, id="none"),
    ],
)
def test_last_boxed(solution, gold):
    from sorsa_repro.data import last_boxed as data_last_boxed

    assert last_boxed(solution) == gold
    assert data_last_boxed(solution) == gold


def test_one_last_boxed_and_one_marker():
    from sorsa_repro.data import answer_format, sources
    from sorsa_repro.data import last_boxed as data_last_boxed
    from sorsa_repro.evaluation import extract, metamath

    assert graders.last_boxed is extract.last_boxed is data_last_boxed is sources.last_boxed
    assert data_last_boxed is answer_format.last_boxed
    assert extract.ANSWER_MARKER == answer_format.ANSWER_MARKER == "The answer is:"
    assert metamath.METAMATH_ANSWER_SPLIT == answer_format.METAMATH_ANSWER_SPLIT == "The answer is: "


def test_importing_the_graders_imports_no_torch():
    code = (
        "import sys; import sorsa_repro.evaluation.graders as g; "
        "assert g.last_boxed('\\\\boxed {12}') == '12'; "
        "assert 'torch' not in sys.modules; "
        "import sorsa_repro.data as d; assert d.last_boxed is g.last_boxed"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


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
    flexible_only = {"strict": False, "flexible": True}
    assert scored == {
        "strict_answer": None,
        "flexible_answer": "0.5",
        "gold": "\\frac{1}{2}",
        "correct": {"metamath": flexible_only, "lenient": flexible_only, "math_verify": flexible_only},
        "timeouts": {},
    }


def test_registry():
    assert set(GRADERS) == {"gsm8k", "synthetic", "math", "math500"}
    assert GRADERS["gsm8k"] == ["metamath", "numeric"]
    assert GRADERS["math"] == GRADERS["math500"] == ["metamath", "lenient", "math_verify"]
    assert {g for names in GRADERS.values() for g in names} == set(GRADER_VERSIONS)
    assert GRADER_VERSIONS["metamath"] == "metamath-2" and GRADER_VERSIONS["lenient"] == "lenient-1"
    assert GRADER_VERSIONS["math_verify"].startswith("math_verify-0.")
    with pytest.raises(ValueError):
        grade_math(said("5"), sol("5"), grader="sympy")
    with pytest.raises(ValueError):
        grade_gsm8k(said("5"), gsm("5"), grader="math_verify")


# ---------------------------------------------------------------------------------------------
# time limits and failures: counted wrong, logged, never raised; CPU time, not wall time

SLOW = "2^{2^{100}}"  # sympy tries to evaluate this integer power for ever


def burn_cpu(answer: str, gold: str) -> bool:
    """A stand-in for math-verify's check that uses ``float(answer)`` seconds of CPU time, then agrees."""
    end = time.process_time() + float(answer)
    while time.process_time() < end:
        pass
    return True


@pytest.fixture
def limits(monkeypatch):
    """``limits(first, retry)``: the CPU-time limits of a math_verify check, in seconds."""

    def set_limits(first: float, retry: float) -> None:
        monkeypatch.setattr(symbolic, "MATH_VERIFY_TIMEOUT_S", first)
        monkeypatch.setattr(symbolic, "MATH_VERIFY_RETRY_TIMEOUT_S", retry)

    return set_limits


@pytest.fixture
def burning_worker(monkeypatch, tmp_path):
    """The worker process of non-main threads, running ``burn_cpu`` instead of math-verify."""
    (tmp_path / "burn_check.py").write_text(
        "import time\n\n\ndef check(answer, gold):\n"
        "    end = time.process_time() + float(answer)\n"
        "    while time.process_time() < end:\n"
        "        pass\n"
        "    return True\n"
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )
    worker = symbolic._VerifyWorker("burn_check:check")
    monkeypatch.setattr(symbolic, "_worker", worker)
    yield worker
    worker.close()


def in_thread(fn):
    """``fn()`` run in a thread that is not the main one (so the worker process is used)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive()
    return result[0]


def test_timeout_main_thread(limits, caplog):
    limits(0.3, 0.3)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="sorsa_repro.evaluation"):
        assert grade_math(said(SLOW), sol("5")) is False
        scored = score_completion("math", said(SLOW), sol("5"))
    assert time.perf_counter() - start < 6
    assert "timed out" in caplog.text
    assert scored["correct"]["math_verify"] == {"strict": False, "flexible": False}
    assert scored["timeouts"] == {"math_verify": ["strict", "flexible"]}  # flexible is the same answer


def test_timeout_other_thread(limits, caplog):
    """Signals work only in the main thread: elsewhere a worker process is killed instead."""
    limits(0.5, 0.5)

    def grade_all():
        # the worker comes back after being killed
        return [grade_math(said(answer), sol("5")) for answer in (SLOW, "\\frac{10}{2}", "4")]

    with caplog.at_level(logging.WARNING, logger="sorsa_repro.evaluation"):
        assert in_thread(grade_all) == [False, True, False]
    assert "timed out" in caplog.text


def test_retry_with_larger_limit_main_thread(limits, monkeypatch, caplog):
    monkeypatch.setattr(symbolic, "_math_verify_check", burn_cpu)
    limits(0.2, 30)
    with caplog.at_level(logging.INFO, logger="sorsa_repro.evaluation"):
        scored = score_completion("math", said("0.5"), sol("7"))  # 0.5 s CPU: over the first limit
    assert scored["correct"]["math_verify"] == {"strict": True, "flexible": True}
    assert scored["timeouts"] == {}
    assert "retrying" in caplog.text and "timed out" not in caplog.text


def test_timeout_after_retry_is_reported_main_thread(limits, monkeypatch, caplog):
    monkeypatch.setattr(symbolic, "_math_verify_check", burn_cpu)
    limits(0.2, 0.3)
    with caplog.at_level(logging.WARNING, logger="sorsa_repro.evaluation"):
        scored = score_completion("math", "So $\\boxed{0.5}$.", sol("7"))
        assert grade_math(said("0.5"), sol("7")) is False
    assert scored["correct"]["math_verify"] == {"strict": False, "flexible": False}
    assert scored["timeouts"] == {"math_verify": ["flexible"]}  # no strict answer: nothing to time out
    assert caplog.text.count("timed out") == 2


def test_retry_with_larger_limit_worker(limits, burning_worker, caplog):
    limits(0.2, 30)
    with caplog.at_level(logging.INFO, logger="sorsa_repro.evaluation"):
        scored = in_thread(lambda: score_completion("math", said("0.5"), sol("7")))
    assert scored["correct"]["math_verify"] == {"strict": True, "flexible": True}
    assert scored["timeouts"] == {}
    assert "retrying" in caplog.text


def test_timeout_after_retry_is_reported_worker(limits, burning_worker, caplog):
    limits(0.2, 0.3)
    with caplog.at_level(logging.WARNING, logger="sorsa_repro.evaluation"):
        scored = in_thread(lambda: score_completion("math", said("0.5"), sol("7")))
        assert in_thread(lambda: grade_math(said("0.1"), sol("7"))) is True  # the worker came back
    assert scored["correct"]["math_verify"] == {"strict": False, "flexible": False}
    assert scored["timeouts"] == {"math_verify": ["strict", "flexible"]}
    assert "timed out" in caplog.text


def test_previous_sigprof_handler_and_timer_are_restored(monkeypatch):
    monkeypatch.setattr(symbolic, "_math_verify_check", burn_cpu)
    calls = []

    def mine(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGPROF, mine)
    try:
        assert grade_math(said("0.01"), sol("7")) is True
        assert signal.getsignal(signal.SIGPROF) is mine
        assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGPROF, previous)
    assert calls == []


def test_someone_elses_profiling_timer_is_left_alone(monkeypatch):
    """A running ITIMER_PROF (a profiler's) is not touched: the check goes to the worker process."""
    sent = []

    class FakeWorker:
        def check(self, answer, gold, cpu_seconds):
            sent.append((answer, gold, cpu_seconds))
            return True

    monkeypatch.setattr(symbolic, "_worker", FakeWorker())
    ticks = []
    previous = signal.signal(signal.SIGPROF, lambda signum, frame: ticks.append(signum))
    signal.setitimer(signal.ITIMER_PROF, 1000.0, 1000.0)
    try:
        assert grade_math(said("5"), sol("5")) is True
        remaining, interval = signal.getitimer(signal.ITIMER_PROF)
        assert 990 < remaining <= 1001 and interval == 1000.0
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
    assert sent == [("5", "5", symbolic.MATH_VERIFY_TIMEOUT_S)]


class CpuHogs:
    """Two CPU-bound processes per available core, competing with the tests' own."""

    def __init__(self, per_core: int = 2) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(per_core * cores)
        ]

    def __enter__(self):
        time.sleep(0.3)  # let them start
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def test_verdict_does_not_depend_on_machine_load(limits, monkeypatch, burning_worker):
    """0.5 s of CPU under a 0.8 s CPU limit (no retry to rescue it) passes, however long it takes on the wall:
    with two busy processes per core this process gets well under half a core."""
    monkeypatch.setattr(symbolic, "_math_verify_check", burn_cpu)
    limits(0.8, 0.8)
    assert in_thread(lambda: grade_math(said("0"), sol("7"))) is True  # start the worker before the load
    with CpuHogs(per_core=2):
        start = time.perf_counter()
        main = score_completion("math", said("0.5"), sol("7"))
        main_wall = time.perf_counter() - start
        other = in_thread(lambda: score_completion("math", said("0.5"), sol("7")))
    for scored in (main, other):
        assert scored["correct"]["math_verify"] == {"strict": True, "flexible": True}
        assert scored["timeouts"] == {}
    print(f"0.5 s of CPU took {main_wall:.1f} s on the wall under load")


@pytest.mark.slow
def test_integral_verdict_under_load():
    r"""The real check that used to flip with the load: \int_0^\infty e^{-x^2}dx = \frac{\sqrt{\pi}}{2}.

    It takes 3.5-5.5 s of CPU (more the first time in a process), so it may run out of the first limit;
    then the retry decides. Main thread (SIGPROF), the path evaluation uses.
    """
    completion, reference = said("\\int_0^\\infty e^{-x^2}dx"), sol("\\frac{\\sqrt{\\pi}}{2}")
    with CpuHogs(per_core=1):
        scored = score_completion("math", completion, reference)
    assert scored["correct"]["math_verify"] == {"strict": True, "flexible": True}
    assert scored["timeouts"] == {}


def test_grader_error_is_logged_and_wrong(monkeypatch, caplog):
    def boom(answer, gold):
        raise RuntimeError("boom")

    monkeypatch.setitem(graders._CHECKS, ("math", "lenient"), boom)
    with caplog.at_level(logging.WARNING, logger="sorsa_repro.evaluation"):
        assert grade_math(said("5"), sol("5"), grader="lenient") is False
    assert "boom" in caplog.text
