"""Content-addressed cache shared by the jobs of a sweep.

What a sweep computes again and again is the same for every method and bit-width of a model: the
calibration batch (decoded, transformed images), the FP model's evaluation logits (the FP
baseline), and the FP activations the block-reconstruction engine trains against. Each is stored
once under a key that hashes every input it depends on (weights fingerprint, image ids, transform,
seed, and the source code that produced it), so changing any input is a miss, never a stale hit.

Safety under concurrent jobs (joblib, SLURM arrays, two sweeps on one folder):
- one file lock per entry: the first job computes, the others wait for it and then read;
- writes go to a temp file, are fsynced and renamed into place (readers never see half a file),
  with the umask's permissions, through the records' write path (`ptqbench.fileio`);
- every entry has a sidecar `.json` with the payload's sha256: a truncated or corrupted entry is
  reported, deleted and recomputed;
- the folder is bounded (`cache.max_gb`): after a write, least recently used entries are evicted
  (a hit refreshes an entry's time); entries another job holds are skipped.

Layout: `<cache.dir>/<kind>/<key>.pt` (torch tensors) or `.json` payloads, `<key>.meta.json`
sidecars, `<key>.lock` lock files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from filelock import FileLock, Timeout

from ptqbench.errors import storage_error
from ptqbench.fileio import write_atomic
from ptqbench.hashing import code_version, content_key, file_sha256, tensors_key

log = logging.getLogger("ptqbench")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evicted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(hits=self.hits, misses=self.misses, corrupt=self.corrupt, evicted=self.evicted)


class ContentCache:
    """Get-or-compute store of tensors (`torch.save` dicts) and JSON objects; see the module
    docstring. `enabled=False` computes every time and stores nothing."""

    def __init__(self, root: Path, max_bytes: int = 20 << 30, enabled: bool = True, lock_timeout: float = 6 * 3600):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.enabled = enabled
        self.lock_timeout = lock_timeout
        self.stats = CacheStats()

    def _paths(self, kind: str, key: str, fmt: str) -> tuple[Path, Path, Path]:
        d = self.root / kind
        return d / f"{key}.{fmt}", d / f"{key}.meta.json", d / f"{key}.lock"

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], Any], fmt: str = "pt",
                       describe: Optional[dict[str, Any]] = None) -> Any:
        """The payload cached under (kind, key), else `compute()`, stored. `fmt`: "pt" for dicts
        of tensors (and plain values), "json" for JSON objects."""
        if fmt not in ("pt", "json"):
            raise ValueError(f"cache format {fmt!r}; use 'pt' or 'json'")
        if not self.enabled:
            return compute()
        data, meta, lock = self._paths(kind, key, fmt)
        try:
            data.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(data.parent, e, "create the cache folder") from e
        try:
            with FileLock(str(lock), timeout=self.lock_timeout):
                hit = self._read(data, meta, fmt)
                if hit is not None:
                    self.stats.hits += 1
                    return hit
                self.stats.misses += 1
                value = compute()
                self._write(data, meta, fmt, value, key, describe)
        except Timeout:
            log.warning("cache entry %s stayed locked for %.0f s; computing without the cache", data, self.lock_timeout)
            return compute()
        self.evict(keep=data)
        return value

    def invalidate(self, kind: str, key: str, fmt: str = "pt") -> None:
        """Delete one entry (an entry that loaded but does not hold what its reader needs)."""
        data, meta, lock = self._paths(kind, key, fmt)
        with FileLock(str(lock), timeout=self.lock_timeout):
            for p in (meta, data):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _read(self, data: Path, meta: Path, fmt: str) -> Any:
        if not data.exists() and not meta.exists():
            return None
        try:
            info = json.loads(meta.read_text())
            if file_sha256(data) != info["sha256"]:
                raise ValueError("sha256 mismatch")
            if fmt == "json":
                value = json.loads(data.read_text())
            else:
                value = torch.load(data, map_location="cpu", weights_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as e:
            self.stats.corrupt += 1
            log.warning("cache entry %s is corrupted or incomplete (%s: %s); deleting and recomputing it",
                        data, type(e).__name__, e)
            for p in (data, meta):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            return None
        now = time.time()
        with contextlib.suppress(OSError):
            os.utime(meta, (now, now))  # LRU: a hit refreshes the entry
        return value

    def _write(self, data: Path, meta: Path, fmt: str, value: Any, key: str, describe: Optional[dict[str, Any]]) -> None:
        if fmt == "json":
            write_atomic(data, lambda f: f.write(json.dumps(value, sort_keys=True, default=str).encode()))
        else:
            write_atomic(data, lambda f: torch.save(value, f))
        info = {"key": key, "sha256": file_sha256(data), "bytes": data.stat().st_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "inputs": describe or {}}
        write_atomic(meta, lambda f: f.write(json.dumps(info, indent=1, default=str).encode()))

    def entries(self) -> list[tuple[float, int, Path, Path, Path]]:
        """(last used, bytes, data, meta, lock) of every complete entry."""
        out = []
        for meta in self.root.glob("*/*.meta.json"):
            key = meta.name[: -len(".meta.json")]
            for data in meta.parent.glob(f"{key}.*"):
                if data.suffix in (".pt", ".json", ".npy") and not data.name.endswith(".meta.json"):
                    with contextlib.suppress(FileNotFoundError):
                        out.append((meta.stat().st_mtime, data.stat().st_size, data, meta, meta.parent / f"{key}.lock"))
        return out

    def size_bytes(self) -> int:
        return sum(e[1] for e in self.entries())

    def evict(self, keep: Optional[Path] = None) -> int:
        """Delete least recently used entries until the cache fits `max_bytes`; returns how many."""
        entries = sorted(self.entries(), key=lambda e: e[0])
        total = sum(e[1] for e in entries)
        n = 0
        for _, size, data, meta, lock in entries:
            if total <= self.max_bytes:
                break
            if data == keep:
                continue
            try:
                with FileLock(str(lock), timeout=0):  # in use by another job: leave it
                    for p in (meta, data):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
            except Timeout:
                continue
            total -= size
            n += 1
        if n:
            self.stats.evicted += n
            log.info("cache %s: evicted %d least recently used entries to stay under %.2f GB", self.root, n,
                     self.max_bytes / 2**30)
        return n


def cache_from_config(cfg: Any, results_dir: Path) -> ContentCache:
    """The cache a job's config asks for (`cache.enabled`, `cache.dir`, `cache.max_gb`)."""
    from ptqbench.errors import ConfigError

    c = cfg.get("cache") if cfg is not None else None
    c = c or {}
    enabled = bool(c.get("enabled", True))
    root = Path(c.get("dir") or results_dir / "cache").expanduser()
    max_gb = c.get("max_gb", 20)
    if not isinstance(max_gb, (int, float)) or max_gb <= 0:
        raise ConfigError(f"cache.max_gb={max_gb!r}; use a positive number of GiB (or cache.enabled=false)")
    if enabled:  # a read-only or full cache.dir fails here, before the work it would cache
        from ptqbench.fileio import check_writable

        check_writable(root)
    return ContentCache(root, int(float(max_gb) * 2**30), enabled)


