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

from ptqbench.config import JobSettings
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
    the cores among parallel jobs), the heap's reuse limit (`heap_reuse_mib`) and where reconstruction
    keeps its per-image activations (`recon_spill`). The job's lock
    is held throughout: a concurrent sweep that reaches the same job waits, then skips it if it
    finished."""
    from ptqbench.algorithms.row_store import set_spill
    from ptqbench.heap import set_reuse_limit
    from ptqbench.launch import configure_threads
    from ptqbench.validate import validate_config

    settings = validate_config(cfg)
    results_dir = Path(settings.run.results_dir).expanduser()
    check_writable(results_dir / "runs")
    configure_threads(settings.run.threads, launcher)
    set_reuse_limit(settings.run.heap_reuse_mib)
    set_spill(settings.run.recon_spill)
    with job_lock(results_dir, run_key(cfg)):
        return _run_job(cfg, settings, group)


def _run_job(cfg: DictConfig, settings: JobSettings, group: str = "single") -> dict[str, Any]:
    """`cfg` is kept for what is Hydra's own: the run key and the resolved config the record and
    the tracker store; everything the job reads comes from `settings`."""
    from ptqbench.tasks import get_task

    results_dir = Path(settings.run.results_dir).expanduser()
    key = run_key(cfg)
    path = record_path(results_dir, key)
    if settings.run.resume:
        done = finished(results_dir, key)
        if done is not None:
            log.info("skip %s: already finished (%s); resume=false reruns it", key, path)
            skipped = RunRecord.from_dict(done)
            skipped.skipped = True
            return skipped.to_dict()

    task = get_task(settings.task.name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = RunRecord.start(key, group, resolved, semantic_config(cfg), _now(), git_commit())
    from ptqbench.tracking import make_tracker

    tracker = None
    failed = True
    try:
        log.info("job %s (%s) started; record: %s", key, job_name(settings), path)
        tracker = make_tracker(resolved.get("logger") or {}, group=group, name=job_name(settings), config=resolved)
        record.wandb = tracker.info()
        record.results.update(_execute(settings, results_dir))
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


def _execute(settings: JobSettings, results_dir: Path) -> dict[str, Any]:
    """The work of one job (`ptqbench.pipeline`); returns the record fields it produces."""
    from ptqbench.pipeline import execute

    return execute(settings, results_dir)


def model_label(name: str, arch: Optional[str]) -> str:
    """How a job names its model: `model.name`, and the architecture that ran when `model.arch`
    overrides the zoo's architecture for that name (e.g. `deit_tiny[vit_tiny_patch16_224]`)."""
    from ptqbench.models.zoo import MODELS

    base = MODELS.get(name)
    return name if not arch or arch == (base.arch if base is not None else name) else f"{name}[{arch}]"


def job_name(settings: JobSettings) -> str:
    """model-method-bits[-fullN]-c<calib size>s<calib seed>: the tracker's run name."""
    full = f"-full{settings.quant.bits}" if settings.quant.full else ""
    model = model_label(settings.model.name, getattr(settings.model, "arch", None))
    return (f"{model}-{settings.method_name}-w{settings.bits.w}a{settings.bits.a}{full}"
            f"-c{settings.calib.size}s{settings.calib.seed}")


def _job_title(rec: dict[str, Any]) -> str:
    """The start of a finished job's log line: what ran."""
    c = rec["config"]
    bits = rec["bits"]["name"] + (f" full{rec['protocol']['full_bits']}" if rec.get("protocol", {}).get("full") else "")
    model = model_label(c["model"]["name"], (c["model"] or {}).get("arch"))
    return f"{model} {c['method']['name']} {bits} calib={c['calib']['size']} seed={c['calib']['seed']}"
