"""Run records: one JSON file per job, keyed by a hash of the job's semantic config.

The key covers what changes a result (model and weights choice, method and its options, bits,
calibration size/seed/split, evaluation data, task, seed, record schema, and the fully quantized
mode's group `quant` when `quant.full` is true; with it off the group is left out, so the `quant`
options of a job that does not use the mode cannot split its key) and nothing that does
not (loggers, loader workers, batch size, output folders). Files are written atomically
(`ptqbench.fileio`: temp file + os.replace, the umask's permissions) so a killed job never leaves
a half-written record; a record that is still unreadable (a truncated copy, a full disk) is moved
aside to `<key>.json.corrupt` when its job looks for it, so the job reruns. `job_lock` is held
while a job runs, so two sweeps over one results folder never run the same job at once (the OS
releases it when its process dies).

A finished result is never replaced by a failure (`save_record`): a rerun that fails or is
interrupted leaves the `ok` record as it was and adds the attempt to its `attempts` list; a
successful rerun (`resume=false`) replaces it and keeps the previous result's metrics there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from filelock import FileLock, Timeout
from omegaconf import DictConfig

from ptqbench.errors import storage_error
from ptqbench.fileio import write_json_atomic
from ptqbench.hashing import json_key

__all__ = ["SCHEMA_VERSION", "STATUS_FAILED", "STATUS_OK", "finished", "job_lock", "load_records", "read_json",
           "record_path", "run_key", "save_record", "semantic_config", "write_json_atomic"]

log = logging.getLogger("ptqbench")

SCHEMA_VERSION = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Keys of each config group that do not change a result.
_NON_SEMANTIC = {
    "data": {"batch_size", "workers", "decoded_cache"},
    "model": {"weights_dir", "allow_download", "unsafe_load"},
    "calib": set(),
}


def semantic_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of the effective config (`cfg` resolved, every block's missing keys filled from its
    schema dataclass: ptqbench.config) that identifies a result, so a new or changed dataclass
    default gives a new key. Every record stores the `semantic_config` it was keyed on, so a record
    keyed under other defaults stays readable and its job reruns under the current key."""
    from ptqbench.config import effective_config

    c = effective_config(cfg)
    out: dict[str, Any] = {"schema": SCHEMA_VERSION, "seed": c.get("seed")}
    for group in ("model", "method", "bits", "calib", "data", "task"):
        val = c.get(group) or {}
        drop = _NON_SEMANTIC.get(group, set())
        out[group] = {k: v for k, v in sorted(val.items()) if k not in drop} if isinstance(val, dict) else val
    quant = c.get("quant")
    if isinstance(quant, dict) and quant.get("full"):  # off: keys stay those of the records before it existed
        out["quant"] = dict(sorted(quant.items()))
    ev = c.get("eval")
    if isinstance(ev, dict) and ev.get("compile"):  # compiled eval may differ in the last float bits (EvalConfig)
        out["eval"] = dict(sorted(ev.items()))
    return out


def run_key(cfg: DictConfig | Mapping[str, Any]) -> str:
    """Stable 16-hex-digit id of a job."""
    return json_key(semantic_config(cfg))


