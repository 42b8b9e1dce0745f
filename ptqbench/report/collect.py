"""Run records -> a tidy DataFrame, one row per finished run.

Columns: run_key, group, task, model, method, method_options, w_bits, a_bits, calib_size,
calib_seed, seed, eval_images, setting, then one column per metric of `names.METRICS` (scaled as
the papers print it) and its FP baseline `fp_<metric>`, then provenance (git_commit, versions,
finished_at, host), cost (timings, peak memory) and `per_image` (the record's per-image hits, for
the significance tests). Runs that did not finish (`failed`, or a killed `running`) are kept
apart: the report counts them and writes them to a side file, but never puts them in a cell.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from ptqbench.errors import PTQBenchError
from ptqbench.per_image import PER_IMAGE_KEY
from ptqbench.record import RunRecord
from ptqbench.records import STATUS_OK, load_records, semantic_config
from ptqbench.report.names import FP_BITS, FP_METHOD, METRICS

# Seeds are what a repeated run changes; everything else in the semantic config is the setting.
REPEAT_KEYS = (("seed",), ("calib", "seed"))

PROVENANCE_COLUMNS = ["git_commit", "versions", "finished_at", "host"]
COST_COLUMNS = ["calibration_s", "eval_s", "calibration_peak_rss_mb", "eval_peak_rss_mb", "calibration_peak_cuda_mb",
                "eval_peak_cuda_mb"]
RUN_COLUMNS = ["run_key", "group", "task", "model", "method", "method_options", "w_bits", "a_bits", "calib_size",
               "calib_seed", "seed", "eval_images", "setting",
               *[c for m in METRICS for c in (m, f"fp_{m}")], *PROVENANCE_COLUMNS, *COST_COLUMNS, "per_image"]
FAILED_COLUMNS = ["run_key", "status", "task", "model", "method", "w_bits", "a_bits", "calib_size", "setting",
                  "git_commit", "finished_at", "error"]


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


def matches(record: Mapping[str, Any], where: Mapping[str, list[Any]]) -> bool:
    """True when the record's config (read as the current schema: `RunRecord.from_dict`) has one
    of the accepted values for every key in `where`."""
    flat = flatten(RunRecord.from_dict(record).config)
    return all(key in flat and flat[key] in values for key, values in where.items())


def _number(value: Any, scale: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value) * scale


def config_keys(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every flattened config key the records have (`model.checkpoint`, `data.eval_limit`, ...)."""
    return {k for r in records for k in flatten(RunRecord.from_dict(r).config)}


def check_where(records: list[Mapping[str, Any]], where: Mapping[str, list[Any]] | None) -> None:
    """Refuse a `where` key no record has (`checkpoint` for `model.checkpoint`): it would select
    nothing and the user would not learn why."""
    keys = config_keys(records)
    for key in where or {}:
        if key not in keys:
            near = sorted(k for k in keys if k.endswith("." + key) or k.split(".")[-1] == key.split(".")[-1])
            hint = f"; did you mean {' or '.join(near)}?" if near else f"; the records have: {', '.join(sorted(keys))}"
            raise PTQBenchError(f"--where {key}: no record has this config key{hint}")


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
    versions = record.get("versions") or {}
    memory = record.get("memory") or {}
    timings = record.get("timings") or {}
    row.update(
        git_commit=record.get("git_commit"), versions=json.dumps(versions, sort_keys=True) if versions else None,
        finished_at=record.get("finished_at"), host=record.get("host"),
        calibration_s=timings.get("calibration_s"), eval_s=timings.get("eval_s"),
        calibration_peak_rss_mb=(memory.get("calibration") or {}).get("peak_rss_mb"),
        eval_peak_rss_mb=(memory.get("evaluation") or {}).get("peak_rss_mb"),
        calibration_peak_cuda_mb=(memory.get("calibration") or {}).get("peak_cuda_mb"),
        eval_peak_cuda_mb=(memory.get("evaluation") or {}).get("peak_cuda_mb"),
        per_image=record.get(PER_IMAGE_KEY),
    )
    metrics = record.get("metrics") or {}
    for m in METRICS.values():
        value = _number(metrics.get(m.record_key), m.scale)
        fp = _number(metrics.get(f"fp_{m.record_key}"), m.scale)
        row[m.name] = value
        row[f"fp_{m.name}"] = value if is_fp and math.isnan(fp) else fp
    return row


INTEGER_KEYS = (("bits", "w"), ("bits", "a"), ("calib", "size"), ("calib", "seed"))


def _not_integral(record: Mapping[str, Any]) -> Optional[str]:
    """`bits.w=4.5` when a record's integer setting is not an integer, else None."""
    cfg = record.get("config") or {}
    if ((cfg.get("method") or {}).get("name")) == FP_METHOD:
        return None
    for group, key in INTEGER_KEYS:
        v = (cfg.get(group) or {}).get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            return f"{group}.{key}={v!r}"
    return None


def collect_records(records: Iterable[Mapping[str, Any]], where: Mapping[str, list[Any]] | None = None) -> Collection:
    """Split records into finished runs and the rest, keeping those that match `where`."""
    runs, failed = [], []
    for rec in records:
        if where and not matches(rec, where):
            continue
        bad = _not_integral(rec) if rec.get("status") == STATUS_OK else None
        if rec.get("status") == STATUS_OK and bad is None:
            runs.append(run_row(rec))
        else:
            if bad is not None:  # e.g. bits.w=4.5 from before values were checked: it fits no row
                rec = {**rec, "status": "invalid", "error": f"{bad}: not an integer, so in no table"}
            calib = (rec.get("config") or {}).get("calib") or {}
            failed.append({**_identity(rec), "status": rec.get("status"), "error": rec.get("error"),
                           "calib_size": calib.get("size"), "setting": _setting(rec),
                           "git_commit": rec.get("git_commit"), "finished_at": rec.get("finished_at")})
    run_df = pd.DataFrame(runs, columns=RUN_COLUMNS)
    for col in ("w_bits", "a_bits", "calib_size", "calib_seed", "seed", "eval_images"):
        run_df[col] = run_df[col].astype("Int64")
    return Collection(run_df, pd.DataFrame(failed, columns=FAILED_COLUMNS))


def collect(results_dir: Path, where: Mapping[str, list[Any]] | None = None) -> Collection:
    """Every record under `<results_dir>/runs`, collected."""
    return collect_records(load_records(Path(results_dir)), where)
