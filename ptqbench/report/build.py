"""Records -> every output of one table, shared by the report CLI and the sweep-end callback.

Files for an output prefix P (e.g. results/tables/erq_table), each with a provenance comment line
on top (`provenance.py`):
  P.csv            the table as printed (plain text cells)
  P.md, P.tex      the table for people and for papers
  P_cells.csv      every cell unrounded: mean, std, n, mark, bootstrap intervals, provenance flags
  P_runs.csv       one row per run of the selection: key, status, commit, config, metrics, cost
  P_failed.csv     the selection's unfinished runs and their errors (when there are any)
  P_vs_paper.csv   the paper comparison, unrounded (when a reference applies)
  P_bits.png/.pdf  metric vs bit-width; P_drop.png/.pdf drop from FP, the papers' drops overlaid;
  P_calib.png/.pdf metric vs calibration size (several sizes)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from ptqbench.report.collect import Collection, check_where, collect_records
from ptqbench.report.latex import render_latex
from ptqbench.report.markdown import render_markdown
from ptqbench.report.plots import plot_bits, plot_calib, plot_drop
from ptqbench.report.provenance import Provenance, runs_frame, write_csv
from ptqbench.report.reference import add_published, compare, reference_dirs
from ptqbench.report.spec import ReportSpec
from ptqbench.report.tables import Table, build_table, select_runs

log = logging.getLogger("ptqbench")


@dataclass
class Report:
    table: Table
    comparison: Optional[pd.DataFrame]
    markdown: str
    latex: str
    provenance: Optional[Provenance] = None
    files: list[Path] = field(default_factory=list)

    @property
    def plots(self) -> list[Path]:
        return [p for p in self.files if p.suffix == ".png"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.table.failed


def _dirs(spec: ReportSpec, reference_dir: Optional[Path | Sequence[Path]]) -> list[Path]:
    given = [] if reference_dir is None else [reference_dir] if isinstance(reference_dir, (str, Path)) \
        else list(reference_dir)
    return reference_dirs([*given, *spec.reference_dirs])


def build_report(collection: Collection, spec: ReportSpec, reference_dir: Optional[Path | Sequence[Path]] = None,
                 command: Optional[str] = None) -> Report:
    """The table, its published rows (`spec.with_published`), its paper comparison (when
    `spec.compare`) and its renderings, in memory. `reference_dir`: folders of published numbers
    that come before `$PTQBENCH_REFERENCE` and the shipped ones."""
    table = build_table(collection.runs, spec, collection.failed)
    dirs = _dirs(spec, reference_dir) if (spec.compare or spec.with_published) else []
    comparison = compare(table, dirs, spec.reference_source, spec.fp_threshold) if spec.compare else None
    if spec.with_published:
        add_published(table, dirs, spec.with_published, spec.reference_source)
    prov = Provenance.now(table.runs, table.failed, command)
    line = prov.line()
    return Report(table, comparison, render_markdown(table, comparison, line), render_latex(table, line), prov)


def write_report(report: Report, prefix: Path, plots: bool = True) -> list[Path]:
    """Write the files listed in the module docstring under `prefix`; returns their paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    line = report.provenance.line() if report.provenance else None

    def path(suffix: str) -> Path:
        return Path(f"{prefix}{suffix}")

    table = report.table
    files = [write_csv(table.to_frame(), path(".csv"), line), path(".md"), path(".tex"),
             write_csv(table.cells_frame(), path("_cells.csv"), line),
             write_csv(runs_frame(table.runs, table.failed), path("_runs.csv"), line)]
    files[1].write_text(report.markdown)
    files[2].write_text(report.latex)
    stale = path("_failed.csv")
    if not table.failed.empty:
        files.append(write_csv(table.failed.drop(columns=["setting"]), stale, line))
    elif stale.exists():
        stale.unlink()  # from an earlier build of the same table: no longer true
    if report.comparison is not None:
        files.append(write_csv(report.comparison, path("_vs_paper.csv"), line))
    if plots:
        for plot, suffix in ((plot_bits, "_bits"), (plot_calib, "_calib")):
            files += plot(table, path(suffix)) or []
        if report.comparison is not None:
            files += plot_drop(table, report.comparison, path("_drop")) or []
    report.files = files
    return files


def console_lines(report: Report) -> list[str]:
    """What a user should read besides the table: warnings, and the unfinished runs (the notes of
    the paper table no longer list them)."""
    out = [f"warning: {w}" for w in report.table.warnings]
    failed = report.table.failed
    if not failed.empty:
        inside = failed[failed["in_table"]]
        out.append(f"{len(failed)} run(s) of the selection did not finish ({len(inside)} in this table's cells); "
                   "errors in the _failed.csv:")
        out += [f"  {f.run_key} {f.model} {f.method} {_num(f.w_bits)}/{_num(f.a_bits)}: "
                f"{str(f.error or f.status).splitlines()[0][:160]}" for f in failed.head(10).itertuples()]
        if len(failed) > 10:
            out.append(f"  ... and {len(failed) - 10} more")
    return out


def _num(x: Any) -> str:
    """4.0 -> "4", 4.5 -> "4.5" (bit-widths read from records of any age)."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def report_from_records(records: Iterable[Mapping[str, Any]], spec: ReportSpec, prefix: Path,
                        reference_dir: Optional[Path | Sequence[Path]] = None,
                        command: Optional[str] = None, log_console: bool = True) -> Report:
    """Collect, build and write in one call; warnings and unfinished runs go to the log (the CLI
    prints them itself: `log_console=False`)."""
    records = list(records)
    check_where(records, spec.where)
    report = build_report(collect_records(records, spec.where), spec, reference_dir, command)
    write_report(report, prefix, spec.plots)
    if log_console:
        for line in console_lines(report):
            log.warning("%s", line)
    return report


def write_runs_only(records: Iterable[Mapping[str, Any]], spec: ReportSpec, prefix: Path,
                    command: Optional[str] = None) -> Path:
    """`--runs-only`: just `<prefix>_runs.csv` for the selection, with no table and no checks that
    a table needs (mixed settings are fine in a tidy file)."""
    records = list(records)
    check_where(records, spec.where)
    col = collect_records(records, spec.where)
    sel, task = select_runs(col.runs, spec)
    failed = col.failed[col.failed["task"] == task]
    if spec.models is not None:
        failed = failed[failed["model"].isin(spec.models)]
    if spec.methods is not None:
        failed = failed[failed["method"].isin(spec.methods)]
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(runs_frame(sel, failed), Path(f"{prefix}_runs.csv"),
                     Provenance.now(sel, failed, command).line())
