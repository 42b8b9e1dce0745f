"""Tidy runs -> a paper-layout table: an FP row on top, then one group of rows per bit-width
(W/A), one row per method within the group; one column per model (and per metric when a table
shows several, like box AP / mask AP on COCO).

Each cell aggregates the runs that differ only in their seeds (`seed`, `calib.seed`): mean, sample
standard deviation (ddof=1; none for a single run) and count. Best and second-best values are
marked per column and W/A group on the values as printed (rounded), ties all marked, FP row
excluded. The FP row is the FP baseline every record carries (`metrics.fp_<metric>`, or the metric
itself for `method=fp` runs), one value per distinct baseline.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from ptqbench.errors import PTQBenchError
from ptqbench.report.collect import flatten
from ptqbench.report.names import (
    DEFAULT_METRICS, FP_BITS, FP_METHOD, FULL_EVAL_IMAGES, METHODS, METRICS, MODELS, bits_label, method_label,
    model_label, ordered,
)
from ptqbench.report.spec import ReportSpec, parse_bits

BEST, SECOND = "best", "second"
DATASETS = {"classification": "ImageNet", "detection": "COCO"}


class ReportError(PTQBenchError):
    """The selected runs cannot make one honest table (mixed settings, nothing selected, ...)."""


@dataclass(frozen=True)
class Row:
    """A table row: W/A group, method (and its variant when its options differ between runs),
    calibration size (None for the FP row)."""

    w: int
    a: int
    method: str
    variant: str = ""
    calib_size: Optional[int] = None

    @property
    def is_fp(self) -> bool:
        return self.method == FP_METHOD

    @property
    def bits(self) -> str:
        return bits_label(self.w, self.a)

    @property
    def label(self) -> str:
        name = method_label(self.method)
        return f"{name} ({self.variant})" if self.variant else name


@dataclass(frozen=True)
class Column:
    model: str
    metric: str


@dataclass
class Cell:
    """Aggregate of the runs of one (row, column); `text`/`std_text` are the printed numbers."""

    mean: float
    std: float          # NaN when n == 1
    n: int
    decimals: int
    mark: str = ""      # BEST, SECOND or ""
    flag: bool = False  # FP row only: our FP differs from the paper's (set by the comparison)

    @property
    def text(self) -> str:
        return fmt(self.mean, self.decimals)

    @property
    def std_text(self) -> Optional[str]:
        return None if self.n < 2 else fmt(self.std, self.decimals)


@dataclass
class Table:
    """A built table, ready for the renderers."""

    task: str
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[Row, Column], Cell]
    show_calib: bool
    caption: str
    label: str
    decimals: dict[str, int]                # per metric
    runs: pd.DataFrame                      # the runs behind the cells (after selection)
    notes: list[str] = field(default_factory=list)

    def cell(self, row: Row, col: Column) -> Optional[Cell]:
        return self.cells.get((row, col))

    @property
    def multi_metric(self) -> bool:
        return len({c.metric for c in self.columns}) > 1

    def column_label(self, col: Column) -> str:
        name = model_label(col.model)
        return f"{name} {METRICS[col.metric].label}" if self.multi_metric else name

    def index_labels(self) -> list[str]:
        return ["W/A", "Method", *(["Calib"] if self.show_calib else [])]

    def index_values(self, row: Row) -> list[str]:
        calib = [] if not self.show_calib else ["" if row.calib_size is None else str(row.calib_size)]
        return [row.bits, row.label, *calib]

    def to_frame(self) -> pd.DataFrame:
        """The table as printed (plain text, `mean ± std (n=N)`), one line per row."""
        data = [[*self.index_values(r), *[plain_text(self.cell(r, c)) for c in self.columns]] for r in self.rows]
        return pd.DataFrame(data, columns=[*self.index_labels(), *[self.column_label(c) for c in self.columns]])

    def cells_frame(self) -> pd.DataFrame:
        """Every cell with full-precision numbers, for machines."""
        out = []
        for r in self.rows:
            for c in self.columns:
                cell = self.cell(r, c)
                out.append({"w_bits": r.w, "a_bits": r.a, "method": r.method, "variant": r.variant,
                            "calib_size": r.calib_size, "model": c.model, "metric": c.metric,
                            "mean": cell.mean if cell else math.nan, "std": cell.std if cell else math.nan,
                            "n": cell.n if cell else 0, "shown": cell.text if cell else "",
                            "mark": cell.mark if cell else "", "fp_differs": bool(cell and cell.flag)})
        return pd.DataFrame(out).astype({"calib_size": "Int64"})


def fmt(x: float, decimals: int) -> str:
    """Fixed-point text; never prints a negative zero."""
    s = f"{x:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def plain_text(cell: Optional[Cell]) -> str:
    if cell is None:
        return "--"
    s = cell.text if cell.std_text is None else f"{cell.text} ± {cell.std_text} (n={cell.n})"
    return s + ("†" if cell.flag else "")


def _aggregate(values: list[float], decimals: int) -> Optional[Cell]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Cell(statistics.fmean(values), std, len(values), decimals)


def _check_same(runs: pd.DataFrame, part: str) -> None:
    """Refuse to put runs that differ in anything but seeds, method, bits, calibration size and
    model into one table: such numbers are not comparable (say, two evaluation sets)."""
    flat = [flatten(s) for s in runs["_" + part]]
    keys = sorted({k for f in flat for k in f})
    differ = {k: sorted({json.dumps(f.get(k), default=str) for f in flat}) for k in keys}
    differ = {k: v for k, v in differ.items() if len(v) > 1}
    if differ:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in differ.items())
        key = next(iter(differ))
        raise ReportError(f"the selected runs differ in {what}; one table needs one setting: "
                          f"pick one with --where {key}=VALUE (or `where:` in the report block)")


def _split_setting(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `_shared` (what must be equal across the table) and `_model` (equal per model)."""
    shared, model = [], []
    for s in runs["setting"]:
        d = json.loads(s)
        d.pop("method", None)
        d.pop("bits", None)
        (d.get("calib") or {}).pop("size", None)
        model.append(d.pop("model", {}) or {})
        shared.append(d)
    return runs.assign(_shared=shared, _model=model)


