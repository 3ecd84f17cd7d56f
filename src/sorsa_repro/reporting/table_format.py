"""A table of typed cells and its two renderings, Markdown and booktabs LaTeX.

A ``Table`` holds typed cells; the two renderers format them, so the Markdown and LaTeX files always show the
same numbers. Output is plain deterministic text with padded columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "−": "$-$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
}


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float  # NaN when there is one seed
    digits: int = 2


@dataclass(frozen=True)
class Signed:
    value: float


@dataclass
class Table:
    title: str
    caption: str
    label: str
    header: list[str]
    align: str  # "l" or "r" per column
    rows: list[list] = field(default_factory=list)  # cells: None, str, int, float, MeanStd, Signed
    notes: list[str] = field(default_factory=list)


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _num(x: float, fmt: str = ".2f") -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def md_cell(cell) -> str:
    if isinstance(cell, MeanStd):
        fmt = f".{cell.digits}f"
        return f"{_num(cell.mean, fmt)} ± {_num(cell.std, fmt) or '–'}"
    if isinstance(cell, Signed):
        return _num(cell.value, "+.2f") or "–"
    if isinstance(cell, float):
        return _num(cell) or "–"
    return "–" if cell is None else str(cell).replace("|", r"\|")


def tex_cell(cell) -> str:
    if isinstance(cell, MeanStd):
        fmt = f".{cell.digits}f"
        return f"{_num(cell.mean, fmt)} $\\pm$ {_num(cell.std, fmt) or '--'}"
    if isinstance(cell, Signed):
        return f"${_num(cell.value, '+.2f')}$" if _num(cell.value) else "--"
    if isinstance(cell, float):
        return _num(cell) or "--"
    return "--" if cell is None else latex_escape(str(cell))


def _pad(cells: list[list[str]], align: str) -> list[list[str]]:
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=True)]
    just = [str.ljust if a == "l" else str.rjust for a in align]
    return [[j(c, w) for c, w, j in zip(row, widths, just, strict=True)] for row in cells]


def to_markdown(table: Table) -> str:
    cells = _pad([table.header] + [[md_cell(c) for c in row] for row in table.rows], table.align)
    dashes = ["-" * (len(c) + 1) for c in cells[0]]
    rule = [":" + d if a == "l" else d + ":" for d, a in zip(dashes, table.align, strict=True)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join(rule) + "|")
    text = f"**{table.title}.** {table.caption}\n\n" + "\n".join(lines) + "\n"
    if table.notes:
        text += "\nNotes:\n\n" + "".join(f"- {note}\n" for note in table.notes)
    return text


def to_latex(table: Table) -> str:
    cells = _pad(
        [[latex_escape(h) for h in table.header]] + [[tex_cell(c) for c in r] for r in table.rows],
        table.align,
    )
    body = [r"    " + " & ".join(row) + r" \\" for row in cells]
    lines = [
        r"\begin{table}[htbp]",
        r"  \centering",
        rf"  \caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
        rf"  \label{{tab:{table.label}}}",
        rf"  \begin{{tabular}}{{{table.align}}}",
        r"    \toprule",
        body[0],
        r"    \midrule",
        *body[1:],
        r"    \bottomrule",
        r"  \end{tabular}",
    ]
    if table.notes:
        lines.append(r"  \par\smallskip\footnotesize Notes: " + latex_escape("; ".join(table.notes)) + ".")
    return "\n".join([*lines, r"\end{table}"]) + "\n"
