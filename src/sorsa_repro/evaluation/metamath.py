"""The ``metamath`` grader: exactly MetaMath's evaluation scripts, which PiSSA used.

Citations are meta-math/MetaMath at commit fe667b14 (2024-02-01): ``eval_gsm8k.py``, ``eval_math.py``,
``util.py``; GraphPKU/PiSSA ``utils/test_acc.py`` (commit 87f4db6f) holds the same GSM8K and MATH functions.
The code is our own; the comments cite the file and line of each rule it carries over. The rules, and where
the suite extends them, are listed in ``evaluation.graders``.
"""

from __future__ import annotations

import math
import re
import unicodedata

from sorsa_repro.data.answer_format import METAMATH_ANSWER_SPLIT
from sorsa_repro.evaluation.extract import extract_gold


def _metamath_is_number(s: str) -> bool:
    """eval_gsm8k.py:10-22 ``is_number``: float() accepts it, or it is one numeric unicode character."""
    try:
        float(s)
        return True
    except ValueError:
        pass
    try:
        unicodedata.numeric(s)
        return True
    except (TypeError, ValueError):
        return False


_METAMATH_GSM8K_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")  # eval_gsm8k.py:28


def metamath_gsm8k_number(text: str) -> int | None:
    """The number MetaMath reads from the text after its marker (eval_gsm8k.py:27-50), or None.

    ``round`` is Python's (half to even): ``18.5`` -> 18. None where MetaMath returns None, and where its
    script would crash (``-inf``, a ``00`` denominator: an exception, not a verdict).
    """
    match = _METAMATH_GSM8K_NUMBER.search(text.strip())  # :27 strip, :28 first match anywhere after
    if match is None:
        return None  # :47-48
    found = match.group()
    try:
        if "/" in found:  # :30
            numerator, denominator = found.split("/")  # :31-32 (the regex allows one separator only)
            if not (_metamath_is_number(denominator) and _metamath_is_number(numerator)):
                return None  # :33, :41-42 (a numerator without digits: "-/5")
            if denominator == "0":
                return round(float(numerator.replace(",", "")))  # :34-35: "5/0" reads as 5
            # :37-40 divide with the `fraction` package, then round(float(n / d)). That package reads each
            # side through float() (it crashes on one too long for a float: no verdict, wrong here); plain
            # int division gives the same float as long as the numbers fit a float exactly (below 2**53)
            if math.isinf(float(numerator)) or math.isinf(float(denominator)):
                return None
            return round(int(numerator) / int(denominator))
        value = float(found.replace(",", ""))  # :44, :46 commas dropped: "1,000" -> 1000, "1,5" -> 15
        if value == math.inf:
            return None  # :44-45 a digit string too long for a float
        return round(value)  # :46
    except (ValueError, OverflowError, ZeroDivisionError):  # -inf, "3/00": MetaMath's script crashes
        return None


def metamath_gsm8k_gold(benchmark: str, reference: str) -> float | None:
    """The gold number: eval_gsm8k.py:80-81 reads ``int(answer.split('#### ')[1].replace(',', ''))``.

    GSM8K's golds are integers, so reading them as floats is the same; a gold that is not a number at
    all (MetaMath's script would crash) gives None, and every answer is wrong.
    """
    gold = extract_gold(benchmark, reference)  # the text after "####", first line (all GSM8K has)
    try:
        return float(gold.replace(",", "")) if gold is not None else None
    except ValueError:
        return None


def metamath_gsm8k_strict(completion: str, gold: float | None) -> bool:
    """MetaMath's GSM8K verdict on a raw completion (eval_gsm8k.py:24-50, :108-114)."""
    parts = completion.split(METAMATH_ANSWER_SPLIT)  # :25, trailing space included
    if len(parts) < 2 or gold is None:
        return False  # :49-50 no marker -> None -> wrong (:110-115)
    return _metamath_gsm8k_equal(parts[-1], gold)  # :27 the last part


def _metamath_gsm8k_equal(answer: str, gold: float) -> bool:
    predicted = metamath_gsm8k_number(answer)
    return predicted is not None and float(predicted) == float(gold)  # eval_gsm8k.py:111-112


def metamath_last_boxed_only_string(text: str) -> str | None:
    r"""util.py:10-35: from the last ``\boxed`` (else the last ``\fbox``) to the brace that brings the
    count of braces seen back to zero, both included; None when there is none. Unlike ``last_boxed``,
    ``\boxed 5`` and an unclosed last box are not read (no fallback to an earlier box)."""
    start = text.rfind("\\boxed")  # :11
    if start < 0:
        start = text.rfind("\\fbox")  # :12-15
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):  # :20-28
        if text[i] == "{":
            depth += 1
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]  # :33
    return None  # :30-31


def metamath_remove_boxed(boxed: str | None) -> str | None:
    r"""eval_math.py:13-20: the inside of ``\boxed{...}``; None for anything else (``\fbox{}`` included)."""
    left = "\\boxed{"
    if boxed is None or not boxed.startswith(left) or not boxed.endswith("}"):
        return None  # :19-20 a failed assert, or None[...] raising TypeError, is caught: None
    return boxed[len(left) : -1]


def metamath_math_gold(benchmark: str, reference: str) -> str | None:
    r"""eval_math.py:67-68: ``remove_boxed(last_boxed_only_string(solution))``.

    Extension: a reference with neither ``\boxed`` nor ``\fbox`` (a bare MATH-500 answer) is the suite's gold.
    """
    ref = "" if reference is None else str(reference)
    if "\\boxed" in ref or "\\fbox" in ref:
        return metamath_remove_boxed(metamath_last_boxed_only_string(ref))
    return extract_gold(benchmark, ref)


