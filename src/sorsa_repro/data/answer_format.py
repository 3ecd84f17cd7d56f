r"""The answer format, in one place: MetaMathQA's answer marker and the last ``\boxed{}`` of a text.

A leaf module (standard library only): the training data (``data.sources``) writes answers in this
format and the graders (``evaluation.graders``) read them back with the same definitions.

- ``ANSWER_MARKER``: MetaMathQA responses end with ``The answer is: N``. The suite's own extraction
  looks for the marker without the space, so that ``The answer is:\n18`` is found too.
- ``METAMATH_ANSWER_SPLIT``: the exact string MetaMath's evaluation scripts split a completion on,
  trailing space included (meta-math/MetaMath ``eval_gsm8k.py`` line 25, ``eval_math.py`` line 23).
- ``last_boxed``: the content of the last ``\boxed{...}``. MetaMath's own ``last_boxed_only_string``
  + ``remove_boxed`` (used only by the ``metamath`` grader) is stricter; see ``evaluation.graders``.
- ``gsm8k_to_metamath`` / ``math_to_metamath``: a GSM8K answer or a MATH solution rewritten as a
  MetaMathQA response (ending in ``The answer is: N``), to train on them like MetaMathQA.
"""

from __future__ import annotations

import re

ANSWER_MARKER = "The answer is:"
METAMATH_ANSWER_SPLIT = "The answer is: "
MAX_BOXED_SEARCH_CHARS = 20_000  # only the tail is searched: the final answer is at the end
MAX_UNCLOSED_SKIPPED = 4  # unclosed boxes (cut-off output) skipped before giving up: stay fast

# "\boxed{" / "\fbox{" (spaces allowed before the brace), or "\boxed 5" (argument up to a space, $ or brace)
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


def last_boxed(text: str | None) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (or ``\boxed 5``) in ``text``, or None.

    Nested braces are matched (``\boxed{\frac{1}{2}}`` -> ``\frac{1}{2}``), a space before the brace
    is allowed (``\boxed {12}`` -> ``12``), and an unclosed last box (output cut off) is skipped in
    favour of the one before it. Only the last ``MAX_BOXED_SEARCH_CHARS`` characters are read.
    """
    if not isinstance(text, str):
        return None
    matches = list(_BOXED.finditer(text[-MAX_BOXED_SEARCH_CHARS:]))
    for m in reversed(matches[-(MAX_UNCLOSED_SKIPPED + 1) :]):
        if m.group(2):
            return m.group(2)
        inner = _braced(m.string, m.start(1))
        if inner is not None:
            return inner
    return None


def gsm8k_to_metamath(answer: str) -> str:
    """GSM8K answer -> MetaMathQA form: drop <<calc>> annotations, final '#### N' -> 'The answer is: N'."""
    text = re.sub(r"<<[^<>]*>>", "", answer)
    body, sep, final = text.rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer[-80:]!r}")
    number = final.strip().replace(",", "")  # "1,080" -> "1080", as MetaMath's graders normalise it
    return f"{body.rstrip()}\nThe answer is: {number}"


def math_to_metamath(solution: str) -> str:
    """MATH solution -> MetaMathQA response: the solution, then 'The answer is: <last boxed content>'."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError(f"MATH solution has no \\boxed{{}} answer: {solution[-80:]!r}")
    return f"{solution}\nThe answer is: {boxed}"
