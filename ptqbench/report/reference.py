"""Side by side with the papers: the published value of each cell, our delta, and the delta of
drops from FP, from the published-number CSVs: those shipped in `ptqbench/report/reference_data/`
(tidy, one number per line, each with its source), after any folders the user adds with
`--reference DIR` / `reference_dirs:` or `$PTQBENCH_REFERENCE` (`DIR[:DIR...]`). The user's rows
come first, so at equal preference they win. `add_published` puts the published numbers of chosen
methods into the table itself, as rows marked published.

Which published row a cell gets, when several sources give the same (method, W/A, model):
  1. a row whose `source` starts with `reference_source` (the paper whose table an experiment
     reproduces);
  2. else a row from the method's own paper (`source` starts with its name, `names.OWN_PAPER`);
  3. else the first row in file order.
The paper FP used for a drop is the FP row of the same source when it has one, else the FP row
picked by the same rules. Our names map to the CSVs' through `names.reference_model` (methods
use the same short names).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ptqbench.errors import PTQBenchError
from ptqbench.report.names import FP_BITS, FP_METHOD, METHODS, METRICS, OWN_PAPER, model_label, ordered, reference_model
from ptqbench.report.tables import Cell, Column, ReportError, Row, Table, fmt

REFERENCE_ENV = "PTQBENCH_REFERENCE"
SHIPPED = Path(__file__).resolve().parent / "reference_data"
COMPARISON_COLUMNS = ["bits", "method", "row", "model", "metric", "ours", "n", "paper", "delta", "our_drop",
                      "paper_drop", "delta_drop", "fp_differs", "source"]


def reference_root() -> Path:
    """The first folder of published numbers: the first of `$PTQBENCH_REFERENCE`, else the shipped one."""
    return reference_dirs()[0]


def reference_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Folders of published-number CSVs, in priority order: `extra`, `$PTQBENCH_REFERENCE`
    (os.pathsep-separated), the shipped data. A folder that does not exist is an error."""
    env = [p for p in os.environ.get(REFERENCE_ENV, "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for origin, items in (("--reference", extra), (f"${REFERENCE_ENV}", env)):
        for item in items:
            path = Path(item).expanduser()
            if not path.is_dir():
                raise PTQBenchError(f"{origin} {path}: no such folder of published-number CSVs "
                                    "(imagenet_top1.csv, coco_ap.csv with the shipped files' columns)")
            out.append(path)
    out.append(SHIPPED)
    return list(dict.fromkeys(p.resolve() for p in out))


def load_reference(ref_dirs: Path | Sequence[Path], metric: str) -> Optional[pd.DataFrame]:
    """Published values of `metric` as (source, method, w_bits, a_bits, model, value), folders in
    priority order and file order kept; None when no folder has the metric's file."""
    ref = METRICS[metric].reference
    dirs = [Path(ref_dirs)] if isinstance(ref_dirs, (str, Path)) else [Path(d) for d in ref_dirs]
    if ref is None:
        return None
    frames = []
    for d in dirs:
        path = d / ref[0]
        if not path.is_file():
            continue
        df = pd.read_csv(path, comment=None)
        missing = {"source", "method", "w_bits", "a_bits", "model", ref[1]} - set(df.columns)
        if missing:
            raise PTQBenchError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; see "
                                f"{SHIPPED / ref[0]} for the layout")
        if "metric" in df.columns:
            df = df[df["metric"] == metric]
        frames.append(df.rename(columns={ref[1]: "value"})[["source", "method", "w_bits", "a_bits", "model", "value"]])
    if not frames:
        return None
    return pd.concat(frames).dropna(subset=["value"]).reset_index(drop=True)


def pick(ref: pd.DataFrame, method: str, w: int, a: int, model: str,
         prefer_source: Optional[str] = None) -> Optional[pd.Series]:
    """The published row for one cell, by the rules in the module docstring."""
    rows = ref[(ref["method"] == method) & (ref["w_bits"] == w) & (ref["a_bits"] == a)
               & (ref["model"] == reference_model(model))]
    if rows.empty:
        return None
    for prefix in (prefer_source, OWN_PAPER.get(method)):
        if prefix:
            mine = rows[rows["source"].str.lower().str.startswith(prefix.lower())]
            if not mine.empty:
                return mine.iloc[0]
    return rows.iloc[0]


def _paper_fp(ref: pd.DataFrame, model: str, source: Optional[str], prefer: Optional[str]) -> Optional[pd.Series]:
    if source is not None:
        same = pick(ref, FP_METHOD, FP_BITS, FP_BITS, model, prefer_source=source)
        if same is not None and same["source"] == source:
            return same
    return pick(ref, FP_METHOD, FP_BITS, FP_BITS, model, prefer_source=prefer)


def compare(table: Table, ref_dir: Path | Sequence[Path], prefer_source: Optional[str] = None,
            fp_threshold: float = 0.1) -> Optional[pd.DataFrame]:
    """One line per table cell we have a number for, with the published one when there is one
    (COMPARISON_COLUMNS, numbers unrounded). Flags the FP cells (`Cell.flag`) of models whose FP
    differs from the paper's by more than `fp_threshold` points and adds a note to the table.
    None when no reference applies."""
    refs = {m: load_reference(ref_dir, m) for m in {c.metric for c in table.columns}}
    if all(r is None for r in refs.values()):
        return None
    fp_row = Row(FP_BITS, FP_BITS, FP_METHOD)
    out, differs = [], []
    for col in table.columns:
        ref = refs[col.metric]
        if ref is None:
            continue
        ours_fp = table.cell(fp_row, col)
        paper_fp = _paper_fp(ref, col.model, None, prefer_source)
        fp_flag = bool(ours_fp and paper_fp is not None and abs(ours_fp.mean - paper_fp["value"]) > fp_threshold)
        if fp_flag:
            ours_fp.flag = True
            differs.append((col, ours_fp, paper_fp))
        for row in (r for r in table.rows if not r.published):
            out.append(_line(table, ref, row, col, ours_fp, fp_flag, prefer_source))
    lines = pd.DataFrame([x for x in out if x is not None], columns=COMPARISON_COLUMNS)
    if differs:
        table.add_note("fp_differs", _fp_note(differs, fp_threshold), "† our FP differs from the published FP")
    return lines


def _line(table: Table, ref: pd.DataFrame, row: Row, col: Column, ours_fp: Optional[Cell], fp_flag: bool,
          prefer: Optional[str]) -> Optional[list]:
    ours = table.cell(row, col)
    if ours is None:
        return None
    paper = pick(ref, row.method, row.w, row.a, col.model, prefer)
    paper_value = math.nan if paper is None else float(paper["value"])
    our_drop = paper_drop = math.nan
    if not row.is_fp:
        pfp = None if paper is None else _paper_fp(ref, col.model, paper["source"], prefer)
        our_drop = math.nan if ours_fp is None else ours_fp.mean - ours.mean
        paper_drop = math.nan if pfp is None else float(pfp["value"]) - paper_value
    our_value = ours.mean
    return [row.bits, row.method, row.label, col.model, col.metric, our_value, ours.n,
            paper_value, our_value - paper_value, our_drop, paper_drop, our_drop - paper_drop,
            fp_flag, "" if paper is None else paper["source"]]


def _fp_note(differs: list, threshold: float) -> str:
    parts = [f"{model_label(col.model)}{'' if len({c.metric for c, _, _ in differs}) == 1 else ' ' + col.metric}: "
             f"{fmt(ours.mean, ours.decimals)} here, {fmt(float(paper['value']), ours.decimals)} in {paper['source']}"
             for col, ours, paper in differs]
    return (f"† Our FP differs from the published FP by more than {threshold:g} points ({'; '.join(parts)}): "
            "absolute numbers are not comparable, compare the drops from FP.")


def add_published(table: Table, ref_dirs: Sequence[Path], methods: Sequence[str],
                  prefer_source: Optional[str] = None) -> None:
    """Insert rows with the published numbers of `methods` at the top of each W/A group of the
    table (marked `published`; never bold, since they come from other evaluation sets), picked by
    the module docstring's rules. A method with no published number for any cell is an error that
    lists the methods the reference has for these bit-widths."""
    groups = list(dict.fromkeys((r.w, r.a) for r in table.rows if not r.is_fp))
    refs = {m: load_reference(ref_dirs, m) for m in {c.metric for c in table.columns}}
    found: dict[str, int] = {m: 0 for m in methods}
    new_cells: dict[tuple[Row, Column], Cell] = {}
    for w, a in groups:
        for method in methods:
            row = Row(w, a, method, published=True)
            for col in table.columns:
                ref = refs.get(col.metric)
                hit = None if ref is None else pick(ref, method, w, a, col.model, prefer_source)
                if hit is not None:
                    new_cells[(row, col)] = Cell(float(hit["value"]), math.nan, 1, table.decimals[col.metric],
                                                 source=str(hit["source"]))
                    found[method] += 1
    absent = [m for m, n in found.items() if n == 0]
    if absent:
        have = set()
        for ref in refs.values():
            if ref is not None:
                for w, a in groups:
                    have |= set(ref.loc[(ref["w_bits"] == w) & (ref["a_bits"] == a), "method"])
        raise ReportError(f"--with-published {', '.join(absent)}: no published number for this table's models and "
                          f"bit-widths; the reference has: {', '.join(ordered(have - {FP_METHOD}, METHODS)) or 'none'}")
    order = ordered(methods, METHODS)
    filled = {row for row, _ in new_cells}  # a published row with no number in its group is left out
    rows: list[Row] = []
    for r in table.rows:
        if not r.is_fp and not r.published and (not rows or (rows[-1].w, rows[-1].a) != (r.w, r.a)):
            rows += [p for m in order if (p := Row(r.w, r.a, m, published=True)) in filled]
        rows.append(r)
    table.rows = rows
    table.cells.update(new_cells)
    sources = sorted({c.source for c in new_cells.values()})
    table.add_note("published", "* Published numbers, as printed in the papers (their own evaluation set): "
                   f"{'; '.join(sources)}. Never bold.", "* published numbers")