# --- FP activations: the reconstruction engine asks, the job decides whether a cache answers ---

def module_state_key(model: torch.nn.Module) -> str:
    """Hash of the tensors that define `model`'s FP function: parameters and buffers outside
    quantizers (quantizer state does not change the output while quantization is disabled)."""
    from ptqbench.quant.base import Quantizer

    skip = {f"{n}." for n, m in model.named_modules() if isinstance(m, Quantizer)}
    return tensors_key((name, t) for name, t in [*model.named_parameters(), *model.named_buffers()]
                       if not any(name.startswith(s) for s in skip))


@dataclass
class ActivationStore:
    """Cache of FP unit outputs on the current job's calibration batch. `calib_key` identifies the
    batch (images, transform); each entry's key adds the model's FP state (`module_state_key`), so
    jobs whose models compute the same FP function before reconstruction (reruns, sweeps over
    reconstruction knobs such as iterations, learning rates, curriculum) share the targets, and a
    reparameterization that changed the weights is a different entry, never a stale hit."""

    cache: ContentCache
    calib_key: str

    def unit_output(self, state_key: str, index: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = content_key(self.calib_key, state_key, index, code_version("models", "quant"))
        out = self.cache.get_or_compute("fp_activations", key, lambda: {"output": compute()},
                                        describe={"calib_key": self.calib_key, "model_state": state_key, "unit": index})
        return out["output"]

    def unit_outputs(self, model: torch.nn.Module) -> Callable[[int, Callable[[], torch.Tensor]], torch.Tensor]:
        """`(index, compute) -> FP output of unit index` for `model` in its current FP state (the state
        key is taken now, before an algorithm starts changing the model)."""
        state_key = module_state_key(model)
        return lambda index, compute: self.unit_output(state_key, index, compute)
