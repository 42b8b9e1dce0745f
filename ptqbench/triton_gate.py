"""Keep triton out of processes that have no GPU for it.

timm imports torchvision, which imports `torch._dynamo`, and that import loads triton whenever the
package is installed, as it is with the CUDA build of torch that `constraints.txt` selects. Triton
only compiles kernels for a GPU (CUDA, or Intel's XPU); on a CPU, `torch.compile` generates C++.
On a machine without such a device the library is dead weight in every job: 71 MB of resident
memory here, 65 MB of it file-backed pages, mostly `libtriton.so`'s (`python scripts/import_rss.py`),
about 7 % of a DeiT-T calibration's peak.

Whether a device exists takes torch to answer, and `python -m ptqbench --help` and the config
checks do not import torch, so the question waits for the first import of `torch._dynamo`: torch
itself is imported by then (a submodule's parent comes first). Without a device, `triton` is
marked as not importable (`sys.modules["triton"] = None`), which torch reads as not installed.
With a device, or when the answer fails, nothing changes. Torch caches what it learns about triton
when `torch._dynamo` is imported, so the decision cannot be undone later in the same process.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any, Optional


def _gpu_for_triton() -> bool:
    """True when torch sees a CUDA or XPU device, or when it cannot say."""
    try:
        import torch

        xpu = getattr(torch, "xpu", None)
        return bool(torch.cuda.is_available() or (xpu is not None and xpu.is_available()))
    except Exception:  # leave triton importable when in doubt
        return True


class _DecideBeforeDynamo(importlib.abc.MetaPathFinder):
    """Decides once, as `torch._dynamo` is about to load, then leaves the import to the others."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if fullname == "torch._dynamo":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            if not _gpu_for_triton():
                sys.modules.setdefault("triton", None)
        return None


def triton_state() -> str:
    """What this process holds of triton: "loaded", "blocked" (marked not importable) or "absent"."""
    if "triton" not in sys.modules:
        return "absent"
    return "blocked" if sys.modules["triton"] is None else "loaded"


def keep_triton_out_without_gpu() -> None:
    """Install the decision, unless `torch._dynamo` is already loaded or the decision installed."""
    if "torch._dynamo" in sys.modules or any(isinstance(f, _DecideBeforeDynamo) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DecideBeforeDynamo())