def _variants(runs: pd.DataFrame) -> pd.Series:
    """Per run, the method options that differ between runs of the same method, as `k=v, ...`
    (empty when all runs of the method share their options)."""
    out = pd.Series("", index=runs.index, dtype=object)
    for _, grp in runs.groupby("method"):
        opts = {i: flatten(json.loads(s)) for i, s in grp["method_options"].items()}
        keys = sorted({k for o in opts.values() for k in o})
        differ = [k for k in keys if len({json.dumps(o.get(k), default=str) for o in opts.values()}) > 1]
        for i, o in opts.items():
            out[i] = ", ".join(f"{k}={_option_text(o.get(k))}" for k in differ)
    return out


def _option_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return "null" if v is None else str(v)


def _in_bits(df: pd.DataFrame, bits: list[str]) -> pd.Series:
    """Row mask: FP runs, and runs at one of `bits` (a Series: an empty list would pick columns)."""
    wa = {parse_bits(b) for b in bits}
    keep = [m == FP_METHOD or (w, a) in wa for m, w, a in zip(df["method"], df["w_bits"], df["a_bits"])]
    return pd.Series(keep, index=df.index, dtype=bool)


def _select(runs: pd.DataFrame, spec: ReportSpec) -> tuple[pd.DataFrame, str]:
    tasks = sorted(set(runs["task"].dropna()))
    task = spec.task or (tasks[0] if len(tasks) == 1 else None)
    if task is None:
        if tasks:
            raise ReportError(f"runs of several tasks ({', '.join(tasks)}); pick one with --task")
        task = "classification"
    sel = runs[runs["task"] == task]
    if spec.models is not None:
        sel = sel[sel["model"].isin(spec.models)]
    if spec.methods is not None:
        sel = sel[sel["method"].isin(spec.methods) | (sel["method"] == FP_METHOD)]
    if spec.bits is not None:
        wa = {parse_bits(b) for b in spec.bits}
        sel = sel[_in_bits(sel, spec.bits)]
    if spec.calib_size is not None:
        sel = sel[(sel["method"] == FP_METHOD) | (sel["calib_size"] == spec.calib_size)]
    return sel, task


