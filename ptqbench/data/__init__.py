"""Datasets: ImageNet folders (classification); COCO comes with the detection task."""

from ptqbench.data.imagenet import (
    ImageNetFolder, calibration_batch, calibration_indices, eval_subset, files_signature, load_synsets, make_loader, resolve_root, subset_ids,
)

__all__ = ["ImageNetFolder", "calibration_batch", "calibration_indices", "eval_subset", "files_signature", "load_synsets", "make_loader", "resolve_root", "subset_ids"]
