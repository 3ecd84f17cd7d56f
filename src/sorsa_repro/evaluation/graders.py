r"""Answer extraction and grading for GSM8K, MATH, MATH-500 and the synthetic benchmark (DESIGN.md 3).

The suite's common extraction (reported as ``strict_answer`` / ``flexible_answer``):

- strict: the rest of the line after the last ``The answer is:`` (MetaMathQA's format), trailing
  period and whitespace removed;
- flexible: the strict answer if there is one, else the last ``\boxed{...}``, else the last number.

Gold: GSM8K's ``#### N``, MATH's last ``\boxed{...}``; a bare answer ("18", "\frac{1}{2}") is taken as is.

Graders (see ``GRADERS`` and ``GRADER_VERSIONS``; bump a version whenever a verdict may change,
extraction included). Each reports a ``strict`` and a ``flexible`` verdict:

- ``metamath`` (GSM8K, MATH): exactly MetaMath's evaluation scripts (meta-math/MetaMath at commit
  fe667b14f9a4c51bde9809adafb82b6b5d255800: ``eval_gsm8k.py``, ``eval_math.py``, ``util.py``), which
  PiSSA used (GraphPKU/PiSSA ``utils/test_acc.py`` has the same functions). The code below is our own;
  the comments cite the file and line of each rule it carries over. No leniency is added.

  * strict: MetaMath's own pipeline on the raw completion, not the suite's extraction. The text after
    the last ``"The answer is: "`` (trailing space included; no marker: wrong). GSM8K: the first match
    of ``[\-+]?\d*[\.,/]?\d+`` in it, ``a/b`` divided, commas dropped, ``round(float(...))`` (Python's
    round: 18.5 -> 18), compared as floats with the gold number (``18.4`` is right for 18,
    ``1,000,000`` reads as 1000). MATH: the text up to the first ``".\n"``, stripped, one final period
    removed, then Hendrycks' ``is_equiv``: equality of ``strip_string`` forms, or of the raw strings when
    ``strip_string`` raises; gold ``remove_boxed(last_boxed_only_string(solution))``, so a solution
    whose last box is ``\fbox{..}``, ``\boxed 5`` or unclosed has no gold and every answer is wrong.
  * flexible: true when strict is; otherwise the suite's ``extract_flexible`` answer compared the
    MetaMath way (GSM8K: the number rule above applied to that answer; MATH: ``is_equiv``).
  * extensions, only where MetaMath's script has no verdict: a gold without ``#### `` / ``\boxed``
    (synthetic benchmark, bare MATH-500 answers) is the suite's gold; where MetaMath's script would
    crash (``-inf``, a zero denominator written ``00``, a non-integer gold) the answer is wrong or the
    gold is read as a float.
- ``lenient`` (MATH): the suite's strict / flexible extraction and equality of normalised strings
  (``normalize_math_answer``: MetaMath's rules plus bare ``$``, ``%``, ``\text{}`` units, ``\boxed{}``,
  ``\sqrt 3``, short ``x =``), plus equality of plain decimal numbers (``18.0 == 18``, ``1,000 == 1000``;
  ``32, 349`` is a list, not 32349). This was ``metamath-1``; it is more lenient than MetaMath.
- ``numeric`` (GSM8K, synthetic): the first number of the suite's answer equals the gold number exactly
  (compared as fractions: ``18.0 == 18``, ``1/2 == 0.5``; ``$``, ``,`` separators, ``%`` and words ignored).
- ``math_verify`` (MATH): symbolic equivalence with the ``math-verify`` library on the suite's answers.
  Each check is bounded by CPU time, not wall time, so that verdicts do not depend on machine load:
  ``MATH_VERIFY_TIMEOUT_S`` CPU seconds, and a check that runs out is retried once with
  ``MATH_VERIFY_RETRY_TIMEOUT_S``. One that times out again is a third outcome: it counts as wrong in
  ``correct`` and is listed in ``score_completion(...)["timeouts"]``. In the main thread the limit is a
  SIGPROF timer (``ITIMER_PROF``: this process's CPU time, all its threads); elsewhere the check runs
  in a worker process whose CPU time is read from ``/proc`` (wall time where there is no ``/proc``).
  Either way a wall-clock safety net of ``WALL_SAFETY_FACTOR`` times the limit stops a stuck check.

A grader never raises: empty, degenerate or unparsable output, a timeout or an error counts as
wrong (the last two are logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from fractions import Fraction
from importlib.metadata import version

from sorsa_repro.data.answer_format import last_boxed
from sorsa_repro.evaluation.extract import (
    MAX_ANSWER_CHARS,
    _first_number_value,
    benchmark_kind,
    extract_flexible,
    extract_gold,
    extract_strict,
)
from sorsa_repro.evaluation.metamath import (
    _metamath_gsm8k_equal,
    metamath_gsm8k_gold,
    metamath_gsm8k_strict,
    metamath_is_equiv,
    metamath_math_gold,
    metamath_math_strict,
)
from sorsa_repro.evaluation.symbolic import GraderTimeout, _math_verify_equal
from sorsa_repro.evaluation.tasks import TASKS

logger = logging.getLogger(__name__)


GRADERS: dict[str, list[str]] = {name: list(t.graders) for name, t in TASKS.items()}  # evaluation/tasks.py
GRADER_VERSIONS: dict[str, str] = {
    "numeric": "numeric-1",
    "metamath": "metamath-2",  # exactly MetaMath (GSM8K and MATH); metamath-1 lives on as lenient-1
    "lenient": "lenient-1",
    "math_verify": f"math_verify-{version('math-verify')}-2",  # 2: CPU-time limits and one retry
}
MODES = ("strict", "flexible")


# ---------------------------------------------------------------------------------------------
# numeric and lenient: equality of the suite's extracted answers


def _numeric_equal(answer: str, gold: str) -> bool:
    value, gold_value = _first_number_value(answer), _first_number_value(gold)
    return value is not None and value == gold_value


_TRAILING_UNIT = re.compile(r"(?<=\S)\s*\\(?:text|textrm|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\{([^{}]*)\}")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_LIST_COMMA = re.compile(r",\s")  # "32, 349" is a list of two numbers, not 32349


def _unbox(s: str) -> str:
    inner = last_boxed(s)
    return inner if inner is not None and s == f"\\boxed{{{inner}}}" else s


def _fix_fracs(s: str) -> str:
    """Braces for one-character arguments: ``\\frac12``, ``\\frac1{2}``, ``\\frac{1}2`` -> ``\\frac{1}{2}``."""
    s = re.sub(r"\\frac([^{\\])([^{\\])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac([^{\\])\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}([^{\\])", r"\\frac{\1}{\2}", s)


def normalize_math_answer(answer: str) -> str:
    """Canonical string of a MATH answer for the ``lenient`` grader (Hendrycks-style, more lenient)."""
    s = answer.strip().replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = _unbox(s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # degrees
    s = s.replace("\\$", "").replace("$", "")
    s = _TRAILING_UNIT.sub("", s)  # "5 \text{ cm}" -> "5"
    s = _TEXT_WRAPPER.sub(r"\1", s)  # "\text{(A)}" -> "(A)"
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    lhs, eq, rhs = s.partition("=")
    if eq and "=" not in rhs and len(lhs.strip()) <= 2:  # "x = 5" -> "5"
        s = rhs
    s = s.replace(" ", "")
    s = re.sub(r"\\sqrt([^{\\\[])", r"\\sqrt{\1}", s)  # \sqrt3 -> \sqrt{3}
    s = _fix_fracs(s)
    if s == "0.5":  # the one decimal the classic normalisation maps to a fraction
        s = "\\frac{1}{2}"
    if m := re.fullmatch(r"(-?\d+)/(\d+)", s):
        s = f"\\frac{{{m[1]}}}{{{m[2]}}}"
    return s


def _lenient_equal(answer: str, gold: str) -> bool:
    a, g = normalize_math_answer(answer), normalize_math_answer(gold)
    if a == g:
        return bool(a)
    if _LIST_COMMA.search(answer) or _LIST_COMMA.search(gold):
        return False  # the spaces are gone from a and g: "32, 349" would read as 32,349
    if _PLAIN_NUMBER.fullmatch(a) and _PLAIN_NUMBER.fullmatch(g):  # "18.0" == "18", "1,000" == "1000"
        return Fraction(a.replace(",", "")) == Fraction(g.replace(",", ""))
    return False


# ---------------------------------------------------------------------------------------------
# grading

# checks on extracted answers: (benchmark kind, grader) -> equal(answer, gold)
_CHECKS: dict[tuple[str, str], Callable] = {
    ("gsm8k", "numeric"): _numeric_equal,
    ("gsm8k", "metamath"): _metamath_gsm8k_equal,
    ("math", "metamath"): metamath_is_equiv,
    ("math", "lenient"): _lenient_equal,
    ("math", "math_verify"): _math_verify_equal,
}
# graders with their own gold and their own strict pipeline on the raw completion
_METAMATH = {
    "gsm8k": (metamath_gsm8k_gold, metamath_gsm8k_strict),
    "math": (metamath_math_gold, metamath_math_strict),
}


def _guarded(grader: str, fn: Callable[[], bool], answer, gold) -> bool | None:
    """``fn()`` as a bool; None when it timed out (logged), False when it failed (logged)."""
    try:
        return bool(fn())
    except GraderTimeout:
        logger.warning(
            "%s grader timed out on %.80r (gold %.80r), also on its retry; reported, counted wrong",
            grader, answer, gold,
        )  # fmt: skip
        return None
    except Exception:
        logger.warning(
            "%s grader failed on %.80r (gold %.80r); counted wrong", grader, answer, gold, exc_info=True
        )
        return False


def _check(kind: str, grader: str, answer: str | None, gold) -> bool | None:
    if not answer or gold is None or gold == "":
        return False
    equal = _CHECKS[(kind, grader)]
    if grader != "metamath":
        answer = answer[:MAX_ANSWER_CHARS]
    return _guarded(grader, lambda: equal(answer, gold), answer, gold)


def _verdicts(benchmark: str, grader: str, completion, reference, modes=MODES) -> dict[str, bool | None]:
    """Per mode, True / False, or None for a check that timed out twice."""
    kind = benchmark_kind(benchmark)
    if (kind, grader) not in _CHECKS:
        raise ValueError(f"unknown grader {grader!r} for {benchmark}; expected one of {GRADERS[benchmark]}")
    completion = completion if isinstance(completion, str) else ""
    out: dict[str, bool | None] = {}
    if grader == "metamath":
        read_gold, strict_pipeline = _METAMATH[kind]
        gold = read_gold(benchmark, reference)
        out["strict"] = _guarded(grader, lambda: strict_pipeline(completion, gold), completion[-80:], gold)
        if "flexible" in modes:
            flexible = out["strict"] or _check(kind, grader, extract_flexible(completion), gold)
            out["flexible"] = flexible
    else:
        gold = extract_gold(benchmark, reference)
        strict = extract_strict(completion)
        out["strict"] = _check(kind, grader, strict, gold)
        if "flexible" in modes:
            flexible = extract_flexible(completion)
            out["flexible"] = out["strict"] if flexible == strict else _check(kind, grader, flexible, gold)
    return {mode: out[mode] for mode in modes}


def grade_answer(grader: str, answer: str | None, gold: str | None, benchmark: str | None = None) -> bool:
    """One grader's verdict on an extracted answer and gold (MetaMath's comparison for ``metamath``).

    ``benchmark`` picks GSM8K or MATH rules; by default ``numeric`` is GSM8K's, the others MATH's.
    Never raises, except for an unknown grader; a timeout counts as wrong.
    """
    kind = (
        benchmark_kind(benchmark) if benchmark is not None else ("gsm8k" if grader == "numeric" else "math")
    )
    if (kind, grader) not in _CHECKS:
        raise ValueError(f"unknown grader {grader!r}; expected one of {sorted({g for _, g in _CHECKS})}")
    if kind == "gsm8k" and grader == "metamath":
        gold = metamath_gsm8k_gold("gsm8k", gold)
    return _check(kind, grader, answer, gold) is True


# ---------------------------------------------------------------------------------------------
# public entry points


def score_completion(benchmark: str, completion: str, reference: str) -> dict:
    """The suite's extracted answers, gold and, per grader of the benchmark, the strict and flexible verdicts::

    {"strict_answer": str|None, "flexible_answer": str|None, "gold": str|None,
     "correct": {grader: {"strict": bool, "flexible": bool}},
     "timeouts": {grader: ["strict" and/or "flexible"]}}

    A verdict listed in ``timeouts`` (math_verify ran out of time twice) is False in ``correct``;
    ``timeouts`` is empty when every check finished.
    """
    gold = extract_gold(benchmark, reference)
    correct, timeouts = {}, {}
    for grader in GRADERS[benchmark]:
        verdicts = _verdicts(benchmark, grader, completion, reference)
        correct[grader] = {mode: verdicts[mode] is True for mode in MODES}
        if timed_out := [mode for mode in MODES if verdicts[mode] is None]:
            timeouts[grader] = timed_out
    return {
        "strict_answer": extract_strict(completion),
        "flexible_answer": extract_flexible(completion),
        "gold": gold,
        "correct": correct,
        "timeouts": timeouts,
    }


def grade_gsm8k(completion: str, reference: str, grader: str = "numeric") -> bool:
    """Strict verdict on a GSM8K completion; ``reference`` is the ``answer`` field (``#### N``) or a bare N.

    ``grader="metamath"``: MetaMath's eval_gsm8k.py on the raw completion.
    """
    if grader not in GRADERS["gsm8k"]:
        raise ValueError(f"unknown GSM8K grader {grader!r}; expected one of {GRADERS['gsm8k']}")
    return _verdicts("gsm8k", grader, completion, reference, modes=("strict",))["strict"] is True


def grade_math(completion: str, reference: str, grader: str = "math_verify") -> bool:
    """Strict verdict on a MATH completion; ``reference`` is the ``solution`` (last ``\\boxed{}``) or a bare answer.

    ``grader="metamath"``: MetaMath's eval_math.py + util.py on the raw completion.
    """
    if grader not in GRADERS["math"]:
        raise ValueError(f"unknown MATH grader {grader!r}; expected one of {GRADERS['math']}")
    return _verdicts("math", grader, completion, reference, modes=("strict",))["strict"] is True
