"""Figures from a built table (so they show exactly the table's numbers): accuracy vs bit-width,
one panel per model, one line per method, FP as a dashed line; and accuracy vs calibration size
when the table has several sizes. Error bars are the cells' standard deviations. PNG and PDF."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Hashable, Optional

from ptqbench.report.names import FP_BITS, FP_METHOD, METRICS, model_label
from ptqbench.report.tables import Column, Row, Table


def _figure(n_panels: int) -> tuple:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n_panels])


def _panel_title(table: Table, col: Column) -> str:
    name = model_label(col.model)
    return f"{name} ({METRICS[col.metric].label})" if table.multi_metric else name


def _plot(table: Table, path: Path, xs: list, x_of: Callable[[Row], Hashable], line_of: Callable[[Row], str],
          xlabel: str, xticks: list[str], log2: bool) -> list[Path]:
    plt, fig, axes = _figure(len(table.columns))
    fp_row = Row(FP_BITS, FP_BITS, FP_METHOD)
    for ax, col in zip(axes, table.columns):
        lines: dict[str, list[tuple]] = {}
        for row in table.rows:
            cell = table.cell(row, col)
            if row.is_fp or cell is None:
                continue
            lines.setdefault(line_of(row), []).append((x_of(row), cell.mean, 0.0 if math.isnan(cell.std) else cell.std))
        for label, pts in lines.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=4,
                        capsize=3, label=label)
        fp = table.cell(fp_row, col)
        if fp is not None:
            ax.axhline(fp.mean, color="0.4", ls="--", lw=1, label="Full Prec.")
        ax.set_title(_panel_title(table, col))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{METRICS[col.metric].label} (%)")
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, xticks)
        ax.margins(x=0.12)
        ax.grid(alpha=0.3)
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    labels.sort(key=lambda lab: lab == "Full Prec.")  # FP last
    if handles:
        per_row = min(len(labels), 2 * min(4, len(table.columns)))
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncols=per_row, frameon=False)
    out = [Path(f"{path}.png"), Path(f"{path}.pdf")]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out[0], dpi=150)
    fig.savefig(out[1])
    plt.close(fig)
    return out


def plot_bits(table: Table, path: Path) -> Optional[list[Path]]:
    """Metric vs W/A (x positions in the table's order); None when the table has no quantized row."""
    bits = list(dict.fromkeys((r.w, r.a) for r in table.rows if not r.is_fp))
    if not bits:
        return None
    pos = {b: i for i, b in enumerate(bits)}
    calib = table.show_calib
    return _plot(table, path, list(range(len(bits))), lambda r: pos[(r.w, r.a)],
                 lambda r: r.label + (f" ({r.calib_size} img)" if calib else ""),
                 "W/A bits", [f"W{w}A{a}" for w, a in bits], log2=False)


def plot_calib(table: Table, path: Path) -> Optional[list[Path]]:
    """Metric vs calibration size (log2 axis); None when the table has a single size."""
    if not table.show_calib:
        return None
    sizes = sorted({r.calib_size for r in table.rows if r.calib_size is not None})
    return _plot(table, path, sizes, lambda r: r.calib_size, lambda r: f"{r.label} W{r.w}A{r.a}",
                 "calibration images", [str(s) for s in sizes], log2=True)