def _rows(sel: pd.DataFrame, spec: ReportSpec) -> tuple[list[Row], bool]:
    quant = sel[sel["method"] != FP_METHOD]
    show_fp = (spec.methods is None and not sel.empty) or (spec.methods is not None and FP_METHOD in spec.methods)
    rows = [Row(FP_BITS, FP_BITS, FP_METHOD)] if show_fp else []
    if spec.bits is not None:
        bits = [parse_bits(b) for b in spec.bits]
    else:
        bits = sorted({(int(w), int(a)) for w, a in zip(quant["w_bits"], quant["a_bits"])})
    if spec.methods is not None:
        methods = [m for m in spec.methods if m != FP_METHOD]
    else:
        methods = ordered(quant["method"], METHODS)
    if spec.calib_size is not None:
        sizes: list[Optional[int]] = [spec.calib_size]
    else:
        sizes = sorted({int(s) for s in quant["calib_size"].dropna()}) or [None]
    for w, a in bits:
        for m in methods:
            variants = sorted(set(quant.loc[quant["method"] == m, "_variant"])) or [""]
            rows += [Row(w, a, m, v, s) for v in variants for s in sizes]
    return rows, len(sizes) > 1


def _fp_cells(sel: pd.DataFrame, columns: list[Column], decimals: dict[str, int]) -> dict[tuple[Row, Column], Cell]:
    row = Row(FP_BITS, FP_BITS, FP_METHOD)
    out = {}
    for col in columns:
        values = sel.loc[sel["model"] == col.model, f"fp_{col.metric}"].dropna()
        cell = _aggregate(sorted(set(values)), decimals[col.metric])
        if cell is not None:
            out[(row, col)] = cell
    return out


def _mark(table_cells: dict[tuple[Row, Column], Cell], rows: list[Row], columns: list[Column],
          second_best: bool) -> None:
    """Bold the best, underline the second best, per column and W/A group, on printed values."""
    groups: dict[tuple[int, int], list[Row]] = {}
    for r in rows:
        if not r.is_fp:
            groups.setdefault((r.w, r.a), []).append(r)
    for col in columns:
        for grp in groups.values():
            cells = [c for r in grp if (c := table_cells.get((r, col))) is not None]
            if len(cells) < 2:
                continue
            shown = sorted({float(c.text) for c in cells}, reverse=True)  # every metric: higher is better
            for c in cells:
                if float(c.text) == shown[0]:
                    c.mark = BEST
                elif second_best and len(shown) > 1 and float(c.text) == shown[1]:
                    c.mark = SECOND


def _notes(table: Table, failed: Optional[pd.DataFrame]) -> list[str]:
    notes = []
    sizes = sorted({int(n) for n in table.runs["eval_images"].dropna()})
    full, what = FULL_EVAL_IMAGES.get(table.task, (0, "images"))
    if sizes:
        count = " / ".join(f"{n:,}" for n in sizes)
        note = f"Evaluated on {count} {what}"
        if max(sizes) < full:
            note += (f"; the papers use all {full:,}, so absolute numbers are not comparable with theirs: "
                     "compare drops from FP")
        notes.append(note + ".")
    if any(c.n > 1 for r, c in table.cells.items() if not r[0].is_fp):
        notes.append("Repeated runs (seeds, calibration draws): mean ± sample standard deviation over n runs, "
                     "n in parentheses.")
    fp_multi = sorted({model_label(c.model) for (r, c), cell in table.cells.items() if r.is_fp and cell.n > 1})
    if fp_multi:
        notes.append(f"The runs of {', '.join(fp_multi)} carry different FP baselines: the FP row shows their "
                     "mean ± std over the distinct values.")
    if any(table.cell(r, c) is None for r in table.rows for c in table.columns):
        notes.append("-- : no finished run.")
    if failed is not None and not failed.empty:
        lines = [f"{model_label(str(f.model))} {method_label(str(f.method))} "
                 f"{'' if pd.isna(f.w_bits) else bits_label(f.w_bits, f.a_bits)}: "
                 f"{str(f.error or f.status).splitlines()[0][:160]}" for f in failed.itertuples()]
        notes.append(f"{len(lines)} run(s) did not finish and are not in the table: " + "; ".join(lines) + ".")
    return notes


