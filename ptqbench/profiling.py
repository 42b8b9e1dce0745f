"""Wall time and peak memory of a phase (calibration, evaluation) of one job."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import psutil
import torch


def rss_mb(proc: Optional[psutil.Process] = None) -> float:
    """Resident set size of `proc` (default: this process) in MiB."""
    return (proc or psutil.Process()).memory_info().rss / 2**20


def proc_status_mb(field: str) -> Optional[float]:
    """A memory field of this process's `/proc/self/status` (e.g. VmHWM, the peak RSS so far) in
    MiB; None where `/proc` has none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


_open_meters: list["PhaseMeter"] = []  # entered and not exited, outermost first
_peak_before_restart_mb = 0.0  # the highest high-water mark read before a restart


def restart_high_water() -> bool:
    """Restart the kernel's high-water mark of this process's RSS at its current RSS (Linux,
    `/proc/self/clear_refs`); False where it cannot. The mark so far is first folded into
    `process_peak_rss_mb` and into every open meter that restarted it on entry, so a restart
    inside a measured block changes no reading."""
    global _peak_before_restart_mb
    high_water = proc_status_mb("VmHWM")
    if high_water is None:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _peak_before_restart_mb = max(_peak_before_restart_mb, high_water)
    for meter in _open_meters:
        if meter.peak_exact:
            meter.peak_rss_mb = max(meter.peak_rss_mb, high_water)
    return True


def process_peak_rss_mb() -> Optional[float]:
    """The peak RSS of this process so far in MiB (restarts of the high-water mark included);
    None where `/proc` has no high-water mark."""
    high_water = proc_status_mb("VmHWM")
    return None if high_water is None else max(high_water, _peak_before_restart_mb)


class PhaseMeter:
    """Context manager measuring wall seconds and peak memory of the enclosed block.

    CPU: peak resident set size of this process, exact on Linux: on entry the meter restarts the
    kernel's high-water mark (`VmHWM`) at the current RSS (`restart_high_water`), so on exit that
    mark is the block's own peak, spikes between samples included. Without the restart, a block
    that stays below an earlier peak of the process (a job's FP evaluation before its calibration,
    an earlier job of a sweep) could only be sampled, and the samples missed short spikes: a job's
    BRECQ calibration read 947-997 MB sampled against 1074 MB exact (docs/benchmarks.md). Where
    `/proc/self/clear_refs` cannot be written (not Linux, a locked-down /proc) the peak is the
    highest of samples taken every `interval` s, or the mark when the block raised it, and
    `peak_exact` says which. The restart also restarts what `getrusage` and `/usr/bin/time` report
    as the maximum RSS; `process_peak_rss_mb` keeps the whole process's peak.
    CUDA: torch's peak allocated bytes, reset on entry.
    """

    def __init__(self, device: Optional[torch.device] = None, interval: float = 0.05) -> None:
        self.device = device or torch.device("cpu")
        self.interval = interval
        self.seconds = 0.0
        self.start_rss_mb = 0.0  # on entry: peak - start is what the block itself added
        self.peak_rss_mb = 0.0
        self.peak_cuda_mb: Optional[float] = None
        self.peak_exact = False  # the peak is the kernel's high-water mark, not only samples
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self._proc))

    def __enter__(self) -> "PhaseMeter":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss_mb = self.peak_rss_mb = rss_mb(self._proc)
        self.peak_exact = restart_high_water()
        # without a restart, the block's peak is exact only if it raises the mark past this
        self._high_water_on_entry = None if self.peak_exact else proc_status_mb("VmHWM")
        _open_meters.append(self)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        _open_meters.remove(self)
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self._proc))
        high_water = proc_status_mb("VmHWM")
        if high_water is not None and not self.peak_exact and self._high_water_on_entry is not None:
            self.peak_exact = high_water > self._high_water_on_entry  # this block set the process's peak
        if high_water is not None and self.peak_exact:
            self.peak_rss_mb = max(self.peak_rss_mb, high_water)
        if self.device.type == "cuda":
            self.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak_rss_mb, 1),
                             "peak_exact": self.peak_exact, "start_rss_mb": round(self.start_rss_mb, 1)}
        if self.peak_cuda_mb is not None:
            d["peak_cuda_mb"] = round(self.peak_cuda_mb, 1)
        return d
