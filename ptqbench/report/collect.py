"""Run records -> a tidy DataFrame, one row per finished run.

Columns: run_key, group, task, model, method, method_options, w_bits, a_bits, calib_size,
calib_seed, seed, eval_images, setting, then one column per metric of `names.METRICS` (scaled as
the papers print it) and its FP baseline `fp_<metric>`. Runs that did not finish (`failed`, or a
killed `running`) are kept apart: the report counts and lists them but never puts them in a cell.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ptqbench.records import STATUS_OK, load_records, semantic_config
from ptqbench.report.names import FP_BITS, FP_METHOD, METRICS

# Seeds are what a repeated run changes; everything else in the semantic config is the setting.
REPEAT_KEYS = (("seed",), ("calib", "seed"))

RUN_COLUMNS = ["run_key", "group", "task", "model", "method", "method_options", "w_bits", "a_bits", "calib_size",
               "calib_seed", "seed", "eval_images", "setting",
               *[c for m in METRICS for c in (m, f"fp_{m}")]]
FAILED_COLUMNS = ["run_key", "status", "task", "model", "method", "w_bits", "a_bits", "error"]


@dataclass
class Collection:
    """Finished runs (`runs`) and the others (`failed`), as DataFrames."""

    runs: pd.DataFrame
    failed: pd.DataFrame


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data": {"eval_limit": 5}} -> {"data.eval_limit": 5}."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Config keys added after records existed, with the value those older records implicitly had.
IMPLIED_DEFAULTS = {"quant.full": False}


def matches(record: Mapping[str, Any], where: Mapping[str, list[Any]]) -> bool:
    """True when the record's config has one of the accepted values for every key in `where`
    (a record older than a key in IMPLIED_DEFAULTS has that key's default)."""
    flat = {**IMPLIED_DEFAULTS, **flatten(record.get("config") or {})}
    return all(key in flat and flat[key] in values for key, values in where.items())


def _number(value: Any, scale: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value) * scale


def _setting(record: Mapping[str, Any]) -> str:
    sem = json.loads(json.dumps(record.get("semantic_config") or semantic_config(record.get("config") or {}),
                                default=str))
    for path in REPEAT_KEYS:
        node = sem
        for part in path[:-1]:
            node = node.get(part) or {}
        node.pop(path[-1], None)
    return json.dumps(sem, sort_keys=True, default=str)


def _identity(record: Mapping[str, Any]) -> dict[str, Any]:
    cfg = record.get("config") or {}
    method = (cfg.get("method") or {}).get("name")
    bits = cfg.get("bits") or {}
    is_fp = method == FP_METHOD
    return {
        "run_key": record.get("run_key"),
        "task": (cfg.get("task") or {}).get("name", "classification"),
        "model": (cfg.get("model") or {}).get("name"),
        "method": method,
        "w_bits": FP_BITS if is_fp else bits.get("w"),
        "a_bits": FP_BITS if is_fp else bits.get("a"),
    }


def run_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """The tidy row of one finished run."""
    cfg = record.get("config") or {}
    row = _identity(record)
    is_fp = row["method"] == FP_METHOD
    calib = cfg.get("calib") or {}
    options = {k: v for k, v in (cfg.get("method") or {}).items() if k != "name"}
    row.update(
        group=record.get("group"),
        method_options=json.dumps(options, sort_keys=True, default=str),
        calib_size=None if is_fp else calib.get("size"),  # FP uses no calibration images
        calib_seed=None if is_fp else calib.get("seed"),
        seed=cfg.get("seed"),
        eval_images=(record.get("data") or {}).get("eval_images"),
        setting=_setting(record),
    )
    metrics = record.get("metrics") or {}
    for m in METRICS.values():
        value = _number(metrics.get(m.record_key), m.scale)
        fp = _number(metrics.get(f"fp_{m.record_key}"), m.scale)
        row[m.name] = value
        row[f"fp_{m.name}"] = value if is_fp and math.isnan(fp) else fp
    return row


def collect_records(records: Iterable[Mapping[str, Any]], where: Mapping[str, list[Any]] | None = None) -> Collection:
    """Split records into finished runs and the rest, keeping those that match `where`."""
    runs, failed = [], []
    for rec in records:
        if where and not matches(rec, where):
            continue
        if rec.get("status") == STATUS_OK:
            runs.append(run_row(rec))
        else:
            failed.append({**_identity(rec), "status": rec.get("status"), "error": rec.get("error")})
    run_df = pd.DataFrame(runs, columns=RUN_COLUMNS)
    for col in ("w_bits", "a_bits", "calib_size", "calib_seed", "seed", "eval_images"):
        run_df[col] = run_df[col].astype("Int64")
    return Collection(run_df, pd.DataFrame(failed, columns=FAILED_COLUMNS))


def collect(results_dir: Path, where: Mapping[str, list[Any]] | None = None) -> Collection:
    """Every record under `<results_dir>/runs`, collected."""
    return collect_records(load_records(Path(results_dir)), where)
