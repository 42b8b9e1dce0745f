"""Experiment tracking: wandb (offline unless the user opts in), or nothing.

One wandb run per job (`job_type=job`) and one `summary` run per group (`job_type=summary`).
Groups are stable, so a relaunched sweep lands in the group of its first launch: `logger.group`
when set, else the experiment's table name (`report.name`), else `sweep-<hash of the sweep's
command-line grid>` (written by the sweep callback to `<sweep dir>/wandb_group` for its jobs),
else `single`. Run ids are deterministic (a job: its run key and group; the summary: its group)
and runs resume, so a relaunch updates the same runs instead of adding new ones; offline, each
launch writes its own `offline-run-*` folder under the same id, and `wandb sync` merges them
into that one run. `finish()` is always called, also when the job fails.
Offline runs land in `<logger.dir>/wandb/offline-run-*`; upload them with `wandb sync <folder>`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Protocol

from ptqbench.errors import ConfigError
from ptqbench.hashing import short_hash

WANDB_MODES = ("offline", "online", "disabled")
GROUP_FILE = "wandb_group"
# Command-line keys that do not change which runs a sweep holds (left out of the grid hash).
_NOT_GRID = ("logger", "resume", "threads", "data.workers", "data.batch_size", "data.decoded_cache", "cache", "device", "report")


class Tracker(Protocol):
    def info(self) -> Optional[dict[str, Any]]: ...

    def log_record(self, record: Mapping[str, Any]) -> None: ...

    def log_summary(self, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, failed: bool) -> None: ...


class NullTracker:
    """logger=none."""

    def info(self) -> Optional[dict[str, Any]]:
        return None

    def log_record(self, record: Mapping[str, Any]) -> None:
        pass

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, failed: bool) -> None:
        pass


def sweep_group(overrides: Iterable[str], sweeper_params: Optional[Mapping[str, Any]] = None) -> str:
    """`sweep-<hash>` of a sweep's grid: its command-line overrides (sorted, without the keys
    that do not change the runs, `_NOT_GRID`) and the sweeper's `params` (experiments)."""
    kept = sorted(o for o in overrides if not o.lstrip("+~").split("=", 1)[0].startswith(_NOT_GRID))
    params = sorted((str(k), str(v)) for k, v in (sweeper_params or {}).items())
    return f"sweep-{short_hash(kept, params)}"


def group_for(config: Mapping[str, Any], fallback: str) -> str:
    """The group a run of `config` belongs to: `logger.group`, else the experiment's table name
    (`report.name`), else `fallback` (the sweep's grid group, or `single`)."""
    logger_group = (config.get("logger") or {}).get("group")
    if logger_group:
        return str(logger_group)
    name = (config.get("report") or {}).get("name")
    return str(name) if name else fallback


