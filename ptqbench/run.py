"""One job: resolve the config, skip it if already done, quantize, evaluate, record, log.

Before any work the whole config is validated and the results folder checked (a refused job
leaves no record). Once the job runs, whatever happens it leaves a record: `ok` with metrics, or
`failed` with the error and traceback (a relaunch reruns failed jobs and skips finished ones);
a failed or interrupted rerun never replaces an `ok` record (`records.save_record`).
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from ptqbench.errors import add_note, describe
from ptqbench.fileio import check_writable
from ptqbench.paths import git_commit
from ptqbench.record import RunRecord
from ptqbench.records import STATUS_FAILED, STATUS_OK, finished, job_lock, record_path, run_key, save_record, semantic_config

log = logging.getLogger("ptqbench")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_job(cfg: DictConfig, group: str = "single", launcher: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Run (or skip) the job `cfg` describes and return its record. First the whole config is
    validated and the results folder checked (ConfigError / StorageError: nothing run, nothing
    recorded); then the torch threads are set (`launcher`: Hydra's launcher config, which shares
    the cores among parallel jobs). The job's lock is held throughout: a concurrent sweep that
    reaches the same job waits, then skips it if it finished."""
    from ptqbench.launch import configure_threads
    from ptqbench.validate import validate_config

    validate_config(cfg)
    results_dir = Path(cfg.results_dir).expanduser()
    check_writable(results_dir / "runs")
    configure_threads(cfg.get("threads"), launcher)
    with job_lock(results_dir, run_key(cfg)):
        return _run_job(cfg, group)


def _run_job(cfg: DictConfig, group: str = "single") -> dict[str, Any]:
    from ptqbench.tasks import get_task

    results_dir = Path(cfg.results_dir).expanduser()
    key = run_key(cfg)
    path = record_path(results_dir, key)
    if cfg.get("resume", True):
        done = finished(results_dir, key)
        if done is not None:
            log.info("skip %s: already finished (%s); resume=false reruns it", key, path)
            skipped = RunRecord.from_dict(done)
            skipped.skipped = True
            return skipped.to_dict()

    task = get_task(str(cfg.task.name))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = RunRecord.start(key, group, resolved, semantic_config(cfg), _now(), git_commit())
    from ptqbench.tracking import make_tracker

    tracker = None
    failed = True
    try:
        log.info("job %s (%s) started; record: %s", key, _job_name(cfg), path)
        tracker = make_tracker(resolved.get("logger") or {}, group=group, name=_job_name(cfg), config=resolved)
        record.wandb = tracker.info()
        record.results.update(_execute(cfg, results_dir))
        record.status = STATUS_OK
        failed = False
        tracker.log_record(record.to_dict())
    except BaseException as e:
        failed = True  # also when the tracker fails after the work succeeded
        record.status = STATUS_FAILED
        record.error = describe(e, notes=False)
        record.traceback = traceback.format_exc()
        record.finished_at = _now()
        # first: the record matters most
        saved = RunRecord.from_dict(save_record(path, record.to_dict(), interrupted=isinstance(e, KeyboardInterrupt)))
        if saved.status == STATUS_OK:
            value = saved.metrics.get(task.headline)
            add_note(e, f"{path} keeps its finished result of {saved.finished_at}"
                        + (f" ({task.headline_label} {value:.2f})" if isinstance(value, (int, float)) else "")
                        + f"; this attempt is listed under its `attempts` ({len(saved.attempts)} so far)")
        if tracker is not None:
            tracker.log_summary({"status": STATUS_FAILED})
        raise
    finally:
        if not failed:
            record.finished_at = _now()
            record = RunRecord.from_dict(save_record(path, record.to_dict()))
        if tracker is not None:
            tracker.finish(failed)
        if not failed:
            log.info("%s | %s | %s", _job_title(record.to_dict()), task.summary_line(record.to_dict()), path)
    return record.to_dict()


def _execute(cfg: DictConfig, results_dir: Path) -> dict[str, Any]:
    """The work of one job (`ptqbench.pipeline`); returns the record fields it produces."""
    from ptqbench.pipeline import execute

    return execute(cfg, results_dir)


def _job_name(cfg: DictConfig) -> str:
    """model-method-bits[-fullN]-c<calib size>s<calib seed>: the tracker's run name."""
    full = f"-full{cfg.quant.bits}" if cfg.get("quant") is not None and cfg.quant.get("full") else ""
    return f"{cfg.model.name}-{cfg.method.name}-w{cfg.bits.w}a{cfg.bits.a}{full}-c{cfg.calib.size}s{cfg.calib.seed}"


def _job_title(rec: dict[str, Any]) -> str:
    """The start of a finished job's log line: what ran."""
    c = rec["config"]
    bits = rec["bits"]["name"] + (f" full{rec['protocol']['full_bits']}" if rec.get("protocol", {}).get("full") else "")
    return f"{c['model']['name']} {c['method']['name']} {bits} calib={c['calib']['size']} seed={c['calib']['seed']}"
