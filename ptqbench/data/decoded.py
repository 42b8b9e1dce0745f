"""Decode once: the evaluation images, decoded, resized and cropped by the model's transform, kept
as one uint8 array on disk that every job of a sweep (and concurrent jobs) reads with no decoding.

A timm eval transform is Resize -> CenterCrop (PIL: the JPEG decode and the bicubic resize are
nearly all of the data time) -> ToTensor -> Normalize (cheap arithmetic). The array holds the uint8
pixels after the crop; the loader applies ToTensor's `/255` and Normalize to them as the same tensor
operations, so the images are bit-identical to the transform's output
(tests/data/test_decoded.py). A transform of another shape is not cached: the job decodes its
images as before and logs why.

Entry, in the results folder's content cache (`ptqbench.cache`, same lock and LRU bound):
`<cache.dir>/decoded/<key>.npy` (N x 3 x H x W uint8, read memory-mapped), `<key>.meta.json`
(shape, labels, inputs; written after the array, so it marks a complete entry) and `<key>.lock`
(the first job builds, concurrent jobs wait and read). The key hashes the images (root, split,
id/label/size/mtime of each), the pixel steps and their parameters, the Pillow and torchvision
versions and the source of `ptqbench/data`; mean and std are not in it (applied after).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from filelock import FileLock, Timeout
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from ptqbench.data.imagenet import ImageNetFolder, load_image, make_loader
from ptqbench.errors import DataNotFoundError
from ptqbench.fileio import write_atomic
from ptqbench.hashing import code_version, content_key

log = logging.getLogger("ptqbench")
KIND = "decoded"  # the cache folder of the arrays


# --- the transform, split at ToTensor -----------------------------------------------------------


@dataclass(frozen=True)
class CachedTransform:
    """An eval transform split at its ToTensor step: `pixels` (PIL -> PIL of a fixed size,
    deterministic: what the array stores) and the float conversion applied to the stored pixels
    (ToTensor's division by 255, then Normalize's `mean`/`std` when the transform has one)."""

    pixels: Callable[[Image.Image], Image.Image]
    mean: Any
    std: Any
    key: tuple[str, ...]  # the pixel steps with every parameter: the transform's part of the array key

    def to_float(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., C, H, W) -> float, by the operations torchvision's `to_tensor` and
        `normalize` perform (elementwise, so a batch gives the bits each image would)."""
        x = pixels.to(dtype=torch.get_default_dtype()).div_(255)
        if self.mean is None:
            return x
        mean = torch.as_tensor(self.mean, dtype=x.dtype)
        std = torch.as_tensor(self.std, dtype=x.dtype)
        mean = mean.view(-1, 1, 1) if mean.ndim == 1 else mean
        std = std.view(-1, 1, 1) if std.ndim == 1 else std
        return x.sub_(mean).div_(std)


def _describe(step: Any) -> str:
    params = {k: v for k, v in sorted(vars(step).items()) if not k.startswith("_") and k != "training"}
    return f"{type(step).__module__}.{type(step).__qualname__}({', '.join(f'{k}={v!s}' for k, v in params.items())})"


def _pixel_step_problem(step: Any) -> Optional[str]:
    """Why `step` cannot be cached (None: it is a known deterministic PIL step)."""
    from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio
    from torchvision import transforms as T

    if type(step) in (T.Resize, T.CenterCrop, CenterCropOrPad):
        return None
    if type(step) is ResizeKeepRatio:
        if step.random_scale_prob or step.random_aspect_prob:
            return f"{step!r} rescales at random"
        return None
    return (f"{type(step).__qualname__} is not one of the known deterministic steps (torchvision Resize, CenterCrop; "
            "timm ResizeKeepRatio, CenterCropOrPad)")


def _fixed_size(step: Any) -> bool:
    from timm.data.transforms import CenterCropOrPad
    from torchvision import transforms as T

    if type(step) in (T.CenterCrop, CenterCropOrPad):
        return True
    return type(step) is T.Resize and isinstance(step.size, (tuple, list)) and len(step.size) == 2


