"""Datasets: ImageNet folders (classification); COCO comes with the detection task; the one seeded
sampler every calibration draw and evaluation subset uses."""

from ptqbench.data.imagenet import (
    ImageNetFolder, calibration_batch, calibration_indices, eval_subset, files_signature, load_synsets, make_loader, resolve_root, subset_ids,
)
from ptqbench.data.sampling import seeded_subset

__all__ = ["ImageNetFolder", "calibration_batch", "calibration_indices", "eval_subset", "files_signature", "load_synsets", "make_loader", "resolve_root", "seeded_subset", "subset_ids"]
