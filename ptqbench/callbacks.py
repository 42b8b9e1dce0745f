"""Hydra callbacks: a one-screen summary and the sweep's table at the end of a sweep."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("ptqbench")


class SweepSummary(Callback):
    """Collects each job's outcome in `<sweep dir>/jobs.jsonl` (works with any launcher that
    shares the file system: on_job_end runs in the job's process, joblib worker or submitit task,
    and appends under a file lock); when the sweep ends, builds the table of its jobs (the `report:`
    config block: `results/tables/<name>.*` for an experiment, else `<sweep dir>/report/table.*`),
    logs it to a wandb `summary` run when logger=wandb, prints the counts, and exits non-zero if
    any job failed, after every job has run. A report that cannot be built is a warning, never a
    failed sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        path = sweep_dir / "jobs.jsonl"
        if path.exists():
            path.unlink()
        try:
            from ptqbench.tracking import write_sweep_group

            write_sweep_group(sweep_dir, stable_group(config))
        except Exception as e:  # the jobs fall back to the sweep folder's name as their group
            log.warning("wandb group of this sweep not written: %s: %s", type(e).__name__, e)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
        except Exception:
            return
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        try:
            ret = job_return._return_value if hasattr(job_return, "_return_value") else None
        except Exception:
            ret = None
        ret = ret if isinstance(ret, dict) else {"status": "failed", "error": "no return value"}
        line = {"overrides": list(job_return.overrides or []), **ret}
        append_line(sweep_dir / "jobs.jsonl", json.dumps(line, default=str))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / "jobs.jsonl"
        if not path.exists():
            return
        jobs = read_jobs(path)
        ran = [j for j in jobs if j.get("status") == "ok" and not j.get("skipped")]
        skipped = [j for j in jobs if j.get("skipped")]
        failed = [j for j in jobs if j.get("status") != "ok"]
        try:
            sweep_report(config, jobs)
        except Exception as e:  # the records are safe; a table problem must not fail the sweep
            log.warning("sweep table not built: %s: %s (rebuild it with `python -m ptqbench.report`)",
                        type(e).__name__, e)
        log.info("sweep done: %d jobs, %d ran, %d skipped (already finished), %d failed; records in %s/runs",
                 len(jobs), len(ran), len(skipped), len(failed), config.results_dir)
        for j in failed:
            log.error("failed: %s: %s", " ".join(j.get("overrides", [])), j.get("error"))
        if failed:
            raise SystemExit(1)


def stable_group(config: DictConfig) -> str:
    """The wandb group of a sweep (ptqbench.tracking.group_for): `logger.group`, the experiment's
    table name, or a hash of the sweep's command-line grid; the same on every relaunch."""
    from ptqbench.tracking import group_for, sweep_group

    params = config.hydra.sweeper.get("params") if "params" in config.hydra.sweeper else None
    grid = sweep_group(list(config.hydra.overrides.task), OmegaConf.to_container(params) if params else None)
    return group_for(_logger_and_report(config), grid)


def _logger_and_report(config: DictConfig) -> dict[str, Any]:
    """The two config blocks a group name is read from."""
    return {k: OmegaConf.to_container(config[k], resolve=True) for k in ("logger", "report") if config.get(k) is not None}


def append_line(path: Path, line: str) -> None:
    """Append one line to `path` from any of the sweep's processes (joblib workers, submitit jobs,
    possibly on several hosts): under the file's lock, as one O_APPEND write."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    with FileLock(str(path) + ".lock"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)


def read_jobs(path: Path) -> list[dict[str, Any]]:
    """The lines of `jobs.jsonl`; a line that does not parse is logged and skipped."""
    jobs = []
    for n, ln in enumerate(path.read_text().splitlines(), 1):
        if not ln.strip():
            continue
        try:
            jobs.append(json.loads(ln))
        except ValueError as e:
            log.warning("%s line %d is not JSON (%s); skipped", path, n, e)
    return jobs


def _group_of(config: DictConfig, sweep_dir: Path) -> str:
    """The group of the sweep's jobs (ptqbench.tracking.job_group): the one on_multirun_start
    wrote, else what the jobs fell back to."""
    from ptqbench.tracking import GROUP_FILE, group_for

    path = sweep_dir / GROUP_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    return group_for(_logger_and_report(config), sweep_dir.name)


def sweep_report(config: DictConfig, jobs: list[dict[str, Any]]) -> Optional[Path]:
    """Build the table of the sweep's jobs (ran, skipped or failed) and log it to wandb; returns
    the output prefix, None when disabled or when no job left a record."""
    from ptqbench.records import read_json, record_path
    from ptqbench.report.build import report_from_records
    from ptqbench.report.markdown import table_markdown
    from ptqbench.report.reference import reference_root
    from ptqbench.report.spec import ReportSpec
    from ptqbench.analyze.plots import plot_layer_sqnr
    from ptqbench.tracking import log_sweep_report, numeric_table, runs_frame, sqnr_frame

    spec = ReportSpec.from_mapping(OmegaConf.to_container(config.get("report") or {}, resolve=True))
    if not spec.enabled:
        return None
    results_dir = Path(config.results_dir)
    keys = dict.fromkeys(j["run_key"] for j in jobs if j.get("run_key"))
    records = [r for k in keys if (r := read_json(record_path(results_dir, k))) is not None]
    if not records:
        return None
    sweep_dir = Path(config.hydra.sweep.dir)
    prefix = results_dir / "tables" / spec.name if spec.name else sweep_dir / "report" / "table"
    ref = reference_root()
    report = report_from_records(records, spec, prefix, ref if ref.is_dir() else None)
    notes = "".join(f"\n- {getattr(n, 'text', n)}" for n in report.table.notes)  # the full text on the console
    log.info("table of this sweep (%s.md, .tex, .csv; paper comparison in the .md):\n%s%s",
             prefix, table_markdown(report.table), f"\nNotes:{notes}" if notes else "")
    sqnr_plot = None
    try:
        sqnr_plot = plot_layer_sqnr(records, Path(f"{prefix}_layer_sqnr"))
    except Exception as e:  # a figure must not cost the table
        log.warning("per-layer SQNR figure not drawn: %s: %s", type(e).__name__, e)
    try:
        logger_cfg = OmegaConf.to_container(config.logger, resolve=True)
        cells = report.table.cells_frame()
        tables = {"table": numeric_table(cells), "cells": cells.drop(columns=["shown"], errors="ignore"),
                  "runs": runs_frame(records)}
        sqnr = sqnr_frame(records)
        if not sqnr.empty:
            tables["layer_sqnr"] = sqnr
        if report.comparison is not None:
            tables["vs_paper"] = report.comparison
        images = {p.stem[len(prefix.name) + 1:] or p.stem: str(p) for p in report.plots}
        if sqnr_plot:
            images["layer_sqnr_plot"] = str(sqnr_plot[0])
        group = _group_of(config, sweep_dir)
        run_dir = log_sweep_report(logger_cfg, group, tables, images,
                                   {"report": dataclasses.asdict(spec), "sweep_dir": str(sweep_dir)})
        if run_dir:
            log.info("sweep table logged to the wandb run `summary` of group %s (%s)", group, run_dir)
    except Exception as e:
        log.warning("sweep table not logged to wandb: %s: %s", type(e).__name__, e)
    return prefix