def split_transform(transform: Any) -> tuple[Optional[CachedTransform], str]:
    """`transform` split for the decoded cache, or None and the reason it cannot be: it must be a
    torchvision Compose of known deterministic PIL steps ending in a fixed output size, then
    ToTensor (or timm's MaybeToTensor), then at most a Normalize."""
    from timm.data.transforms import MaybeToTensor
    from torchvision import transforms as T

    if type(transform) is not T.Compose:
        return None, f"the transform is a {type(transform).__qualname__}, not a torchvision Compose"
    steps = list(transform.transforms)
    at = next((i for i, s in enumerate(steps) if type(s) in (T.ToTensor, MaybeToTensor)), None)
    if at is None:
        return None, "the transform has no ToTensor step"
    pixel_steps, after = steps[:at], steps[at + 1:]
    for step in pixel_steps:
        problem = _pixel_step_problem(step)
        if problem:
            return None, problem
    if not pixel_steps or not _fixed_size(pixel_steps[-1]):
        return None, "the PIL steps do not end in a fixed image size (a CenterCrop or a Resize to (h, w))"
    if len(after) > 1 or (after and type(after[0]) is not T.Normalize):
        return None, f"after ToTensor it has {', '.join(type(s).__qualname__ for s in after)}; only a Normalize is known"
    norm = after[0] if after else None
    return CachedTransform(T.Compose(pixel_steps), None if norm is None else norm.mean, None if norm is None else norm.std,
                           tuple(_describe(s) for s in pixel_steps)), ""


# --- reading the array --------------------------------------------------------------------------


