"""Run records: one JSON file per job, keyed by a hash of the job's semantic config.

The key covers what changes a result (model and weights choice, method and its options, bits,
calibration size/seed/split, evaluation data, task, seed, record schema, and the fully quantized
mode's group `quant` when `quant.full` is true; with it off the group is left out, so the keys of
earlier records stay valid) and nothing that does
not (loggers, loader workers, batch size, output folders). Files are written atomically
(temp file + os.replace) so a killed job never leaves a half-written record; a record that is
still unreadable (a truncated copy, a full disk) is moved aside to `<key>.json.corrupt` when its
job looks for it, so the job reruns. `job_lock` is held while a job runs, so two sweeps over one
results folder never run the same job at once (the OS releases it when its process dies).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("ptqbench")

SCHEMA_VERSION = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Keys of each config group that do not change a result.
_NON_SEMANTIC = {
    "data": {"batch_size", "workers"},
    "model": {"weights_dir", "allow_download", "unsafe_load"},
    "calib": set(),
}


def semantic_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that identifies a result."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out: dict[str, Any] = {"schema": SCHEMA_VERSION, "seed": c.get("seed")}
    for group in ("model", "method", "bits", "calib", "data", "task"):
        val = c.get(group) or {}
        drop = _NON_SEMANTIC.get(group, set())
        out[group] = {k: v for k, v in sorted(val.items()) if k not in drop} if isinstance(val, dict) else val
    quant = c.get("quant")
    if isinstance(quant, dict) and quant.get("full"):  # off: keys stay those of the records before it existed
        out["quant"] = dict(sorted(quant.items()))
    return out


def run_key(cfg: DictConfig | Mapping[str, Any]) -> str:
    """Stable 16-hex-digit id of a job."""
    blob = json.dumps(semantic_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record under `<results_dir>/runs`."""
    runs = Path(results_dir) / "runs"
    return [r for p in sorted(runs.glob("*.json")) if (r := read_json(p)) is not None]


def lock_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / "runs" / ".locks" / f"{key}.lock"


@contextlib.contextmanager
def job_lock(results_dir: Path, key: str) -> Iterator[None]:
    """Hold the job's lock file (`runs/.locks/<key>.lock`, an OS lock) while the block runs. If
    another process holds it (a concurrent sweep running the same job), log that and wait for it
    to finish. The OS drops the lock when its holder dies, so a killed sweep never blocks a
    relaunch; the empty lock files left behind are harmless."""
    path = lock_path(results_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("job %s is running in another process (lock %s held); waiting for it", key, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