def read_json(path: Path, quarantine: bool = False) -> Optional[dict[str, Any]]:
    """The JSON object at `path`, or None if missing or unreadable. An unreadable file (truncated,
    not JSON, not an object) is logged as a warning naming it and treated as missing, so the job
    reruns instead of the sweep dying; with `quarantine` it is also renamed to `<name>.corrupt`
    (kept for inspection, no longer read)."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
        if isinstance(obj, dict):
            return obj
        problem = f"not a JSON object ({type(obj).__name__})"
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = f"{type(e).__name__}: {e}"
    if not quarantine:
        log.warning("ignoring unreadable record %s (%s)", path, problem)
        return None
    aside = _quarantine(Path(path))
    log.warning("unreadable record %s (%s): moved aside to %s; its job runs again", path, problem, aside)
    return None


def _quarantine(path: Path) -> Optional[Path]:
    """Rename `path` to `<name>.corrupt` (or `<name>.<UTC time>.corrupt` if that exists)."""
    aside = path.with_name(path.name + ".corrupt")
    if aside.exists():
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        aside = path.with_name(f"{path.name}.{stamp}.corrupt")
    try:
        os.replace(path, aside)
        return aside
    except FileNotFoundError:  # another process moved or rewrote it meanwhile
        return None


def record_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / "runs" / f"{key}.json"


def finished(results_dir: Path, key: str, quarantine: bool = True) -> Optional[dict[str, Any]]:
    """The record of a job that already finished successfully, else None. An unreadable record is
    moved aside (`quarantine`, see `read_json`), so the job runs again."""
    rec = read_json(record_path(results_dir, key), quarantine=quarantine)
    return rec if rec and rec.get("status") == STATUS_OK and rec.get("run_key") == key else None


MAX_ATTEMPTS = 20  # attempts kept per record, newest last (a job relaunched forever stays small)
_ATTEMPT_FIELDS = ("started_at", "finished_at", "error", "traceback", "git_commit", "host", "group", "argv")


def _attempt(record: Mapping[str, Any], status: str) -> dict[str, Any]:
    return {"status": status, **{k: record[k] for k in _ATTEMPT_FIELDS if k in record}}


def save_record(path: Path, record: dict[str, Any], interrupted: bool = False) -> dict[str, Any]:
    """Write the outcome `record` of a job (status ok or failed) to `path`, keeping what is there;
    call it under the job's lock. Returns what was written.

    - failed (`interrupted`: Ctrl-C) over an `ok` record: the ok record stays, the attempt is
      appended to its `attempts`;
    - failed over nothing or a failed record: the failed record, with every failed attempt so far;
    - ok: the new record; an `ok` record it replaces (`resume=false`) is kept there as a
      `superseded` attempt with its metrics, so no finished result disappears without a trace.
    """
    previous = read_json(path, quarantine=True)
    if previous is not None and previous.get("run_key") != record.get("run_key"):
        previous = None  # not this job's record (cannot happen with content keys; never merge it)
    attempts = list((previous or {}).get("attempts") or [])
    previous_ok = previous is not None and previous.get("status") == STATUS_OK
    if record.get("status") == STATUS_OK:
        if previous_ok:
            attempts.append({**_attempt(previous, "superseded"), "metrics": previous.get("metrics")})
        out = {**record, "attempts": attempts[-MAX_ATTEMPTS:]} if attempts else record
    else:
        attempts.append(_attempt(record, "interrupted" if interrupted else STATUS_FAILED))
        base = previous if previous_ok else record
        out = {**base, "attempts": attempts[-MAX_ATTEMPTS:]}
    write_json_atomic(path, out)
    return out


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record under `<results_dir>/runs`, in the current schema (`RunRecord.from_dict`)."""
    from ptqbench.record import RunRecord

    runs = Path(results_dir) / "runs"
    return [RunRecord.from_dict(r).to_dict() for p in sorted(runs.glob("*.json")) if (r := read_json(p)) is not None]


def lock_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / "runs" / ".locks" / f"{key}.lock"


@contextlib.contextmanager
def job_lock(results_dir: Path, key: str) -> Iterator[None]:
    """Hold the job's lock file (`runs/.locks/<key>.lock`, an OS lock) while the block runs. If
    another process holds it (a concurrent sweep running the same job), log that and wait for it
    to finish. The OS drops the lock when its holder dies, so a killed sweep never blocks a
    relaunch; the empty lock files left behind are harmless."""
    path = lock_path(results_dir, key)
    lock = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("job %s is running in another process (lock %s held); waiting for it", key, path)
            lock.acquire()
    except OSError as e:
        raise storage_error(path, e, "create the job lock") from e
    try:
        yield
    finally:
        lock.release()
