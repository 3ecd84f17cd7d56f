r"""The answer format, in one place: MetaMathQA's answer marker and the last ``\boxed{}`` of a text.

A leaf module (standard library only): the training data (``data.sources``) writes answers in this
format and the graders (``evaluation.graders``) read them back with the same definitions.

- ``ANSWER_MARKER``: MetaMathQA responses end with ``The answer is: N``. The suite's own extraction
  looks for the marker without the space, so that ``The answer is:\n18`` is found too.
- ``METAMATH_ANSWER_SPLIT``: the exact string MetaMath's evaluation scripts split a completion on,
  trailing space included (meta-math/MetaMath ``eval_gsm8k.py`` line 25, ``eval_math.py`` line 23).
- ``last_boxed``: the content of the last ``\boxed{...}``. MetaMath's own ``last_boxed_only_string``
  + ``remove_boxed`` (used only by the ``metamath`` grader) is stricter; see ``evaluation.graders``.
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