def job_group(config: Mapping[str, Any], fallback: str) -> str:
    """The group of a job: as `group_for`, where the sweep's grid group comes from the file the
    sweep callback wrote in the sweep folder (jobs of one sweep may run in other processes)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            path = Path(hc.sweep.dir) / GROUP_FILE
            if path.is_file():
                fallback = path.read_text().strip() or fallback
    except ValueError:  # HydraConfig not set: called outside a Hydra app
        pass
    return group_for(config, fallback)


def write_sweep_group(sweep_dir: Path, group: str) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / GROUP_FILE).write_text(group + "\n")


class WandbTracker:
    """A wandb run: one job's, or a group's `summary`."""

    def __init__(self, project: str, group: str, name: str, config: Mapping[str, Any], mode: str,
                 directory: str, entity: Optional[str] = None, tags: Optional[list[str]] = None,
                 run_id: Optional[str] = None, job_type: str = "job") -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(f"logger.mode={mode!r}; choose one of {WANDB_MODES}")
        import wandb

        os.makedirs(directory, exist_ok=True)
        self._wandb = wandb
        self.mode = mode
        self.run = wandb.init(
            project=project, entity=entity, group=group, name=name, config=dict(config), mode=mode,
            dir=directory, tags=[t[:64] for t in tags or []], reinit="finish_previous", job_type=job_type,
            id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    @property
    def run_dir(self) -> Optional[str]:
        """The run's folder (`offline-run-*` when offline; its files are in `files/`)."""
        d = getattr(self.run, "dir", None)
        return str(Path(d).parent) if d else None

    def info(self) -> dict[str, Any]:
        """Where the run is, for the job's record."""
        r = self.run
        return {"id": r.id, "project": r.project, "group": r.group, "job_type": r.job_type, "name": r.name,
                "mode": self.mode, "url": r.url, "dir": self.run_dir}

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        self.run.log(flat)
        for k, v in flat.items():
            self.run.summary[k] = v

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Everything the job's record knows that a dashboard plots: metrics, times, peak memory,
        quantizer counts, method statistics (scalars) and the run key as summary values; the
        per-quantizer map and the per-layer SQNR as Tables."""
        scalars = record_scalars(record)
        self.run.log(scalars)
        for k, v in scalars.items():
            self.run.summary[k] = v
        tables = {name: self._wandb.Table(dataframe=_wandb_frame(df)) for name, df in record_frames(record).items()}
        if tables:
            self.run.log(tables)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _scalars(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Flatten nested dicts of numbers into `prefix/key` entries (lists and text are left out;
    NaN and infinity too: wandb cannot chart them)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _scalars(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool):
        out[prefix] = int(value)
    elif isinstance(value, (int, float)) and math.isfinite(value):
        out[prefix] = value


def record_scalars(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's numbers under stable wandb keys."""
    out: dict[str, Any] = {}
    for section, prefix in (("metrics", ""), ("timings", "time"), ("memory", "memory"),
                            ("quantized_modules", "count"), ("method_stats", "method"), ("fp", "fp")):
        _scalars(prefix, record.get(section) or {}, out)
    sq = record.get("layer_sqnr") or {}
    _scalars("sqnr", {k: sq[k] for k in ("output_sqnr_db", "mean_sqnr_db", "min_sqnr_db", "seconds") if k in sq}, out)
    out["calibration/size"] = (record.get("calibration") or {}).get("size", 0)
    out["run_key"] = record.get("run_key", "")
    out["status"] = record.get("status", "")
    return out


