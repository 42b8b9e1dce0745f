r"""LaTeX rendering: a `table` (or `table*`) float with booktabs rules, ready to `\input`.

Layout: "W/A | Method" (the W/A printed on its group's first row) or "Method | W/A" (printed on
every row, as RepQ-ViT's Table 1), groups separated by \midrule (no multirow: one package fewer to
install); methods carry their citation (`RepQ-ViT~\cite{li2023repq}`); published rows are marked
`$^*$`; bold / underline / `$^{\approx}$` (tied with the best) come from the table's marks;
repeated runs print `mean{\scriptsize$\pm$std\,(n)}` (`std: inline`), the std on a line of its own
(`separate`) or not at all (`none`); a missing cell is `--`. `fit: small` sets \small and a
tighter \tabcolsep, `fit: resize` shrinks the tabular to the line width when wider (graphicx).
Notes: none, the one-sentence `short` note, or every note (`full`). Text is escaped, except the
raw-LaTeX caption (`latex_caption`), so `\cite{...}` there stays a citation.
"""

from __future__ import annotations

from typing import Optional

from ptqbench.report.names import CITATIONS, METRICS, method_label, model_label
from ptqbench.report.tables import BEST, SECOND, TIE, Cell, Row, Table, short_note

PACKAGES = ("booktabs",)
RESIZE_PACKAGES = ("booktabs", "graphicx")

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "≈": r"$\approx$",
    "−": "-", "<": r"\textless{}", ">": r"\textgreater{}",
}


def escape(text: str) -> str:
    """Plain text -> LaTeX that prints it."""
    return "".join(_SPECIAL.get(ch, ch) for ch in text)


def cell_latex(cell: Optional[Cell], std: str = "inline") -> str:
    if cell is None:
        return "--"
    mean = {BEST: rf"\textbf{{{cell.text}}}", SECOND: rf"\underline{{{cell.text}}}"}.get(cell.mark, cell.text)
    if std == "inline" and cell.std_text is not None:
        mean += rf"{{\scriptsize$\pm${cell.std_text}\,({cell.n})}}"
    return mean + (r"$^\dagger$" if cell.flag else "") + (r"$^{\approx}$" if cell.mark == TIE else "")


def _std_line(cell: Optional[Cell]) -> str:
    return "" if cell is None or cell.std_text is None else rf"{{\scriptsize$\pm${cell.std_text}\,({cell.n})}}"


def citation(method: str, overrides: dict[str, str]) -> str:
    """The BibTeX key of a method: the table's override, else names.CITATIONS; "" for none."""
    return overrides.get(method, CITATIONS.get(method, ""))


def method_cell(table: Table, row: Row) -> str:
    r"""`RepQ-ViT~\cite{li2023repq}`, with `$^*$` on published rows."""
    name = escape(method_label(row.method)) + (r"$^*$" if row.published else "")
    key = "" if row.is_fp else citation(row.method, table.spec.cite)
    text = name + (rf"~\cite{{{key}}}" if key else "")
    return text + (f" ({escape(row.variant)})" if row.variant else "")


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


def _notes(table: Table) -> Optional[str]:
    mode = table.spec.notes
    if mode == "none":
        return None
    if mode == "short":
        text = short_note(table)
        return None if text is None else escape(text)
    return " ".join(escape(n) for n in table.note_texts()) or None


def render_latex(table: Table, provenance: Optional[str] = None) -> str:
    """The .tex file: a complete float; `\\input` it after `\\usepackage{booktabs}` (and graphicx
    for `fit: resize`). `provenance` becomes a comment line on top."""
    spec = table.spec
    n_index = len(table.index_labels())
    packages = RESIZE_PACKAGES if spec.fit == "resize" else PACKAGES
    caption = spec.latex_caption if spec.latex_caption else escape(table.caption)
    lines = [*([f"% {provenance}"] if provenance else []),
             f"% ptqbench report; needs \\usepackage{{{','.join(packages)}}}",
             rf"\begin{{{spec.latex_float}}}[t]", r"\centering"]
    if spec.fit == "small":
        lines += [r"\small", r"\setlength{\tabcolsep}{3pt}"]
    lines += [rf"\caption{{{caption}}}", rf"\label{{{table.label}}}"]
    tabular = r"\begin{tabular}{" + "l" * n_index + "c" * len(table.columns) + "}"
    if spec.fit == "resize":
        lines.append(r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%")
    lines += [tabular, r"\toprule", *_header(table), r"\midrule"]
    prev = None
    bits_at = table.bits_index
    for row in table.rows:
        index = [escape(v) for v in table.index_values(row)]
        index[1 - bits_at] = method_cell(table, row)
        group = (row.w, row.a)
        if prev is not None and group != prev:
            lines.append(r"\midrule")
        elif group == prev and not table.method_first:
            index[bits_at] = ""
        prev = group
        cells = [table.cell(row, c) for c in table.columns]
        lines.append(" & ".join([*index, *[cell_latex(c, spec.std) for c in cells]]) + r" \\")
        if spec.std == "separate" and any(c is not None and c.std_text is not None for c in cells):
            lines.append(" & ".join([""] * n_index + [_std_line(c) for c in cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if spec.fit == "resize":
        lines.append("}")
    notes = _notes(table)
    if notes:
        lines += [r"\par\smallskip", r"{\footnotesize\raggedright " + notes + r"\par}"]
    lines.append(rf"\end{{{spec.latex_float}}}")
    return "\n".join(lines) + "\n"


def standalone(body: str, documentclass: str = "article", options: str = "",
               packages: tuple[str, ...] = RESIZE_PACKAGES) -> str:
    """A minimal document around a rendered table, to compile it on its own (citations print as
    [?] without a bibliography; the page and column widths are the class's)."""
    opts = f"[{options}]" if options else ""
    return (f"\\documentclass{opts}{{{documentclass}}}\n" + "".join(f"\\usepackage{{{p}}}\n" for p in packages)
            + "\\begin{document}\n" + body + "\\end{document}\n")
