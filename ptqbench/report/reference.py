"""Side by side with the papers: the published value of each cell, our delta, and the delta of
drops from FP, from the CSVs in the reference folder (`$PTQBENCH_REFERENCE`, default
`../shared/reference` beside the repository).

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
from typing import Optional

import pandas as pd

from ptqbench.paths import REPO_ROOT
from ptqbench.report.names import FP_BITS, FP_METHOD, METRICS, OWN_PAPER, model_label, reference_model
from ptqbench.report.tables import Cell, Column, Row, Table, fmt

REFERENCE_ENV = "PTQBENCH_REFERENCE"
COMPARISON_COLUMNS = ["bits", "method", "row", "model", "metric", "ours", "n", "paper", "delta", "our_drop",
                      "paper_drop", "delta_drop", "fp_differs", "source"]


def reference_root() -> Path:
    """The folder of the published-number CSVs (it may not exist)."""
    env = os.environ.get(REFERENCE_ENV)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "reference"


def load_reference(ref_dir: Path, metric: str) -> Optional[pd.DataFrame]:
    """Published values of `metric` as (source, method, w_bits, a_bits, model, value), file order
    kept; None when the metric has no reference file or the file is absent."""
    ref = METRICS[metric].reference
    if ref is None or not (Path(ref_dir) / ref[0]).is_file():
        return None
    df = pd.read_csv(Path(ref_dir) / ref[0])
    if "metric" in df.columns:
        df = df[df["metric"] == metric]
    df = df.rename(columns={ref[1]: "value"})[["source", "method", "w_bits", "a_bits", "model", "value"]]
    return df.dropna(subset=["value"]).reset_index(drop=True)


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


def compare(table: Table, ref_dir: Path, prefer_source: Optional[str] = None,
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
        for row in table.rows:
            out.append(_line(table, ref, row, col, ours_fp, fp_flag, prefer_source))
    lines = pd.DataFrame([x for x in out if x is not None], columns=COMPARISON_COLUMNS)
    if differs:
        table.notes.append(_fp_note(differs, fp_threshold))
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
