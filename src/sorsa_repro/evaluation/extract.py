"""The suite's answer extraction (reported as ``strict_answer`` / ``flexible_answer``) and gold answers.

- strict: the rest of the line after the last ``The answer is:`` (MetaMathQA's format), trailing period and
  whitespace removed;
- flexible: the strict answer if there is one, else the last ``\\boxed{...}``, else the last number.

Gold: GSM8K's ``#### N``, MATH's last ``\\boxed{...}``; a bare answer ("18", "\\frac{1}{2}") is taken as is.
The graders (``evaluation.graders``) compare what these functions return.
"""

from __future__ import annotations

import re
from fractions import Fraction

from sorsa_repro.data.answer_format import ANSWER_MARKER, last_boxed
from sorsa_repro.evaluation.tasks import TASKS

MAX_COMPLETION_CHARS = 20_000  # the suite's extraction reads only the tail: the final answer is at the end
MAX_ANSWER_CHARS = 500  # a longer "answer" is degenerate; cut it so parsing stays fast
_NUMERIC_BENCHMARKS = ("gsm8k", "synthetic")  # gold "#### N"; the others are MATH-like (gold in \\boxed{})


def benchmark_kind(benchmark: str) -> str:
    """ "gsm8k" for benchmarks with numeric gold answers, "math" for the MATH-like ones."""
    if benchmark not in TASKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(TASKS)}")
    return "gsm8k" if benchmark in _NUMERIC_BENCHMARKS else "math"


def _tail(text: str | None) -> str:
    return text[-MAX_COMPLETION_CHARS:] if isinstance(text, str) else ""


def extract_strict(completion: str) -> str | None:
    """The answer after the last ``The answer is:``, or None."""
    text = _tail(completion)
    pos = text.rfind(ANSWER_MARKER)
    if pos < 0:
        return None
    rest = text[pos + len(ANSWER_MARKER) :].lstrip()  # the answer may start on the next line
    answer = rest.split("\n", 1)[0][:MAX_ANSWER_CHARS].strip().rstrip(".").rstrip()
    return answer or None


_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
# sign only when the minus is not a binary one ("5-3"); optional "/ denominator"
_NUMBER = re.compile(r"((?<![\w)}])-)?(" + _NUM + r")(?:\s*/\s*(" + _NUM + r"))?")
_FRAC_ARG = r"(?:\{\s*(-?[\d.,]+)\s*\}|(\d))"
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)


def _numeric_text(text: str) -> str:
    r"""Text with numbers made plain: unicode minus, ``\$``, ``1{,}000``, ``\frac{1}{2}`` -> ``1/2``."""
    text = text.replace("\u2212", "-").replace("\\!", "").replace("{,}", ",").replace("$", "")
    return _LATEX_FRAC.sub(lambda m: f"{m[1] or m[2]}/{m[3] or m[4]}", text)


def last_number(text: str) -> str | None:
    """The last number in the text (with its sign and an ``a/b`` fraction), or None."""
    matches = list(_NUMBER.finditer(_numeric_text(_tail(text))))
    return matches[-1].group(0).replace(" ", "") if matches else None


def _first_number_value(text: str) -> Fraction | None:
    m = _NUMBER.search(_numeric_text(text))
    if m is None:
        return None
    sign, num, den = m.groups()
    try:
        value = Fraction(num.replace(",", ""))
        if den:
            value /= Fraction(den.replace(",", ""))
    except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() accepts
        return None
    return -value if sign else value


def extract_flexible(completion: str) -> str | None:
    """The strict answer if present, else the last boxed answer, else the last number."""
    return extract_strict(completion) or last_boxed(completion) or last_number(completion)


def extract_gold(benchmark: str, reference: str) -> str | None:
    """The gold answer from a dataset's raw gold field (or a bare answer)."""
    ref = "" if reference is None else str(reference)
    numeric = benchmark_kind(benchmark) == "gsm8k"
    boxed = None if numeric else last_boxed(ref)
    if numeric and "####" in ref:
        gold = ref.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    elif boxed is not None:
        gold = boxed
    elif ANSWER_MARKER in ref:
        gold = extract_strict(ref)
    else:
        gold = ref
    return (gold or "").strip().rstrip(".").rstrip() or None  # a few MATH golds end in a period