def _failed_in_selection(failed: pd.DataFrame, task: str, spec: ReportSpec) -> pd.DataFrame:
    f = failed[failed["task"] == task]
    if spec.models is not None:
        f = f[f["model"].isin(spec.models)]
    if spec.methods is not None:
        f = f[f["method"].isin(spec.methods)]
    if spec.bits is not None:
        f = f[_in_bits(f, spec.bits)]
    return f


def default_caption(task: str, metrics: list[str]) -> str:
    labels = " / ".join(METRICS[m].label for m in metrics)
    return (f"{DATASETS.get(task, task)} {labels} (%) of post-training quantization methods "
            "by weight/activation bit-width (W/A).")


def default_label(name: Optional[str]) -> str:
    return "tab:" + re.sub(r"[^A-Za-z0-9:-]+", "-", name or "ptqbench")


def build_table(runs: pd.DataFrame, spec: ReportSpec, failed: Optional[pd.DataFrame] = None) -> Table:
    """Select, check, aggregate and mark: the table that `spec` describes over `runs` (the tidy
    frame of `collect`)."""
    sel, task = _select(runs, spec)
    metrics = list(spec.metrics or DEFAULT_METRICS.get(task, ()))
    wrong = [m for m in metrics if METRICS[m].task != task]
    if wrong:
        raise ReportError(f"metric(s) {', '.join(wrong)} belong to another task than {task!r}")
    if sel.empty and (spec.models is None or spec.methods is None or spec.bits is None):
        raise ReportError("no finished run matches the selection (task, models, methods, bits, calib size, where); "
                          "an empty table needs explicit models, methods and bits")
    sel = _split_setting(sel)
    _check_same(sel, "shared")
    for _, grp in sel.groupby("model"):
        _check_same(grp, "model")
    sel = sel.assign(_variant=_variants(sel))

    rows, show_calib = _rows(sel, spec)
    models = list(spec.models) if spec.models is not None else ordered(sel["model"], MODELS)
    columns = [Column(m, k) for m in models for k in metrics]
    decimals = {m: METRICS[m].decimals if spec.decimals is None else spec.decimals for m in metrics}

    cells: dict[tuple[Row, Column], Cell] = {}
    if rows and rows[0].is_fp:
        cells.update(_fp_cells(sel, columns, decimals))
    quant = sel[sel["method"] != FP_METHOD]
    by_key = {k: g for k, g in quant.groupby(["method", "_variant", "w_bits", "a_bits", "model"], dropna=False)}
    for r in (r for r in rows if not r.is_fp):
        for col in columns:
            grp = by_key.get((r.method, r.variant, r.w, r.a, col.model))
            if grp is None:
                continue
            if r.calib_size is not None:
                grp = grp[grp["calib_size"] == r.calib_size]
            cell = _aggregate(list(grp[col.metric]), decimals[col.metric])
            if cell is not None:
                cells[(r, col)] = cell
    _mark(cells, rows, columns, spec.second_best)

    table = Table(task=task, rows=rows, columns=columns, cells=cells, show_calib=show_calib, decimals=decimals,
                  caption=spec.caption or default_caption(task, metrics), label=spec.label or default_label(spec.name),
                  runs=sel.drop(columns=["_shared", "_model"]))
    failed_sel = None if failed is None else _failed_in_selection(failed, task, spec)
    table.notes = _notes(table, failed_sel)
    return table
