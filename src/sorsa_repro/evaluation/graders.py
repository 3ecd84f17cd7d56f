r"""Answer extraction and grading for GSM8K, MATH, MATH-500 and the synthetic benchmark (DESIGN.md 3).

Extraction, the same for every benchmark:

- strict: the rest of the line after the last ``The answer is:`` (MetaMathQA's format), trailing
  period and whitespace removed;
- flexible: the strict answer if there is one, else the last ``\boxed{...}``, else the last number.

Gold: GSM8K's ``#### N``, MATH's last ``\boxed{...}``; a bare answer ("18", "\frac{1}{2}") is taken as is.

Graders (see ``GRADERS`` and ``GRADER_VERSIONS``; bump a version whenever a verdict may change,
extraction included):

- ``numeric`` (GSM8K, synthetic): the first number of the answer equals the gold number exactly
  (compared as fractions: ``18.0 == 18``, ``1/2 == 0.5``; ``$``, ``,`` separators, ``%`` and words ignored).
- ``metamath`` (MATH): equality of Hendrycks-style normalised strings (MetaMath's eval_math.py,
  which PiSSA used), plus equality of plain decimal numbers.
- ``math_verify`` (MATH): symbolic equivalence with the ``math-verify`` library under a time limit.

A grader never raises: empty, degenerate or unparsable output, a timeout or an error counts as
wrong (the last two are logged).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

logger = logging.getLogger(__name__)

ANSWER_MARKER = "The answer is:"
MAX_COMPLETION_CHARS = 20_000  # only the tail is read: the final answer is at the end
MAX_ANSWER_CHARS = 500  # a longer "answer" is degenerate; cut it so parsing stays fast
MATH_VERIFY_TIMEOUT_S = 5.0  # per answer: parsing both sides and comparing

GRADERS: dict[str, list[str]] = {
    "gsm8k": ["numeric"],
    "synthetic": ["numeric"],
    "math": ["metamath", "math_verify"],
    "math500": ["metamath", "math_verify"],
}
GRADER_VERSIONS: dict[str, str] = {
    "numeric": "numeric-1",
    "metamath": "metamath-1",
    "math_verify": f"math_verify-{version('math-verify')}-1",
}


class GraderTimeout(BaseException):
    """Raised when a grader runs out of time. BaseException, so that math-verify's
    ``except Exception`` handlers cannot swallow it."""


# ---------------------------------------------------------------------------------------------
# extraction


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


_BOXED = re.compile(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+([^\s${}]+))")


def _braced(text: str, open_pos: int) -> str | None:
    """Content of the brace group opening at ``text[open_pos]``, or None when it never closes."""
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : i]
    return None


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (or ``\boxed 5``), nested braces matched."""
    matches = list(_BOXED.finditer(_tail(text)))
    for m in reversed(matches[-5:]):  # skip unclosed ones (cut-off output), but only a few: stay fast
        if m.group(2):
            return m.group(2)
        inner = _braced(m.string, m.start(1))
        if inner is not None:
            return inner
    return None


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
    if benchmark not in GRADERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(GRADERS)}")
    numeric = GRADERS[benchmark] == ["numeric"]
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


# ---------------------------------------------------------------------------------------------
# graders on extracted answers


def _numeric_equal(answer: str, gold: str) -> bool:
    value, gold_value = _first_number_value(answer), _first_number_value(gold)
    return value is not None and value == gold_value


_TRAILING_UNIT = re.compile(r"(?<=\S)\s*\\(?:text|textrm|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\{([^{}]*)\}")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _unbox(s: str) -> str:
    inner = last_boxed(s)
    return inner if inner is not None and s == f"\\boxed{{{inner}}}" else s


def _fix_fracs(s: str) -> str:
    """Braces for one-character arguments: ``\\frac12``, ``\\frac1{2}``, ``\\frac{1}2`` -> ``\\frac{1}{2}``."""
    s = re.sub(r"\\frac([^{\\])([^{\\])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac([^{\\])\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}([^{\\])", r"\\frac{\1}{\2}", s)


def normalize_math_answer(answer: str) -> str:
    """Canonical string of a MATH answer for the ``metamath`` grader (Hendrycks-style normalisation)."""
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


def _metamath_equal(answer: str, gold: str) -> bool:
    a, g = normalize_math_answer(answer), normalize_math_answer(gold)
    if a == g:
        return bool(a)
    if _PLAIN_NUMBER.fullmatch(a) and _PLAIN_NUMBER.fullmatch(g):  # "18.0" == "18", "1,000" == "1000"
        return Fraction(a.replace(",", "")) == Fraction(g.replace(",", ""))
    return False


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _as_latex(s: str) -> str:
    # math-verify reads maths inside $...$ or \boxed{}; wrap a bare answer so that e.g. \sqrt{2} parses
    return s if _UNESCAPED_DOLLAR.search(s) or "\\boxed" in s else f"${s}$"


def _math_verify_check(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    # timeouts off: math-verify's own ones use signals, which work only in the main thread;
    # _math_verify_equal bounds the whole check instead
    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
    parsed = parse(_as_latex(answer), parsing_timeout=None)
    return bool(gold_parsed and parsed and verify(gold_parsed, parsed, timeout_seconds=None))


def _math_verify_equal(answer: str, gold: str) -> bool:
    if _alarm_usable():
        import math_verify  # noqa: F401  (outside the time limit: the first import is slow)

        return _call_with_alarm(lambda: _math_verify_check(answer, gold), MATH_VERIFY_TIMEOUT_S)
    return _worker.check(answer, gold, MATH_VERIFY_TIMEOUT_S)


class _HideTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once that we passed timeout None; we enforce our own limit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_HideTimeoutDisabledNotice())


