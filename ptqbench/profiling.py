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


class PhaseMeter:
    """Context manager measuring wall seconds and peak memory of the enclosed block.

    CPU: peak resident set size of this process, sampled every `interval` s by a thread (the
    process-wide ru_maxrss never goes down, so it cannot tell phases or jobs of a sweep apart).
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
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self._proc))
        if self.device.type == "cuda":
            self.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak_rss_mb, 1)}
        if self.peak_cuda_mb is not None:
            d["peak_cuda_mb"] = round(self.peak_cuda_mb, 1)
        return d
