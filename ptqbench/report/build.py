"""Records -> every output of one table, shared by the report CLI and the sweep-end callback.

Files for an output prefix P (e.g. results/tables/erq_table):
  P.csv            the table as printed (plain text cells)
  P.md, P.tex      the table for people and for papers
  P_cells.csv      every cell unrounded: mean, std, n, mark
  P_vs_paper.csv   the paper comparison, unrounded (when a reference applies)
  P_bits.png/.pdf  metric vs bit-width; P_calib.png/.pdf metric vs calibration size (several sizes)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from ptqbench.report.collect import Collection, collect_records
from ptqbench.report.latex import render_latex
from ptqbench.report.markdown import render_markdown
from ptqbench.report.plots import plot_bits, plot_calib
from ptqbench.report.reference import compare
from ptqbench.report.spec import ReportSpec
from ptqbench.report.tables import Table, build_table


@dataclass
class Report:
    table: Table
    comparison: Optional[pd.DataFrame]
    markdown: str
    latex: str
    files: list[Path] = field(default_factory=list)

    @property
    def plots(self) -> list[Path]:
        return [p for p in self.files if p.suffix == ".png"]


def build_report(collection: Collection, spec: ReportSpec, reference_dir: Optional[Path]) -> Report:
    """The table, its paper comparison (when `spec.compare` and a reference applies) and its
    renderings, in memory."""
    table = build_table(collection.runs, spec, collection.failed)
    comparison = None
    if spec.compare and reference_dir is not None:
        comparison = compare(table, reference_dir, spec.reference_source, spec.fp_threshold)
    return Report(table, comparison, render_markdown(table, comparison), render_latex(table))


def write_report(report: Report, prefix: Path, plots: bool = True) -> list[Path]:
    """Write the files listed in the module docstring under `prefix`; returns their paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)

    def path(suffix: str) -> Path:
        return Path(f"{prefix}{suffix}")

    files = [path(".csv"), path(".md"), path(".tex"), path("_cells.csv")]
    report.table.to_frame().to_csv(files[0], index=False)
    files[1].write_text(report.markdown)
    files[2].write_text(report.latex)
    report.table.cells_frame().to_csv(files[3], index=False)
    if report.comparison is not None:
        files.append(path("_vs_paper.csv"))
        report.comparison.to_csv(files[-1], index=False)
    if plots:
        for plot, suffix in ((plot_bits, "_bits"), (plot_calib, "_calib")):
            files += plot(report.table, path(suffix)) or []
    report.files = files
    return files


def report_from_records(records: Iterable[Mapping[str, Any]], spec: ReportSpec, prefix: Path,
                        reference_dir: Optional[Path]) -> Report:
    """Collect, build and write in one call."""
    report = build_report(collect_records(records, spec.where), spec, reference_dir)
    write_report(report, prefix, spec.plots)
    return report
