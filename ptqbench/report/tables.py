"""Tidy runs -> a paper-layout table: an FP row on top, then one group of rows per bit-width
(W/A), one row per method within the group; one column per model (and per metric when a table
shows several, like box AP / mask AP on COCO).

Each cell aggregates the runs that differ only in their seeds (`seed`, `calib.seed`): mean, sample
standard deviation (ddof=1; none for a single run) and count. Bold and underline are decided per
column and W/A group (`spec.bold`): by default only for a best that a paired bootstrap over the
evaluation images separates from every other cell (`significance.py`); `value` marks the printed
values as they rank. The FP row and published rows are never marked. The FP row is the FP baseline every record carries (`metrics.fp_<metric>`, or the metric
itself for `method=fp` runs), one value per distinct baseline.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from ptqbench.errors import PTQBenchError
from ptqbench.report.collect import FAILED_COLUMNS, flatten
from ptqbench.report.names import (
    DEFAULT_METRICS, FP_BITS, FP_METHOD, FULL_EVAL_IMAGES, METHODS, METRICS, MODELS, bits_label, method_label,
    model_label, ordered,
)
from ptqbench.report.significance import BEST, SECOND, TIE, CellSample, group_marks, pairable
from ptqbench.report.spec import ReportSpec, parse_bits

DATASETS = {"classification": "ImageNet", "detection": "COCO"}


class ReportError(PTQBenchError):
    """The selected runs cannot make one honest table (mixed settings, nothing selected, ...)."""


@dataclass(frozen=True)
class Row:
    """A table row: W/A group, method (and its variant when its options differ between runs),
    calibration size (None for the FP row); `published` rows hold the papers' numbers."""

    w: int
    a: int
    method: str
    variant: str = ""
    calib_size: Optional[int] = None
    published: bool = False

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
    mark: str = ""      # BEST, SECOND, TIE or ""
    flag: bool = False  # FP row only: our FP differs from the paper's (set by the comparison)
    source: str = ""    # published cells: where the number was read
    significance: str = ""  # "tested", "unavailable" (no per-image results) or "" (not asked / FP row)
    ci: tuple[float, float] = (math.nan, math.nan)       # bootstrap interval of the mean
    diff_ci: tuple[float, float] = (math.nan, math.nan)  # of (group best - this cell)
    diff: float = math.nan
    mixed: list[str] = field(default_factory=list)  # provenance differences between the averaged runs

    @property
    def text(self) -> str:
        return fmt(self.mean, self.decimals)

    @property
    def std_text(self) -> Optional[str]:
        return None if self.n < 2 else fmt(self.std, self.decimals)


@dataclass
class Note:
    """A note under the table: `text` for `notes: full`, `short` (a clause, or None to leave it
    out) for the one-sentence `notes: short`."""

    kind: str
    text: str
    short: Optional[str] = None


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
    notes: list[Note] = field(default_factory=list)
    spec: ReportSpec = field(default_factory=ReportSpec)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)  # unfinished runs of the selection, `in_table`
    warnings: list[str] = field(default_factory=list)           # for the console, not the paper

    def cell(self, row: Row, col: Column) -> Optional[Cell]:
        return self.cells.get((row, col))

    @property
    def multi_metric(self) -> bool:
        return len({c.metric for c in self.columns}) > 1

    @property
    def method_first(self) -> bool:
        return self.spec.index_order == "method-bits"

    def column_label(self, col: Column) -> str:
        name = model_label(col.model)
        return f"{name} {METRICS[col.metric].label}" if self.multi_metric else name

    def index_labels(self) -> list[str]:
        first = ["Method", "W/A"] if self.method_first else ["W/A", "Method"]
        return [*first, *(["Calib"] if self.show_calib else [])]

    def index_values(self, row: Row, label: Optional[str] = None) -> list[str]:
        """W/A, method label (or `label`), calibration size, in the table's column order."""
        calib = [] if not self.show_calib else ["" if row.calib_size is None else str(row.calib_size)]
        label = row.label if label is None else label
        first = [label, row.bits] if self.method_first else [row.bits, label]
        return [*first, *calib]

    @property
    def bits_index(self) -> int:
        """Position of the W/A among the index columns."""
        return 1 if self.method_first else 0

    def note_texts(self) -> list[str]:
        return [n.text for n in self.notes]

    def add_note(self, kind: str, text: str, short: Optional[str] = None) -> None:
        self.notes = [n for n in self.notes if n.kind != kind] + [Note(kind, text, short)]

    def to_frame(self) -> pd.DataFrame:
        """The table as printed (plain text, `mean ± std (n=N)`), one line per row."""
        data = [[*self.index_values(r, r.label + (" (published)" if r.published else "")),
                 *[plain_text(self.cell(r, c)) for c in self.columns]] for r in self.rows]
        return pd.DataFrame(data, columns=[*self.index_labels(), *[self.column_label(c) for c in self.columns]])

    def cells_frame(self) -> pd.DataFrame:
        """Every cell with full-precision numbers and its significance intervals, for machines."""
        out = []
        for r in self.rows:
            for c in self.columns:
                cell = self.cell(r, c)
                nan2 = (math.nan, math.nan)
                out.append({"w_bits": r.w, "a_bits": r.a, "method": r.method, "variant": r.variant,
                            "calib_size": r.calib_size, "published": r.published, "model": c.model,
                            "metric": c.metric, "mean": cell.mean if cell else math.nan,
                            "std": cell.std if cell else math.nan, "n": cell.n if cell else 0,
                            "shown": cell.text if cell else "", "mark": cell.mark if cell else "",
                            "significance": cell.significance if cell else "",
                            "ci_low": (cell.ci if cell else nan2)[0], "ci_high": (cell.ci if cell else nan2)[1],
                            "diff_vs_best": cell.diff if cell else math.nan,
                            "diff_ci_low": (cell.diff_ci if cell else nan2)[0],
                            "diff_ci_high": (cell.diff_ci if cell else nan2)[1],
                            "fp_differs": bool(cell and cell.flag), "source": cell.source if cell else "",
                            "mixed_provenance": "; ".join(cell.mixed) if cell else ""})
        return pd.DataFrame(out).astype({"calib_size": "Int64"})


