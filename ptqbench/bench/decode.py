"""The data path alone: images/s of decoding the evaluation images (JPEG decode + resize + crop +
ToTensor + Normalize, what every job did before the decoded cache) against reading them from the
decoded uint8 array (`ptqbench.data.decoded`), through the same DataLoader settings.

`synthetic` adds a random uint8 array of that many 224 x 224 images (the size of the 50k
ImageNet validation set at DeiT's resolution) so the full-size read speed can be measured
without 50k real files; it is written to a temp folder first and deleted after.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

DEIT_DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                    "std": (0.229, 0.224, 0.225), "crop_pct": 0.9, "crop_mode": "center"}  # timm's for deit_tiny


def _images_per_s(loader: Any) -> tuple[float, int, float]:
    """(images/s, images, seconds) of one pass over `loader` (the float batches are only counted)."""
    n = 0
    t0 = time.perf_counter()
    for images, _ in loader:
        n += images.shape[0]
    secs = time.perf_counter() - t0
    return n / secs, n, secs


def _drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the cached pages of `path` (written and synced first)."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def decode_speed(root: Optional[str], images: int, batch: int, workers: int, synthetic: int) -> dict[str, Any]:
    """One cell: decode vs decoded-array read on `images` real evaluation images (0: all of the
    split), and the read speed of a `synthetic`-image random array (0: skipped)."""
    import timm.data

    from ptqbench.cache import ContentCache
    from ptqbench.data import ImageNetFolder, eval_subset, files_signature, make_loader, resolve_root
    from ptqbench.data.decoded import DecodedBatches, decoded_images, split_transform
    from ptqbench.profiling import rss_mb

    transform = timm.data.create_transform(**DEIT_DATA_CONFIG)
    split, why = split_transform(transform)
    assert split is not None, why
    val = eval_subset(ImageNetFolder(resolve_root(root), "val", transform), images or None)
    out: dict[str, Any] = {"images": len(val), "batch": batch, "workers": workers, "threads": torch.get_num_threads()}
    tmp = Path(tempfile.mkdtemp(prefix="ptqbench-decode-bench-"))
    try:
        cache = ContentCache(tmp / "cache")
        out["decode_img_s"], _, out["decode_s"] = _images_per_s(make_loader(val, batch, workers))
        t0 = time.perf_counter()
        decoded, fields = decoded_images(val, split, files_signature(val), cache, batch, workers)
        assert decoded is not None and fields["status"] == "built", fields
        out["build_s"] = time.perf_counter() - t0
        rss = rss_mb()
        out["read_img_s"], _, out["read_s"] = _images_per_s(make_loader(decoded, None, workers))
        # what a pass leaves resident in the process that read it (with 0 workers, the job's own)
        out["read_rss_growth_mb"] = rss_mb() - rss
        out["speedup"] = out["read_img_s"] / out["decode_img_s"]
        if synthetic:
            path = tmp / "synthetic.npy"
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(synthetic, 3, 224, 224))
            for lo in range(0, synthetic, 1000):  # in chunks: the full array does not fit in every memory
                hi = min(synthetic, lo + 1000)
                array[lo:hi] = rng.integers(0, 256, (hi - lo, 3, 224, 224), dtype=np.uint8)
            array.flush()
            del array
            out["synthetic_write_s"] = time.perf_counter() - t0
            out["synthetic_images"] = synthetic
            out["synthetic_gib"] = path.stat().st_size / 2**30
            _drop_page_cache(path)  # the first pass reads from disk, the second from memory where it fits
            for phase in ("cold", "warm"):
                ds = DecodedBatches(path, [0] * synthetic, batch, split)
                rss = rss_mb()
                out[f"synthetic_{phase}_img_s"], _, out[f"synthetic_{phase}_s"] = _images_per_s(make_loader(ds, None, workers))
                out[f"synthetic_{phase}_rss_growth_mb"] = rss_mb() - rss
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}
