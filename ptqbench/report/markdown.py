"""Markdown rendering (GitHub flavour): best value in **bold**, second best <ins>underlined</ins>,
ties with the best `≈`, published rows `*`; repeated runs as `mean ± std (n=N)` (or by `std`),
`--` for a missing cell, the W/A shown on the first row of its group ("W/A | Method") or on every
row ("Method | W/A"); a provenance comment, the caption as a pandoc `Table:` line, notes below
(the one-sentence short note, every note, or none, as the LaTeX)."""

from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from ptqbench.report.names import FP_METHOD, METRICS, model_label
from ptqbench.report.tables import BEST, SECOND, TIE, Cell, Table, fmt, short_note


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def cell_markdown(cell: Optional[Cell], std: str = "inline") -> str:
    if cell is None:
        return "--"
    mean = {BEST: f"**{cell.text}**", SECOND: f"<ins>{cell.text}</ins>"}.get(cell.mark, cell.text)
    s = mean if cell.std_text is None or std != "inline" else f"{mean} ± {cell.std_text} (n={cell.n})"
    return s + ("†" if cell.flag else "") + ("≈" if cell.mark == TIE else "")


def _grid(header: list[str], body: list[list[str]], left: set[int]) -> str:
    """A pipe table; columns in `left` are left-aligned (labels), the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(_esc(h) for h in header) + " |",
             "|" + "|".join(":--" if i in left else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def table_markdown(table: Table) -> str:
    """The table alone."""
    body, prev = [], None
    std = table.spec.std
    for row in table.rows:
        index = table.index_values(row, row.label + ("*" if row.published else ""))
        group = (row.w, row.a)
        if group == prev and not table.method_first:
            index[table.bits_index] = ""
        prev = group
        cells = [table.cell(row, c) for c in table.columns]
        body.append([*index, *[cell_markdown(c, std) for c in cells]])
        if std == "separate" and any(c is not None and c.std_text is not None for c in cells):
            body.append([""] * len(index) + ["" if c is None or c.std_text is None else f"± {c.std_text} (n={c.n})"
                                             for c in cells])
    header = [*table.index_labels(), *[table.column_label(c) for c in table.columns]]
    return _grid(header, body, set(range(len(table.index_labels()))))


def comparison_markdown(table: Table, comparison: pd.DataFrame) -> str:
    """The paper comparison, one line per cell, numbers rounded like the table."""
    multi = table.multi_metric
    header = ["W/A", "Method", "Model", *(["Metric"] if multi else []), "Ours", "n", "Paper", "Δ", "Our drop",
              "Paper drop", "Δ drop", "Source"]
    body = []
    for r in comparison.itertuples(index=False):
        d = table.decimals[r.metric]

        def num(x: float) -> str:
            return "--" if math.isnan(x) else fmt(x, d)

        flag = "†" if r.fp_differs and r.method == FP_METHOD else ""
        body.append([r.bits, r.row, model_label(r.model), *([METRICS[r.metric].label] if multi else []),
                     num(r.ours) + flag, str(r.n), num(r.paper), num(r.delta), num(r.our_drop), num(r.paper_drop),
                     num(r.delta_drop), r.source])
    return _grid(header, body, {*range(3 + multi), len(header) - 1})


def render_markdown(table: Table, comparison: Optional[pd.DataFrame] = None, provenance: Optional[str] = None) -> str:
    """The Markdown file: provenance comment, caption, table, notes, and the paper comparison when
    there is one."""
    parts = [*([f"<!-- {provenance} -->"] if provenance else []), f"Table: {table.caption}", table_markdown(table)]
    if table.spec.notes == "full" and table.notes:
        parts.append("\n".join(f"- {n}" for n in table.note_texts()))
    elif table.spec.notes == "short" and (text := short_note(table)):
        parts.append(text)
    if comparison is not None and not comparison.empty:
        parts += ["### Compared with the published numbers", comparison_markdown(table, comparison),
                  "Δ = ours − paper; drop = FP − quantized, each against its own FP (the paper's FP from the "
                  "same source); n = our runs in the cell. Source: where the published number was read."]
    return "\n\n".join(parts) + "\n"