def _pread_into(fd: int, view: memoryview, at: int) -> int:
    """Read into `view` from byte `at` of `fd` without moving the file offset (which a forked
    loader worker shares with its parent); `os.pread` and a copy where `os.preadv` is missing
    (Python's docs list it for Linux and the BSDs only). Returns the bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], at)
    data = os.pread(fd, view.nbytes, at)
    view[:len(data)] = data
    return len(data)


class ImageArrayFile:
    """A uint8 N x C x H x W `.npy` file read image range by image range with positioned reads
    (`os.preadv`). The open descriptor keeps the data readable if another job evicts the entry
    meanwhile, as a mapping would; but nothing stays mapped, so the pages a pass read do not stay
    in the process's resident memory. Mapped, they did: after a job's FP evaluation read on the
    main process (`data.workers=0`), the whole array stayed resident through calibration and the
    quantized evaluation (190 MB of the job's RSS for the 1300 shared images, 7 GiB for 50000)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            self.shape, self.offset = self._header()
        except BaseException:
            self._file.close()
            raise
        self.image_bytes = math.prod(self.shape[1:])

    def _header(self) -> tuple[tuple[int, ...], int]:
        """(shape, byte offset of the data) of a complete C-ordered uint8 array, else ValueError."""
        version = np.lib.format.read_magic(self._file)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise ValueError(f".npy format version {version}; the decoded cache writes 1.0")
        shape, fortran, dtype = header[version](self._file)
        if fortran or dtype != np.uint8 or len(shape) < 2:
            raise ValueError(f"{'Fortran-ordered ' if fortran else ''}{dtype} array of shape {shape}, expected C-ordered uint8 images")
        offset, size = self._file.tell(), os.fstat(self._file.fileno()).st_size
        if size < offset + math.prod(shape):
            raise ValueError(f"truncated: {size} bytes for a {shape} array after a {offset}-byte header")
        return tuple(shape), offset

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Images lo .. hi-1 as a new (hi - lo) x C x H x W array."""
        out = np.empty((hi - lo, *self.shape[1:]), dtype=np.uint8)
        view, at = memoryview(out.reshape(-1)), self.offset + lo * self.image_bytes
        while view.nbytes:  # a regular file returns short counts only past 2 GiB per call
            n = _pread_into(self._file.fileno(), view, at)
            if n == 0:
                raise DataNotFoundError(f"{self.path} ended before image {hi - 1}: the decoded cache entry was cut short")
            view, at = view[n:], at + n
        return out

    def close(self) -> None:
        self._file.close()


class DecodedBatches(Dataset):
    """The cached pixels as the model's transform would give them, a batch per item: item b is
    (images [B, C, H, W] float, labels [B]) of images b*B .. b*B+B-1 (a DataLoader with
    batch_size=None). Pickling keeps the path and drops the open file, so a spawned worker opens
    the file itself (a forked one shares the descriptor: positioned reads move no file offset)."""

    def __init__(self, path: Path, labels: Sequence[int], batch_size: int, transform: CachedTransform,
                 file: Optional[ImageArrayFile] = None):
        self.path = Path(path)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.transform = transform
        self._file = file

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def file(self) -> ImageArrayFile:
        if self._file is None:
            try:
                self._file = ImageArrayFile(self.path)
            except FileNotFoundError:
                raise DataNotFoundError(
                    f"the decoded evaluation images {self.path} were deleted while this job read them (another job "
                    "evicted them to keep the cache under cache.max_gb). Fix: raise cache.max_gb, or set "
                    "data.decoded_cache=false") from None
        return self._file

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= b < len(self):
            raise IndexError(b)
        lo, hi = b * self.batch_size, min(len(self.labels), (b + 1) * self.batch_size)
        return self.transform.to_float(torch.from_numpy(self.file().read(lo, hi))), self.labels[lo:hi]


# --- building the array -------------------------------------------------------------------------


class _PixelImages(Dataset):
    """(uint8 C x H x W pixels, label) of each sample after the PIL steps: what the build loader's
    workers decode in parallel."""

    def __init__(self, samples: Sequence[tuple[str, int]], pixels: Callable[[Image.Image], Image.Image], size: tuple[int, int]):
        self.samples, self.pixels, self.size = list(samples), pixels, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return pixel_array(self.pixels(load_image(path)), path, self.size), label


def pixel_array(image: Image.Image, path: str, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The uint8 C x H x W tensor of an RGB image (the layout ToTensor gives, so the stored batch
    needs no transpose); a size other than `size` (h, w) is an error naming the image."""
    if image.mode != "RGB":
        raise ValueError(f"{path}: the transform's PIL steps gave a {image.mode} image; the decoded cache stores RGB")
    a = np.asarray(image, dtype=np.uint8)
    if size is not None and a.shape[:2] != tuple(size):
        raise ValueError(f"{path}: the transform gave {a.shape[1]}x{a.shape[0]} pixels, the others {size[1]}x{size[0]}; "
                         "set data.decoded_cache=false for a transform whose output size varies")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _write_array(path: Path, samples: Sequence[tuple[str, int]], transform: CachedTransform, shape: tuple[int, ...],
                 batch_size: int, workers: int) -> None:
    """Decode, transform and append the images batch by batch (never all in memory) to a temp
    file renamed to `path` when complete (`fileio.write_atomic`)."""
    from ptqbench.progress import progress

    loader = make_loader(_PixelImages(samples, transform.pixels, shape[2:]), batch_size, workers)

    def write(f: Any) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        n = 0
        for pixels, _ in progress(loader, desc="decode eval images once", unit="batch"):
            f.write(pixels.numpy().data)
            n += len(pixels)
        if n != shape[0]:
            raise RuntimeError(f"decoded {n} images, expected {shape[0]}")

    write_atomic(path, write)


# --- the cache entry ----------------------------------------------------------------------------


@dataclass
class _Entry:
    data: Path
    meta: Path
    lock: Path


def _read_entry(entry: _Entry, shape: tuple[int, ...], labels: list[int]) -> Optional[ImageArrayFile]:
    """The open array of a complete entry of this shape and these labels; None if there is none.
    A damaged one (truncated, meta without array, other shape) is logged, deleted and rebuilt."""
    if not entry.data.exists() and not entry.meta.exists():
        return None
    try:
        info = json.loads(entry.meta.read_text())
        if tuple(info["shape"]) != shape or info["labels"] != labels:
            raise ValueError(f"its meta describes other images (shape {info['shape']}, expected {shape}, or other labels)")
        array = ImageArrayFile(entry.data)
        if array.shape != shape:
            array.close()
            raise ValueError(f"shape {array.shape}, expected {shape}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("decoded image cache entry %s is corrupted or incomplete (%s: %s); deleting and rebuilding it",
                    entry.data, type(e).__name__, e)
        for p in (entry.data, entry.meta):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return None
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(entry.meta, (now, now))  # LRU: a hit refreshes the entry
    return array


def _folder_samples(images: Dataset) -> tuple[ImageNetFolder, list[tuple[str, int]]]:
    if isinstance(images, Subset):
        return images.dataset, [images.dataset.samples[i] for i in images.indices]
    assert isinstance(images, ImageNetFolder)
    return images, list(images.samples)


def decoded_images(images: Dataset, transform: CachedTransform, signature: str, cache: Any, batch_size: int,
                   workers: int) -> tuple[Optional[DecodedBatches], dict[str, Any]]:
    """The decoded array of `images` (an ImageNetFolder or a Subset of one; `signature` its
    `files_signature`) in `cache` (a `ptqbench.cache.ContentCache`), built now if no job has yet;
    None when it cannot be cached here (too large for cache.max_gb, too little disk, lock timeout:
    logged). Also the record's `decoded_cache` fields."""
    import torchvision

    t0 = time.perf_counter()
    folder, samples = _folder_samples(images)
    first = pixel_array(transform.pixels(load_image(samples[0][0])), samples[0][0])
    shape = (len(samples), *first.shape)
    nbytes = math.prod(shape)
    key = content_key(KIND, str(folder.root), folder.split, signature, list(transform.key),
                      {"pillow": Image.__version__, "torchvision": torchvision.__version__}, code_version("data"))
    fields: dict[str, Any] = {"key": key, "bytes": nbytes}
    d = cache.root / KIND
    entry = _Entry(d / f"{key}.npy", d / f"{key}.meta.json", d / f"{key}.lock")
    if nbytes > cache.max_bytes:
        why = (f"the {len(samples)} decoded images need {nbytes / 2**30:.2f} GiB, over cache.max_gb="
               f"{cache.max_bytes / 2**30:.2f}; raise cache.max_gb to cache them")
        log.info("decoded image cache not used: %s; decoding the images in every evaluation", why)
        return None, {**fields, "status": "off", "reason": why}
    labels = [label for _, label in samples]
    d.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(entry.lock), timeout=cache.lock_timeout):
            array = _read_entry(entry, shape, labels)
            status = "hit"
            if array is None:
                free = shutil.disk_usage(d).free
                if free < nbytes + (64 << 20):
                    why = f"{d} has {free / 2**30:.2f} GiB free, the decoded images need {nbytes / 2**30:.2f} GiB"
                    log.warning("decoded image cache not used: %s; decoding the images in every evaluation", why)
                    return None, {**fields, "status": "off", "reason": why}
                for stale in d.glob(f".{entry.data.name}.*.tmp"):  # a build killed before its rename
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()
                log.info("decoding %d evaluation images once into %s (%.2f GiB)", len(samples), entry.data, nbytes / 2**30)
                _write_array(entry.data, samples, transform, shape, batch_size, workers)
                info = {"key": key, "shape": list(shape), "bytes": entry.data.stat().st_size, "labels": labels,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "inputs": {"root": str(folder.root), "split": folder.split, "files": signature,
                                   "transform": list(transform.key)}}
                write_atomic(entry.meta, lambda f: f.write(json.dumps(info, default=str).encode()))
                array = ImageArrayFile(entry.data)
                status = "built"
    except Timeout:
        why = f"{entry.lock} stayed locked for {cache.lock_timeout:.0f} s"
        log.warning("decoded image cache not used: %s; decoding the images in every evaluation", why)
        return None, {**fields, "status": "off", "reason": why}
    if status == "built":
        cache.evict(keep=entry.data)
    fields.update(status=status, seconds=round(time.perf_counter() - t0, 3))
    log.info("decoded evaluation images: %s (%s, %.1f s)", entry.data, status, fields["seconds"])
    return DecodedBatches(entry.data, labels, batch_size, transform, array), fields


def evaluation_loader(images: Dataset, transform: Any, signature: str, cache: Any, use_decoded: bool,
                      batch_size: int, workers: int) -> tuple[DataLoader, dict[str, Any]]:
    """The loader of the evaluation images: batches read from the decoded array when
    `use_decoded` and the transform and cache allow (else, saying why in the log, the images
    decoded by `transform` as they are read), and the record's `decoded_cache` fields."""
    if not use_decoded:
        return make_loader(images, batch_size, workers), {"status": "off", "reason": "data.decoded_cache=false"}
    if not cache.enabled:
        log.info("decoded image cache not used: cache.enabled=false; decoding the images in every evaluation")
        return make_loader(images, batch_size, workers), {"status": "off", "reason": "cache.enabled=false"}
    split, why = split_transform(transform)
    if split is None:
        log.warning("decoded image cache not used: %s; decoding the images in every evaluation (transform: %r)",
                    why, transform)
        return make_loader(images, batch_size, workers), {"status": "off", "reason": why}
    decoded, fields = decoded_images(images, split, signature, cache, batch_size, workers)
    if decoded is None:
        return make_loader(images, batch_size, workers), fields
    return make_loader(decoded, None, workers), fields
