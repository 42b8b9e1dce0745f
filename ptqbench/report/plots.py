"""Figures from a built table (so they show exactly the table's numbers): accuracy vs bit-width,
one panel per model, one line per method, FP as a dashed line; the drop from FP per method next to
the papers' drops (hollow markers, dotted); and accuracy vs calibration size when the table has
several sizes. Error bars are the cells' standard deviations. PNG and PDF.

Each method keeps one colour, marker and line style in every figure (`names.method_style`), chosen
so that the lines stay apart in grayscale print: markers and dashes differ, not only hues."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Hashable, Optional

import pandas as pd

from ptqbench.report.names import FP_BITS, FP_METHOD, METRICS, method_style, model_label
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


def _style(row: Row, variant_index: int = 0) -> dict:
    """Matplotlib keywords of a method's line (its fixed look; variants of a method vary the dash)."""
    color, marker, ls = method_style(row.method)
    dashes = ("-", "--", ":", "-.")
    if variant_index:
        ls = dashes[(dashes.index(ls) + variant_index) % len(dashes)] if ls in dashes else ls
    return dict(color=color, marker=marker, ls=ls, mec="black", mew=0.6)


def _plot(table: Table, path: Path, xs: list, x_of: Callable[[Row], Hashable], line_of: Callable[[Row], str],
          xlabel: str, xticks: list[str], log2: bool) -> list[Path]:
    plt, fig, axes = _figure(len(table.columns))
    fp_row = Row(FP_BITS, FP_BITS, FP_METHOD)
    for ax, col in zip(axes, table.columns):
        lines: dict[str, list[tuple]] = {}
        styles: dict[str, dict] = {}
        variants: dict[str, list[str]] = {}
        for row in table.rows:
            cell = table.cell(row, col)
            if row.is_fp or row.published or cell is None:
                continue
            label = line_of(row)
            seen = variants.setdefault(row.method, [])
            if label not in lines:
                seen.append(label)
                styles[label] = _style(row, len(seen) - 1)
            lines.setdefault(label, []).append((x_of(row), cell.mean, 0.0 if math.isnan(cell.std) else cell.std))
        for label, pts in lines.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], ms=5,
                        capsize=3, label=label, **styles[label])
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
    _legend(fig, axes, table)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> list[Path]:
    out = [Path(f"{path}.png"), Path(f"{path}.pdf")]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out[0], dpi=150)
    fig.savefig(out[1])
    plt.close(fig)
    return out


def plot_drop(table: Table, comparison: pd.DataFrame, path: Path) -> Optional[list[Path]]:
    """Drop from FP (points) vs W/A, one panel per model column: ours filled with error bars, the
    papers' drop of the same method (each against its own paper's FP) hollow and dotted. None when
    the comparison has no drop of ours."""
    data = comparison[(comparison["method"] != FP_METHOD) & comparison["our_drop"].notna()]
    if data.empty:
        return None
    bits = list(dict.fromkeys((r.w, r.a) for r in table.rows if not r.is_fp and not r.published))
    pos = {f"{w}/{a}": i for i, (w, a) in enumerate(bits)}
    plt, fig, axes = _figure(len(table.columns))
    rows = {(r.bits, r.label): r for r in table.rows if not r.is_fp and not r.published}
    for ax, col in zip(axes, table.columns):
        sub = data[(data["model"] == col.model) & (data["metric"] == col.metric)]
        for label, grp in sub.groupby("row", sort=False):
            row = rows.get((grp["bits"].iloc[0], label))
            if row is None:
                continue
            style = _style(row)
            grp = grp.assign(x=[pos[b] for b in grp["bits"]]).sort_values("x")
            stds = [0.0 if (c := table.cell(rows[(b, label)], col)) is None or math.isnan(c.std) else c.std
                    for b in grp["bits"]]
            ax.errorbar(grp["x"], grp["our_drop"], yerr=stds, ms=5, capsize=3, label=f"{label} (ours)", **style)
            paper = grp[grp["paper_drop"].notna()]
            if not paper.empty:
                ax.plot(paper["x"], paper["paper_drop"], ls=":", marker=style["marker"], color=style["color"],
                        mfc="white", mec=style["color"], mew=1.2, ms=6, label=f"{label} (paper)")
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_title(_panel_title(table, col))
        ax.set_xlabel("W/A bits")
        ax.set_ylabel(f"{METRICS[col.metric].label} drop from FP (points)")
        ax.set_xticks(range(len(bits)), [f"W{w}A{a}" for w, a in bits])
        ax.margins(x=0.12)
        ax.grid(alpha=0.3)
    _legend(fig, axes, table)
    return _save(fig, plt, path)


def _legend(fig, axes, table: Table) -> None:
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


def plot_bits(table: Table, path: Path) -> Optional[list[Path]]:
    """Metric vs W/A (x positions in the table's order); None when the table has no quantized row."""
    bits = list(dict.fromkeys((r.w, r.a) for r in table.rows if not r.is_fp and not r.published))
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
    sizes = sorted({r.calib_size for r in table.rows if r.calib_size is not None and not r.published})
    return _plot(table, path, sizes, lambda r: r.calib_size, lambda r: f"{r.label} W{r.w}A{r.a}",
                 "calibration images", [str(s) for s in sizes], log2=True)