def metamath_math_answer(completion: str) -> str | None:
    """The answer MetaMath reads from a MATH completion (eval_math.py:23-32), None without its marker."""
    before, marker, answer = completion.rpartition(METAMATH_ANSWER_SPLIT)  # :23-25 the last part
    if not marker:
        return None  # :37-40
    answer = answer.partition(".\n")[0].strip()  # :26-27 up to the first ".\n"; other lines are kept
    if answer.endswith("."):  # :28-31 one final period
        answer = answer[:-1]
    return answer.strip()  # :32


def _metamath_remove_right_units(s: str) -> str:
    r"""util.py:140-147: cut at ``\text{ `` (with the space); two of them raise (assert, :144)."""
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise ValueError("more than one \\text{ ")  # :144 AssertionError; is_equiv catches either
    return parts[0]


def _metamath_fix_sqrt(s: str) -> str:
    r"""util.py:149-161: the one character after ``\sqrt`` is braced: ``\sqrt3`` -> ``\sqrt{3}``, but also
    ``\sqrt 3`` -> ``\sqrt{ }3`` (spaces go later). Nothing after ``\sqrt`` raises IndexError (:155)."""
    if "\\sqrt" not in s:
        return s
    first, *rest = s.split("\\sqrt")
    out = [first]
    for part in rest:
        if part[0] != "{":  # IndexError on an empty part, as in MetaMath
            out.append("\\sqrt{" + part[0] + "}" + part[1:])
        else:
            out.append("\\sqrt" + part)
    return "".join(out)


def _metamath_fix_fracs(s: str) -> str:
    r"""util.py:95-124: ``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}{2}`` (not ``\frac{1}2``).

    A part with fewer than two characters returns the input unchanged (:105-108); an empty part (``\frac``
    at the end, or ``\frac\frac``) raises IndexError (:102).
    """
    first, *rest = s.split("\\frac")
    out = [first]
    for part in rest:
        out.append("\\frac")
        if part[0] == "{":
            out.append(part)
            continue
        if len(part) < 2:
            return s
        a, b = part[0], part[1]
        out.append("{" + a + "}{" + b + "}" + part[2:] if b != "{" else "{" + a + "}" + b + part[2:])
    return "".join(out)


def _metamath_fix_a_slash_b(s: str) -> str:
    r"""util.py:126-138: ``3/4`` -> ``\frac{3}{4}`` when both sides are integers written plainly.

    Only a failed assert is caught there (:137): a side that int() cannot read raises ValueError, so
    ``is_equiv`` falls back to comparing the raw strings (``\pi/2``, ``x/2``).
    """
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = int(parts[0]), int(parts[1])  # ValueError propagates, as in MetaMath
    if s != f"{a}/{b}":  # :134 ("+3/4", "03/4" stay as they are)
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def metamath_strip_string(s: str) -> str:
    r"""Hendrycks' ``strip_string`` as MetaMath has it (util.py:164-226), step by step in its order.

    Raises where MetaMath's raises (two ``\text{ ``, an empty ``\sqrt`` / ``\frac`` argument, a
    non-integer side of ``a/b``); ``metamath_is_equiv`` then compares the raw strings.
    """
    s = s.replace("\n", "")  # :166
    s = s.replace("\\!", "")  # :169
    s = s.replace("\\\\", "\\")  # :172
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")  # :175-176
    s = s.replace("\\left", "").replace("\\right", "")  # :179-180
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")  # :183-184
    s = s.replace("\\$", "")  # :187 only the escaped dollar: "$5$" keeps its $
    s = _metamath_remove_right_units(s)  # :190 "5\text{ cm}" -> "5"; "5 \text{cm}" (no space) stays
    # :193-194 both lines remove the two characters "\%" ("\%" is "\\%" in Python); a bare "%" stays.
    # Two passes, as there: the first can leave a new "\%" behind ("\\%%" -> "\%").
    s = s.replace("\\%", "").replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")  # :197-198
    if not s:  # :200-201
        return s
    if s[0] == ".":  # :202-203
        s = "0" + s
    sides = s.split("=")  # :206-208 one "=" and at most two characters before it: "x = 5" -> " 5",
    if len(sides) == 2 and len(sides[0]) <= 2:  # but "xy = 5" (3 with the space) stays
        s = sides[1]
    s = _metamath_fix_sqrt(s)  # :211 before the spaces go
    s = s.replace(" ", "")  # :214
    s = _metamath_fix_fracs(s)  # :217
    if s == "0.5":  # :220-221 the one decimal mapped to a fraction
        s = "\\frac{1}{2}"
    return _metamath_fix_a_slash_b(s)  # :224


def metamath_is_equiv(answer: str | None, gold: str | None) -> bool:
    """util.py:229-244: equal ``strip_string`` forms; if stripping raises, equal raw strings."""
    if answer is None and gold is None:
        return True  # :230-232
    if answer is None or gold is None:
        return False  # :233-234
    try:
        return metamath_strip_string(answer) == metamath_strip_string(gold)  # :236-242
    except Exception:
        return answer == gold  # :243-244


def metamath_math_strict(completion: str, gold: str | None) -> bool:
    """MetaMath's MATH verdict on a raw completion (eval_math.py:22-40)."""
    answer = metamath_math_answer(completion)
    return answer is not None and metamath_is_equiv(answer, gold)  # :33; None: no marker, wrong