def record_frames(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's per-quantizer map and per-layer SQNR as DataFrames (numbers stay numbers)."""
    import pandas as pd

    frames: dict[str, Any] = {}
    qmap = record.get("quantizers") or {}
    if qmap:
        rows = [{"quantizer": name, **{k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                                       for k, v in desc.items()}} for name, desc in qmap.items()]
        frames["quantizers"] = pd.DataFrame(rows)
    layers = (record.get("layer_sqnr") or {}).get("layers") or []
    if layers:
        frames["layer_sqnr"] = pd.DataFrame([{k: v for k, v in ly.items() if k != "quantizers"} for ly in layers])
    return frames


def make_tracker(logger_cfg: Mapping[str, Any], group: str, name: str, config: Mapping[str, Any]) -> Tracker:
    """Build the tracker that `logger=<name>` asks for, for one job (`group`: the fallback group
    of `job_group`)."""
    kind = logger_cfg.get("name", "none")
    check_logger_config(logger_cfg)
    if kind == "none":
        return NullTracker()
    if kind != "wandb":
        raise ConfigError(f"unknown logger {kind!r}; choose logger=wandb or logger=none")
    group = job_group(config, group)
    from ptqbench.records import run_key

    key = run_key(config)
    return _wandb_tracker(logger_cfg, group, name, config, run_id=f"{key}-{short_hash(group, n=8)}",
                          job_type="job", tags=job_tags(config))


def check_logger_config(logger_cfg: Mapping[str, Any]) -> None:
    """Refuse bad logger settings before the job starts working."""
    n = logger_cfg.get("sqnr_images", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"logger.sqnr_images={n!r}; use 0 (no per-layer SQNR) or a number of calibration images")
    mode = logger_cfg.get("mode", "offline")
    if logger_cfg.get("name") == "wandb" and mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={mode!r}; choose one of {WANDB_MODES}")


def job_tags(config: Mapping[str, Any]) -> list[str]:
    """model, method, bits (w4a4) and task of a job, as wandb tags."""
    bits = config.get("bits") or {}
    tags = [(config.get("model") or {}).get("name"), (config.get("method") or {}).get("name"),
            f"w{bits.get('w')}a{bits.get('a')}" if bits else None, (config.get("task") or {}).get("name")]
    return [str(t) for t in tags if t]


def _wandb_tracker(logger_cfg: Mapping[str, Any], group: str, name: str, config: Mapping[str, Any],
                   run_id: Optional[str], job_type: str, tags: Iterable[str] = ()) -> WandbTracker:
    user_tags = list(logger_cfg.get("tags") or [])
    return WandbTracker(
        project=logger_cfg.get("project", "ptqbench"), group=group, name=name, config=config,
        mode=logger_cfg.get("mode", "offline"), directory=str(logger_cfg.get("dir")),
        entity=logger_cfg.get("entity"), tags=list(dict.fromkeys([*tags, *user_tags])),
        run_id=run_id, job_type=job_type,
    )


def summary_run_id(project: str, group: str) -> str:
    """The one `summary` run of a group: the same id on every relaunch."""
    return f"summary-{short_hash(project, group, n=16)}"


def log_sweep_report(logger_cfg: Mapping[str, Any], group: str, tables: Mapping[str, Any],
                     images: Mapping[str, str], config: Mapping[str, Any]) -> Optional[str]:
    """Log a sweep's tables (name -> DataFrame) as wandb Tables and its plots (name -> image path)
    as wandb Images to the group's `summary` run (resumed, so a relaunch updates it), with the
    jobs' mode and folder. Returns that run's folder; None when the logger is not wandb."""
    if logger_cfg.get("name", "none") != "wandb":
        return None
    project = logger_cfg.get("project", "ptqbench")
    tracker = _wandb_tracker(logger_cfg, group, "summary", config, run_id=summary_run_id(project, group),
                             job_type="summary")
    wandb = tracker._wandb
    failed = True
    try:
        payload: dict[str, Any] = {f"report/{k}": wandb.Table(dataframe=_wandb_frame(v)) for k, v in tables.items()}
        payload.update({f"report/{k}": wandb.Image(p) for k, p in images.items()})
        tracker.run.log(payload)
        failed = False
        return tracker.run_dir
    finally:
        tracker.finish(failed)


def numeric_table(cells: Any) -> Any:
    """The report's table with numbers in its cells: one row per (W/A, method, variant, calib
    size, published or ours), per model and metric a mean, std and n column (the printed table holds text such as
    `78.91 ± 0.12 (n=3)†`, which a wandb panel cannot plot)."""
    import pandas as pd

    keys = [k for k in ("w_bits", "a_bits", "method", "variant", "calib_size", "published") if k in cells]
    rows: dict[tuple, dict[str, Any]] = {}
    for rec in cells.to_dict("records"):
        key = tuple(None if pd.isna(rec[k]) else rec[k] for k in keys)
        row = rows.setdefault(key, dict(zip(keys, key)))
        col = f"{rec['model']}/{rec['metric']}"
        row.update({col: rec["mean"], f"{col}/std": rec["std"], f"{col}/n": rec["n"]})
    return pd.DataFrame(list(rows.values()), columns=None if rows else keys)


def runs_frame(records: Iterable[Mapping[str, Any]]) -> Any:
    """One row per job record of a sweep: key, model, method, bits, metrics, times, peak memory
    (the summary run's time and memory panels)."""
    import pandas as pd

    rows = []
    for r in records:
        c = r.get("config") or {}
        row: dict[str, Any] = {"run_key": r.get("run_key"), "status": r.get("status"),
                               "model": (c.get("model") or {}).get("name"), "method": (c.get("method") or {}).get("name"),
                               "w_bits": (r.get("bits") or {}).get("w"), "a_bits": (r.get("bits") or {}).get("a"),
                               "calib_size": (c.get("calib") or {}).get("size"), "calib_seed": (c.get("calib") or {}).get("seed")}
        flat: dict[str, Any] = {}
        for section in ("metrics", "timings", "memory"):
            _scalars(section, r.get(section) or {}, flat)
        sq = (r.get("layer_sqnr") or {}).get("output_sqnr_db")
        rows.append({**row, **flat, "output_sqnr_db": sq})
    return pd.DataFrame(rows)


def sqnr_frame(records: Iterable[Mapping[str, Any]]) -> Any:
    """Per-layer SQNR of every record of a sweep, long format (one row per run and layer)."""
    import pandas as pd

    rows = []
    for r in records:
        c = r.get("config") or {}
        for ly in (r.get("layer_sqnr") or {}).get("layers") or []:
            rows.append({"run_key": r.get("run_key"), "model": (c.get("model") or {}).get("name"),
                         "method": (c.get("method") or {}).get("name"), "bits": (r.get("bits") or {}).get("name"),
                         **{k: v for k, v in ly.items() if k != "quantizers"}})
    return pd.DataFrame(rows)


def _wandb_frame(df: Any) -> Any:
    """wandb Tables take plain Python values: pandas' NA and NaN become None."""
    return df.astype(object).where(df.notna(), None)