def fmt(x: float, decimals: int) -> str:
    """Fixed-point text; never prints a negative zero."""
    s = f"{x:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def plain_text(cell: Optional[Cell]) -> str:
    if cell is None:
        return "--"
    s = cell.text if cell.std_text is None else f"{cell.text} ± {cell.std_text} (n={cell.n})"
    return s + ("†" if cell.flag else "") + ("≈" if cell.mark == TIE else "")


def _aggregate(values: list[float], decimals: int) -> Optional[Cell]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Cell(statistics.fmean(values), std, len(values), decimals)


def _hint_value(text: str) -> str:
    """A JSON-dumped config value as a user types it after --where KEY= ."""
    v = json.loads(text)
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _check_same(runs: pd.DataFrame, part: str) -> None:
    """Refuse to put runs that differ in anything but seeds, method, bits, calibration size and
    model into one table: such numbers are not comparable (say, two evaluation sets)."""
    flat = [flatten(s) for s in runs["_" + part]]
    keys = sorted({k for f in flat for k in f})
    differ = {k: sorted({json.dumps(f.get(k), default=str) for f in flat}) for k in keys}
    differ = {k: v for k, v in differ.items() if len(v) > 1}
    if differ:
        prefix = "model." if part == "model" else ""  # the model part is stored without its group name
        what = "; ".join(f"{prefix}{k}: {', '.join(v)}" for k, v in differ.items())
        key, values = next(iter(differ.items()))
        raise ReportError(f"the selected runs differ in {what}; one table needs one setting: "
                          f"pick one with --where {prefix}{key}={_hint_value(values[0])} "
                          "(or `where:` in the report block)")


def _shared_and_model(setting: str) -> tuple[dict, dict]:
    d = json.loads(setting)
    d.pop("method", None)
    d.pop("bits", None)
    (d.get("calib") or {}).pop("size", None)
    model = d.pop("model", {}) or {}
    return d, model


