r"""LaTeX rendering: a `table` float with booktabs rules (the only package it needs).

Layout: the W/A group is the first column, printed on the group's first row, groups separated by
\midrule (no multirow: one package fewer to install); the best value per column and W/A group is
\textbf, the second best \underline; repeated runs print `mean{\scriptsize$\pm$std\,(n)}`; a
missing cell is `--`; the notes follow the tabular in \footnotesize. Every piece of text is
escaped, captions included, so names like `deit_tiny` or `99%` compile.
"""

from __future__ import annotations

from typing import Optional

from ptqbench.report.names import METRICS, model_label
from ptqbench.report.tables import BEST, SECOND, Cell, Table

PACKAGES = ("booktabs",)

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "Δ": r"$\Delta$",
    "−": "-", "<": r"\textless{}", ">": r"\textgreater{}",
}


def escape(text: str) -> str:
    """Plain text -> LaTeX that prints it."""
    return "".join(_SPECIAL.get(ch, ch) for ch in text)


def cell_latex(cell: Optional[Cell]) -> str:
    if cell is None:
        return "--"
    mean = {BEST: rf"\textbf{{{cell.text}}}", SECOND: rf"\underline{{{cell.text}}}"}.get(cell.mark, cell.text)
    if cell.std_text is not None:
        mean += rf"{{\scriptsize$\pm${cell.std_text}\,({cell.n})}}"
    return mean + (r"$^\dagger$" if cell.flag else "")


def _header(table: Table) -> list[str]:
    index = [escape(h) for h in table.index_labels()]
    if not table.multi_metric:
        return [" & ".join([*index, *[escape(model_label(c.model)) for c in table.columns]]) + r" \\"]
    spans: list[tuple[str, int]] = []
    for c in table.columns:
        if spans and spans[-1][0] == c.model:
            spans[-1] = (c.model, spans[-1][1] + 1)
        else:
            spans.append((c.model, 1))
    top, rules, start = [""] * len(index), [], len(index) + 1
    for model, width in spans:
        top.append(rf"\multicolumn{{{width}}}{{c}}{{{escape(model_label(model))}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    metrics = [METRICS[c.metric].latex for c in table.columns]
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join([*index, *metrics]) + r" \\"]


def render_latex(table: Table) -> str:
    """The .tex file: a complete `table` environment; `\\input` it after `\\usepackage{booktabs}`."""
    n_index = len(table.index_labels())
    lines = [f"% ptqbench report; needs \\usepackage{{{','.join(PACKAGES)}}}",
             r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(table.caption)}}}",
             rf"\label{{{table.label}}}", r"\begin{tabular}{" + "l" * n_index + "c" * len(table.columns) + "}",
             r"\toprule", *_header(table), r"\midrule"]
    prev = None
    for row in table.rows:
        index = [escape(v) for v in table.index_values(row)]
        group = (row.w, row.a)
        if prev is not None and group != prev:
            lines.append(r"\midrule")
        elif group == prev:
            index[0] = ""
        prev = group
        lines.append(" & ".join([*index, *[cell_latex(table.cell(row, c)) for c in table.columns]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        notes = " ".join(escape(n) for n in table.notes)
        lines += [r"\par\smallskip", r"{\footnotesize\raggedright " + notes + r"\par}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def standalone(body: str) -> str:
    """A minimal document around a rendered table, to compile it on its own."""
    return ("\\documentclass{article}\n" + "".join(f"\\usepackage{{{p}}}\n" for p in PACKAGES)
            + "\\begin{document}\n" + body + "\\end{document}\n")
