"""Run records: one JSON file per job, keyed by a hash of the job's semantic config.

The key covers what changes a result (model and weights choice, method and its options, bits,
calibration size/seed/split, evaluation data, task, seed, record schema, and the fully quantized
mode's group `quant` when `quant.full` is true; with it off the group is left out, so the keys of
earlier records stay valid) and nothing that does
not (loggers, loader workers, batch size, output folders). Files are written atomically
(temp file + os.replace) so a killed job never leaves a half-written record.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

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


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON object at `path`, or None if missing or unreadable (a corrupt file is reported and
    treated as missing, so the job reruns instead of the sweep dying)."""
    try:
        with open(path) as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        print(f"[ptqbench] ignoring unreadable record {path}: {e}")
        return None


def record_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / "runs" / f"{key}.json"


def finished(results_dir: Path, key: str) -> Optional[dict[str, Any]]:
    """The record of a job that already finished successfully, else None."""
    rec = read_json(record_path(results_dir, key))
    return rec if rec and rec.get("status") == STATUS_OK and rec.get("run_key") == key else None


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record under `<results_dir>/runs`."""
    runs = Path(results_dir) / "runs"
    return [r for p in sorted(runs.glob("*.json")) if (r := read_json(p)) is not None]