def _split_setting(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `_shared` (what must be equal across the table) and `_model` (equal per model)."""
    parts = [_shared_and_model(s) for s in runs["setting"]]
    return runs.assign(_shared=[p[0] for p in parts], _model=[p[1] for p in parts])


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


def _counts(values: pd.Series, label=lambda v: str(v)) -> str:
    c = values.dropna().value_counts()
    return ", ".join(f"{label(k)} ({n})" for k, n in sorted(c.items(), key=lambda kv: str(kv[0]))) or "none"


def _check_names(spec: ReportSpec, runs: pd.DataFrame, failed: Optional[pd.DataFrame]) -> None:
    """Refuse model and method names that neither the report nor any record knows (`deit_huge`,
    `minmaxx`), naming the value and listing what there is."""
    for what, chosen, known in (("model", spec.models, MODELS), ("method", spec.methods, METHODS)):
        if chosen is None:
            continue
        present = set(runs[what].dropna())
        seen = present | (set(failed[what].dropna()) if failed is not None and not failed.empty else set())
        unknown = [v for v in chosen if v not in known and v not in seen]
        if unknown:
            raise ReportError(
                f"unknown {what}(s) {', '.join(repr(u) for u in unknown)} in --{what}s; the finished runs have: "
                f"{', '.join(ordered(present, known)) or 'none'}; the report knows: {', '.join(known)}")


def select_runs(runs: pd.DataFrame, spec: ReportSpec) -> tuple[pd.DataFrame, str]:
    """The runs of `spec`'s task, models, methods (FP runs always), bits and calibration size,
    with no check: the table's rows and also `--runs-only`'s."""
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
        sel = sel[_in_bits(sel, spec.bits)]
    if spec.calib_size is not None:
        sel = sel[(sel["method"] == FP_METHOD) | (sel["calib_size"] == spec.calib_size)]
    return sel, task


def _nothing_selected(runs: pd.DataFrame, failed: Optional[pd.DataFrame], task: str, spec: ReportSpec) -> ReportError:
    """Why the selection is empty, with what the records do have."""
    mine = runs[runs["task"] == task]
    fails = failed[failed["task"] == task] if failed is not None and not failed.empty else None
    if mine.empty:
        if fails is not None and not fails.empty:
            lines = "; ".join(f"{f.run_key} {f.model} {f.method}: {str(f.error or f.status).splitlines()[0][:120]}"
                              for f in fails.head(5).itertuples())
            return ReportError(f"no finished {task} run: the only {len(fails)} record(s) did not finish ({lines}); "
                               "rerun those jobs (a sweep relaunch reruns them)")
        return ReportError(f"no finished {task} run in the records")
    asked = ", ".join(f"{k}={','.join(map(str, v))}" for k, v in
                      (("models", spec.models), ("methods", spec.methods), ("bits", spec.bits),
                       ("calib_size", None if spec.calib_size is None else [spec.calib_size])) if v is not None)
    quant = mine[mine["method"] != FP_METHOD]
    bits = sorted({(int(w), int(a)) for w, a in zip(quant["w_bits"], quant["a_bits"])})
    return ReportError(
        f"no finished run matches the selection ({asked or 'no filter'}); the finished {task} runs have "
        f"models {_counts(mine['model'])}; methods {_counts(mine['method'])}; "
        f"bits {', '.join(f'w{w}a{a}' for w, a in bits) or 'none'}; calib sizes {_counts(quant['calib_size'])}. "
        "An empty table needs explicit models, methods and bits")


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


def _groups(rows: list[Row]) -> list[list[Row]]:
    """The measured quantized rows, per W/A group (the unit within which bold is decided)."""
    groups: dict[tuple[int, int], list[Row]] = {}
    for r in rows:
        if not r.is_fp and not r.published:
            groups.setdefault((r.w, r.a), []).append(r)
    return list(groups.values())


def _mark_by_value(cells: list[Cell], second_best: bool) -> None:
    """Bold the best, underline the second best, on printed values (ties all marked)."""
    shown = sorted({float(c.text) for c in cells}, reverse=True)  # every metric: higher is better
    for c in cells:
        if float(c.text) == shown[0]:
            c.mark = BEST
        elif second_best and len(shown) > 1 and float(c.text) == shown[1]:
            c.mark = SECOND


def _samples(group: list[tuple[Row, Cell, pd.DataFrame]], metric: str) -> Optional[list[CellSample]]:
    """The per-image hits of each cell's runs, or None when some run lacks them or the runs were
    not evaluated on the same images."""
    from ptqbench.per_image import hits_of

    if metric not in ("top1", "top5"):
        return None
    samples, shas = [], []
    for _, cell, runs in group:
        hits = []
        for block in runs["per_image"]:
            got = hits_of({"per_image": block}, metric) if isinstance(block, dict) else None
            if got is None:
                return None
            shas.append(got[0])
            hits.append(got[1])
        if len({h.size for h in hits}) != 1:
            return None
        samples.append(CellSample(np.stack(hits), cell.mean))
    return samples if pairable(shas) else None


def _mark(table: Table, cell_runs: dict[tuple[Row, Column], pd.DataFrame]) -> None:
    """Bold / underline / tie marks per column and W/A group, by `spec.bold` (module docstring)."""
    spec = table.spec
    if spec.bold == "none":
        return
    unavailable = 0
    for col in table.columns:
        for grp in _groups(table.rows):
            present = [(r, c, cell_runs[(r, col)]) for r in grp if (c := table.cell(r, col)) is not None]
            if len(present) < 2:
                continue
            cells = [c for _, c, _ in present]
            if spec.bold == "value":
                _mark_by_value(cells, spec.second_best)
                continue
            samples = _samples(present, col.metric)
            if samples is None:
                unavailable += 1
                for c in cells:
                    c.significance = "unavailable"
                continue
            for c, res in zip(cells, group_marks(samples, spec.alpha, spec.bootstrap, spec.second_best)):
                c.significance, c.mark, c.ci = "tested", res.mark, (res.low, res.high)
                c.diff, c.diff_ci = res.diff, (res.diff_low, res.diff_high)
    level = f"{100 * (1 - spec.alpha):g}%"
    if spec.bold == "significant":
        tested = any(c.significance == "tested" for c in table.cells.values())
        if tested:
            ties = any(c.mark == TIE for c in table.cells.values())
            table.add_note("bold", f"Bold: the best of its column and W/A group, separated from every other by a "
                           f"{level} paired bootstrap interval over the evaluation images (and the runs of a cell); "
                           "underlined: the second best, separated from those below it"
                           + ("; ≈: not separable from the best, so nothing is bold there." if ties else "."),
                           f"bold: best by a {level} paired bootstrap" + ("; ≈: tied with the best" if ties else ""))
        if unavailable:
            msg = (f"significance unavailable for {unavailable} column/W/A group(s): their runs have no per-image "
                   "results (records written before ptqbench kept them, or a metric without them), so nothing "
                   "is bold there; rerun those jobs, or pass --bold value to mark by value")
            table.warnings.append(msg)
            table.add_note("significance", msg[0].upper() + msg[1:] + ".", "no bold where significance is unavailable")
    elif spec.bold == "value":
        table.add_note("bold", "Bold: best value of its column and W/A group, as printed; underlined: second best "
                       "(no significance test).", None)


def _provenance(table: Table, cell_runs: dict[tuple[Row, Column], pd.DataFrame]) -> None:
    """Warn about cells that average runs from different commits or library versions."""
    flagged = []
    for (row, col), runs in cell_runs.items():
        cell = table.cell(row, col)
        if cell is None or len(runs) < 2:
            continue
        for what, column in (("commits", "git_commit"), ("library versions", "versions")):
            values = sorted({str(v) for v in runs[column].dropna()})
            if len(values) > 1:
                if column == "versions":
                    dicts = [json.loads(v) for v in values]
                    keys = sorted({k for d in dicts for k in d if len({str(x.get(k)) for x in dicts}) > 1})
                    values = [", ".join(f"{k} {'/'.join(sorted({str(x.get(k)) for x in dicts}))}" for k in keys)]
                cell.mixed.append(f"{what} ({'; '.join(values)})")
        if cell.mixed:
            flagged.append(f"{model_label(col.model)} {row.label} {row.bits} averages runs from different "
                           + " and ".join(cell.mixed))
    if flagged:
        table.warnings += flagged
        table.add_note("provenance", f"{len(flagged)} cell(s) average runs from different commits or library "
                       "versions (mixed_provenance in the _cells.csv).", None)


def _notes(table: Table) -> None:
    sizes = sorted({int(n) for n in table.runs["eval_images"].dropna()})
    full, what = FULL_EVAL_IMAGES.get(table.task, (0, "images"))
    if sizes:
        count = " / ".join(f"{n:,}" for n in sizes)
        note = f"Evaluated on {count} {what}"
        short = f"evaluated on {count} {what}"
        if max(sizes) < full:
            note += (f"; the papers use all {full:,}, so absolute numbers are not comparable with theirs: "
                     "compare drops from FP")
            short = f"evaluated on {count} of the {full:,} {what} the papers use (compare drops from FP)"
        table.add_note("eval", note + ".", short)
    if any(c.n > 1 for (r, _), c in table.cells.items() if not r.is_fp):
        std = table.spec.std
        table.add_note("std", "Repeated runs (seeds, calibration draws): mean ± sample standard deviation over n "
                       "runs, n in parentheses." if std != "none" else
                       "Repeated runs (seeds, calibration draws): mean over n runs; the standard deviations are "
                       "in the _cells.csv.",
                       {"inline": "mean ± std over n runs, n in parentheses", "separate": "mean over n runs, "
                        "± std on the line below", "none": "mean over repeated runs"}[std])
    fp_multi = sorted({model_label(c.model) for (r, c), cell in table.cells.items() if r.is_fp and cell.n > 1})
    if fp_multi:
        table.add_note("fp_multi", f"The runs of {', '.join(fp_multi)} carry different FP baselines: the FP row "
                       "shows their mean ± std over the distinct values.", None)
    if any(table.cell(r, c) is None for r in table.rows for c in table.columns):
        table.add_note("missing", "-- : no finished run.", "--: no result")
    inside = table.failed[table.failed["in_table"]] if not table.failed.empty else table.failed
    if not inside.empty:
        lines = [f"{model_label(str(f.model))} {method_label(str(f.method))} "
                 f"{'' if pd.isna(f.w_bits) else bits_label(f.w_bits, f.a_bits)}: "
                 f"{str(f.error or f.status).splitlines()[0][:160]}" for f in inside.itertuples()]
        table.add_note("failed", f"{len(lines)} run(s) of this table did not finish and are not in it: "
                       + "; ".join(lines) + ".", None)


def short_note(table: Table) -> Optional[str]:
    """The one paper-style sentence of `notes: short`: the clauses of the notes that have one."""
    clauses = [n.short for n in table.notes if n.short]
    if not clauses:
        return None
    text = "; ".join(clauses)
    return text[0].upper() + text[1:] + "."


def _failed_in_selection(failed: Optional[pd.DataFrame], task: str, spec: ReportSpec, table_runs: pd.DataFrame,
                         rows: list[Row], columns: list[Column]) -> pd.DataFrame:
    """The unfinished runs of the selection (for the side file), with `in_table`: the run belongs
    to a cell of this table (its row and column exist and its setting is the table's), so a
    config error of some other sweep never fills this table's notes."""
    if failed is None or failed.empty:
        return pd.DataFrame(columns=[*FAILED_COLUMNS, "in_table"])
    f = failed[failed["task"] == task]
    if spec.models is not None:
        f = f[f["model"].isin(spec.models)]
    if spec.methods is not None:
        f = f[f["method"].isin(spec.methods)]
    if spec.bits is not None:
        wa = {parse_bits(b) for b in spec.bits}
        f = f[[m == FP_METHOD or (w, a) in wa for m, w, a in zip(f["method"], f["w_bits"], f["a_bits"])]]
    shared = {json.dumps(_shared_and_model(s)[0], sort_keys=True, default=str) for s in table_runs["setting"]}
    models = {c.model for c in columns}
    keys = {(r.w, r.a, r.method, r.calib_size) for r in rows if not r.is_fp}
    inside = []
    for rec in f.itertuples():
        cell = ((rec.w_bits, rec.a_bits, rec.method, rec.calib_size) in keys
                or (rec.w_bits, rec.a_bits, rec.method, None) in keys)
        same = not shared or json.dumps(_shared_and_model(rec.setting)[0], sort_keys=True, default=str) in shared
        inside.append(bool(cell and rec.model in models and same))
    return f.assign(in_table=inside)


def default_caption(task: str, metrics: list[str]) -> str:
    labels = " / ".join(METRICS[m].label for m in metrics)
    return (f"{DATASETS.get(task, task)} {labels} (%) of post-training quantization methods "
            "by weight/activation bit-width (W/A).")


def default_label(name: Optional[str]) -> str:
    return "tab:" + re.sub(r"[^A-Za-z0-9:-]+", "-", name or "ptqbench")


def build_table(runs: pd.DataFrame, spec: ReportSpec, failed: Optional[pd.DataFrame] = None) -> Table:
    """Select, check, aggregate and mark: the table that `spec` describes over `runs` (the tidy
    frame of `collect`)."""
    _check_names(spec, runs, failed)
    sel, task = select_runs(runs, spec)
    metrics = list(spec.metrics or DEFAULT_METRICS.get(task, ()))
    wrong = [m for m in metrics if METRICS[m].task != task]
    if wrong:
        raise ReportError(f"metric(s) {', '.join(wrong)} belong to another task than {task!r}")
    if sel.empty and (spec.models is None or spec.methods is None or spec.bits is None):
        raise _nothing_selected(runs, failed, task, spec)
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
    cell_runs: dict[tuple[Row, Column], pd.DataFrame] = {}
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
            grp = grp[grp[col.metric].notna()]
            cell = _aggregate(list(grp[col.metric]), decimals[col.metric])
            if cell is not None:
                cells[(r, col)] = cell
                cell_runs[(r, col)] = grp

    table = Table(task=task, rows=rows, columns=columns, cells=cells, show_calib=show_calib, decimals=decimals,
                  caption=spec.caption or default_caption(task, metrics), label=spec.label or default_label(spec.name),
                  runs=sel.drop(columns=["_shared", "_model"]), spec=spec)
    table.failed = _failed_in_selection(failed, task, spec, sel, rows, columns)
    _notes(table)
    _mark(table, cell_runs)
    _provenance(table, cell_runs)
    return table
