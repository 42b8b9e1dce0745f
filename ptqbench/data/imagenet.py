"""ImageNet in folder layout: `<root>/<split>/<synset>/<image>`.

Class indices come from the standard 1000-synset order (`<root>/synsets.txt`, one synset per
line, index = line number; else the sorted synset folders of a split that has all 1000), never
from the folders a partial split happens to contain: torchvision's ImageFolder would renumber
the 725 classes of a partial val split 0..724 and score garbage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from ptqbench.data.sampling import seeded_subset
from ptqbench.errors import CorruptDataError, DataNotFoundError
from ptqbench.hashing import sha256_hex

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
NUM_CLASSES = 1000
EVAL_SUBSET_SEED = 0  # one subset for every run, whatever its seed: methods compare on identical images


def load_synsets(root: Path) -> list[str]:
    """The 1000 synsets in standard class-index order."""
    f = root / "synsets.txt"
    if f.is_file():
        syn = [ln.split()[0] for ln in f.read_text().splitlines() if ln.strip()]
    else:
        syn = []
        for split in ("train", "val"):
            d = root / split
            if d.is_dir():
                folders = sorted(p.name for p in d.iterdir() if p.is_dir())
                if len(folders) == NUM_CLASSES:
                    syn = folders
                    break
    if len(syn) != NUM_CLASSES or len(set(syn)) != NUM_CLASSES:
        raise DataNotFoundError(
            f"cannot determine the 1000-class order under {root}: put a synsets.txt there (the 1000 "
            "synsets in standard order, one per line), or keep a split with all 1000 class folders"
        )
    return syn


class ImageNetFolder(Dataset):
    """One split of an ImageNet folder tree, labelled by the standard synset order."""

    def __init__(self, root: Path, split: str, transform: Optional[Callable] = None, synsets: Optional[Sequence[str]] = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataNotFoundError(
                f"ImageNet split folder {split_dir} does not exist; data.root must hold {split}/<synset>/ folders"
            )
        synsets = list(synsets) if synsets is not None else load_synsets(self.root)
        index = {s: i for i, s in enumerate(synsets)}
        unknown = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in index)
        if unknown:
            raise DataNotFoundError(f"{split_dir} has folders that are not ImageNet synsets: {unknown[:5]}")
        self.samples: list[tuple[str, int]] = []
        for syn in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
            for dirpath, _, files in os.walk(split_dir / syn):
                for fn in sorted(files):
                    if Path(fn).suffix.lower() in IMAGE_SUFFIXES:
                        self.samples.append((os.path.join(dirpath, fn), index[syn]))
        self.samples.sort()
        if not self.samples:
            raise DataNotFoundError(f"no images under {split_dir}")

    def __len__(self) -> int:
        return len(self.samples)

    def image_id(self, i: int) -> str:
        """Stable id of sample i: its path relative to the split folder."""
        return os.path.relpath(self.samples[i][0], self.root / self.split)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        return (self.transform(load_image(path)) if self.transform else load_image(path)), label


def load_image(path: str) -> Image.Image:
    """The RGB image at `path`. A file PIL cannot decode (empty, truncated, not an image) raises a
    CorruptDataError naming it: in a 50k-image folder the path is what the user needs."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        size = os.path.getsize(path) if os.path.exists(path) else None
        what = "is empty (0 bytes)" if size == 0 else f"cannot be decoded ({type(e).__name__}: {e})"
        raise CorruptDataError(
            f"image {path} {what}. Fix: replace it with an intact copy, or delete it (the split then has one "
            "image fewer, which changes the evaluation set), then rerun"
        ) from e


def resolve_root(root: Optional[str]) -> Path:
    """`data.root`, else `$PTQBENCH_DATA/imagenet-mini`; a clear error when it is missing."""
    from ptqbench.paths import resolve_dataset_root

    return resolve_dataset_root(root, "data.root", "imagenet-mini", "ImageNet", "/path/to/imagenet",
                                "a folder with train/ and val/ in ImageFolder layout")


def eval_subset(ds: ImageNetFolder, limit: Optional[int]) -> Dataset:
    """The whole split, or a fixed seeded subset of `limit` images (same subset for every run, so
    quick runs still compare methods on identical images)."""
    if not limit or limit >= len(ds):
        return ds
    return Subset(ds, seeded_subset(len(ds), int(limit), EVAL_SUBSET_SEED))


def subset_ids(ds: Dataset) -> list[str]:
    if isinstance(ds, Subset):
        return [ds.dataset.image_id(i) for i in ds.indices]
    return [ds.image_id(i) for i in range(len(ds))]


def calibration_indices(ds: ImageNetFolder, size: int, seed: int) -> list[int]:
    """The seeded random draw of `size` sample indices a calibration batch is made of."""
    if size < 1 or size > len(ds):
        raise DataNotFoundError(f"calib.size={size} but {ds.root / ds.split} has {len(ds)} images; "
                                f"use calib.size=1..{len(ds)}, or a calibration split with more images")
    return seeded_subset(len(ds), size, seed, sort=False)


def calibration_batch(ds: ImageNetFolder, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """A seeded random draw of `size` images (eval transform), stacked, with their ids."""
    idx = calibration_indices(ds, size, seed)
    images = torch.stack([ds[i][0] for i in idx])
    return images, [ds.image_id(i) for i in idx]


def files_signature(ds: Dataset, indices: Optional[Sequence[int]] = None) -> str:
    """Hash of id, label, byte size and mtime of the samples of `ds` (an ImageNetFolder or a
    Subset of one; `indices` picks samples of an ImageNetFolder): what a cache key needs to notice
    a replaced or relabelled image without reading it."""
    if isinstance(ds, Subset):
        ds, indices = ds.dataset, ds.indices
    assert isinstance(ds, ImageNetFolder)
    lines = []
    for i in range(len(ds)) if indices is None else indices:
        path, label = ds.samples[i]
        st = os.stat(path)
        lines.append(f"{ds.image_id(i)}|{label}|{st.st_size}|{st.st_mtime_ns}\n")
    return sha256_hex("".join(lines), 16)


def make_loader(ds: Dataset, batch_size: Optional[int], workers: int) -> DataLoader:
    """Batches of `ds` in order (`batch_size` None: `ds` yields whole batches); `workers`
    processes started with a standard start method (`ptqbench.launch.worker_context`), so the
    loader also works inside joblib's workers."""
    from ptqbench.launch import worker_context

    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      multiprocessing_context=worker_context() if workers > 0 else None,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
