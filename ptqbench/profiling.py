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


class PhaseMeter:
    """Context manager measuring wall seconds and peak memory of the enclosed block.

    CPU: peak resident set size of this process. When the block raises the kernel's high-water
    mark (`VmHWM`, Linux), the peak is that mark, exact; otherwise (the block stayed below an
    earlier peak of the process, or no `/proc`) it is the highest of samples taken every
    `interval` s by a thread, which can miss a spike shorter than that. The high-water mark is
    read, never reset: resetting it (`/proc/self/clear_refs`) would also reset what
    `/usr/bin/time` reports for the whole process.
    CUDA: torch's peak allocated bytes, reset on entry.
    """

    def __init__(self, device: Optional[torch.device] = None, interval: float = 0.05) -> None:
        self.device = device or torch.device("cpu")
        self.interval = interval
        self.seconds = 0.0
        self.start_rss_mb = 0.0  # on entry: peak - start is what the block itself added
        self.peak_rss_mb = 0.0
        self.peak_cuda_mb: Optional[float] = None
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self._proc))

    def __enter__(self) -> "PhaseMeter":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss_mb = self.peak_rss_mb = rss_mb(self._proc)
        self._high_water_on_entry = proc_status_mb("VmHWM")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self._proc))
        high_water = proc_status_mb("VmHWM")
        if high_water is not None and self._high_water_on_entry is not None and high_water > self._high_water_on_entry:
            self.peak_rss_mb = max(self.peak_rss_mb, high_water)  # this block set the process's peak
        if self.device.type == "cuda":
            self.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak_rss_mb, 1)}
        if self.peak_cuda_mb is not None:
            d["peak_cuda_mb"] = round(self.peak_cuda_mb, 1)
        return d
