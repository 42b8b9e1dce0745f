"""COCO in its standard layout, read through mmdet's CocoDataset.

    <coco_root>/annotations/instances_{train2017,val2017}.json
    <coco_root>/{train2017,val2017}/*.jpg

Evaluation uses the detector's own test pipeline (resize to `data.scale`, keep ratio) on the val
split; calibration draws `calib.size` images (seeded) from the *train* split through the same
pipeline, without annotations. Nothing here imports mmdet at module level.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

from ptqbench.data.sampling import seeded_subset
from ptqbench.errors import DataNotFoundError
from ptqbench.paths import resolve_dataset_root

ANN_PATTERN = "annotations/instances_{folder}.json"


def resolve_coco_root(coco_root: Optional[str]) -> Path:
    """`data.coco_root`, else `$PTQBENCH_DATA/coco-tiny`; a clear error when it is missing."""
    return resolve_dataset_root(coco_root, "data.coco_root", "coco-tiny", "COCO", "/path/to/coco",
                                "annotations/instances_val2017.json, val2017/, train2017/")


def split_paths(root: Path, folder: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split folder such as `val2017`; both must exist."""
    ann, images = root / ANN_PATTERN.format(folder=folder), root / folder
    for p, what in ((ann, "annotation file"), (images, "image folder")):
        if not p.exists():
            raise DataNotFoundError(
                f"COCO {what} {p} does not exist; data.coco_root must hold {ANN_PATTERN.format(folder=folder)} "
                f"and {folder}/ (data.splits names the split folders)"
            )
    return ann, images


def test_pipeline(mm_cfg: Any, scale: Sequence[int], annotations: bool) -> list[dict[str, Any]]:
    """The detector config's test pipeline with the Resize scale set to `scale` ([long, short]),
    and LoadAnnotations dropped when the ground truth is not needed (calibration)."""
    pipeline = copy.deepcopy(list(mm_cfg.test_dataloader.dataset.pipeline))
    out = []
    for step in pipeline:
        if step["type"] == "Resize":
            step["scale"] = tuple(int(s) for s in scale)
        if step["type"] == "LoadAnnotations" and not annotations:
            continue
        out.append(step)
    return out


def coco_dataset_cfg(root: Path, folder: str, pipeline: list[dict[str, Any]],
                     indices: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """mmdet CocoDataset config over one split (test mode: every image, none filtered)."""
    ann, _ = split_paths(root, folder)
    cfg: dict[str, Any] = dict(type="CocoDataset", data_root=str(root), ann_file=str(ann.relative_to(root)),
                               data_prefix=dict(img=f"{folder}/"), test_mode=True, pipeline=pipeline)
    if indices is not None:
        cfg["indices"] = list(indices)
    return cfg


def seeded_indices(n: int, size: Optional[int], seed: int) -> Optional[list[int]]:
    """A fixed seeded subset of `size` of `n` indices (sorted), or None for all of them."""
    if size is None or size >= n:
        return None
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return seeded_subset(n, size, seed)


def build_dataset(cfg: dict[str, Any]) -> Any:
    """An mmdet dataset; registers mmdet's modules first so its pipeline steps resolve."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return DATASETS.build(copy.deepcopy(cfg))


def calibration_batch(root: Path, folder: str, pipeline: list[dict[str, Any]], size: int, seed: int) -> tuple[dict[str, Any], list[int]]:
    """`size` seeded training images, collated for `detector.test_step`, and their COCO image ids."""
    from mmengine.dataset import pseudo_collate

    if size < 1:
        raise ValueError(f"calib.size must be >= 1 for a quantized detector, got {size}")
    full = build_dataset(coco_dataset_cfg(root, folder, pipeline))
    if size > len(full):
        raise DataNotFoundError(f"calib.size={size} but {root / folder} has only {len(full)} images; lower calib.size")
    idx = seeded_indices(len(full), size, seed) or list(range(len(full)))
    samples = [full[i] for i in idx]
    ids = [int(s["data_samples"].img_id) for s in samples]
    return pseudo_collate(samples), ids