def _alarm_usable() -> bool:
    """SIGALRM works only in the main thread; leave a timer someone else has set alone."""
    main = threading.current_thread() is threading.main_thread()
    return main and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def _call_with_alarm(fn: Callable[[], bool], seconds: float) -> bool:
    """``fn()``, or GraderTimeout after ``seconds`` (CPython checks signals even inside big-int maths)."""

    def on_alarm(signum, frame):
        raise GraderTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)  # fire again should some code swallow the first
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _serve_checks() -> None:
    """Body of the worker process: one JSON ``[answer, gold]`` per stdin line, one verdict per stdout line."""
    import math_verify  # noqa: F401

    out, sys.stdout = sys.stdout, sys.stderr  # keep stray prints off the reply channel
    print('"ready"', file=out, flush=True)
    for line in sys.stdin:
        try:
            reply = ["ok", _math_verify_check(*json.loads(line))]
        except Exception as exc:
            reply = ["error", repr(exc)]
        print(json.dumps(reply), file=out, flush=True)


class _VerifyWorker:
    """A child process that runs math-verify for callers off the main thread.

    There no signal can interrupt the work, and a thread cannot be stopped (sympy may even hold the
    GIL for ever inside one huge integer power), so the check runs in a process that is killed when
    it runs out of time; the next call starts a new one. One worker, shared under a lock. A plain
    subprocess, not multiprocessing: no re-import of the caller's __main__, allowed in daemon processes.
    """

    START_TIMEOUT_S = 120.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def check(self, answer: str, gold: str, seconds: float) -> bool:
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                self._proc.stdin.write(json.dumps([answer, gold]) + "\n")
                self._proc.stdin.flush()
                status, value = self._read(seconds)
            except BaseException:
                self._stop()
                raise
            if status != "ok":
                raise RuntimeError(f"math-verify worker: {value}")
            return value

    def _start(self) -> None:
        self._stop()
        src = str(Path(__file__).resolve().parents[2])  # so the child imports this very package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        code = "from sorsa_repro.evaluation.graders import _serve_checks; _serve_checks()"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        if self._read(self.START_TIMEOUT_S) != "ready":
            raise RuntimeError("math-verify worker did not start")

    def _read(self, seconds: float):
        ready, _, _ = select.select([self._proc.stdout], [], [], seconds)
        if not ready:
            raise GraderTimeout
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("math-verify worker exited")
        return json.loads(line)

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._proc = None


_worker = _VerifyWorker()


_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "numeric": _numeric_equal,
    "metamath": _metamath_equal,
    "math_verify": _math_verify_equal,
}


def grade_answer(grader: str, answer: str | None, gold: str | None) -> bool:
    """One grader's verdict on an extracted answer. Never raises, except for an unknown grader."""
    if grader not in _CHECKS:
        raise ValueError(f"unknown grader {grader!r}; expected one of {sorted(_CHECKS)}")
    if not answer or not gold:
        return False
    try:
        return bool(_CHECKS[grader](answer[:MAX_ANSWER_CHARS], gold))
    except GraderTimeout:
        logger.warning("%s grader timed out on %.80r (gold %.80r); counted wrong", grader, answer, gold)
    except Exception:
        logger.warning(
            "%s grader failed on %.80r (gold %.80r); counted wrong", grader, answer, gold, exc_info=True
        )
    return False


# ---------------------------------------------------------------------------------------------
# public entry points


def score_completion(benchmark: str, completion: str, reference: str) -> dict:
    """Extracted answers, gold and, per grader of the benchmark, the strict and flexible verdicts::

    {"strict_answer": str|None, "flexible_answer": str|None, "gold": str|None,
     "correct": {grader: {"strict": bool, "flexible": bool}}}
    """
    gold = extract_gold(benchmark, reference)
    strict, flexible = extract_strict(completion), extract_flexible(completion)
    correct = {}
    for grader in GRADERS[benchmark]:
        verdict = grade_answer(grader, strict, gold)
        flexible_verdict = verdict if flexible == strict else grade_answer(grader, flexible, gold)
        correct[grader] = {"strict": verdict, "flexible": flexible_verdict}
    return {"strict_answer": strict, "flexible_answer": flexible, "gold": gold, "correct": correct}


def grade_gsm8k(completion: str, reference: str) -> bool:
    """Strict verdict on a GSM8K completion; ``reference`` is the ``answer`` field (``#### N``) or a bare N."""
    return grade_answer("numeric", extract_strict(completion), extract_gold("gsm8k", reference))


def grade_math(completion: str, reference: str, grader: str = "math_verify") -> bool:
    """Strict verdict on a MATH completion; ``reference`` is the ``solution`` (last ``\\boxed{}``) or a bare answer."""
    if grader not in GRADERS["math"]:
        raise ValueError(f"unknown MATH grader {grader!r}; expected one of {GRADERS['math']}")
    return grade_answer(grader, extract_strict(completion), extract_gold("math", reference))
