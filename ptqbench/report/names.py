"""Every name the report prints, in one place: models and methods (display name and order),
metrics (where a record keeps them, their scale, their reference column), and the mapping from
our short names to the reference CSVs' names.

The report reads run records only; it never imports the method registry, so methods that other
issues add later show up under their short name until they get an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

# Classification models in the papers' column order, then the detectors of the COCO tables.
MODELS: dict[str, str] = {
    "vit_small": "ViT-S",
    "vit_base": "ViT-B",
    "deit_tiny": "DeiT-T",
    "deit_small": "DeiT-S",
    "deit_base": "DeiT-B",
    "swin_tiny": "Swin-T",
    "swin_small": "Swin-S",
    "swin_base": "Swin-B",
    "mask_rcnn_swin_t": "Mask R-CNN Swin-T",
    "mask_rcnn_swin_s": "Mask R-CNN Swin-S",
    "cascade_mask_rcnn_swin_t": "Cascade Mask R-CNN Swin-T",
    "cascade_mask_rcnn_swin_s": "Cascade Mask R-CNN Swin-S",
}

# Our detector names -> the names `coco_ap.csv` uses; every other model has the same name there.
REFERENCE_MODELS: dict[str, str] = {
    "mask_rcnn_swin_t": "mask_rcnn_swin_tiny",
    "mask_rcnn_swin_s": "mask_rcnn_swin_small",
    "cascade_mask_rcnn_swin_t": "cascade_mask_rcnn_swin_tiny",
    "cascade_mask_rcnn_swin_s": "cascade_mask_rcnn_swin_small",
}

# Row order within a bit-width group: baselines first, then by publication.
METHODS: dict[str, str] = {
    "fp": "Full Prec.",
    "minmax": "Min-Max",
    "percentile": "Percentile",
    "ptq4vit": "PTQ4ViT",
    "repq": "RepQ-ViT",
    "gptq": "GPTQ",
    "erq": "ERQ",
    "dopq": "DopQ-ViT",
    "aiq": "AIQViT",
    "tsptq": "TSPTQ-ViT",
}

# A reference row comes from a method's own paper when its `source` starts with this name.
OWN_PAPER: dict[str, str] = {
    "repq": "RepQ-ViT",
    "erq": "ERQ",
    "dopq": "DopQ-ViT",
    "aiq": "AIQViT",
    "tsptq": "TSPTQ-ViT",
    "ptq4vit": "PTQ4ViT",
}

FP_METHOD = "fp"
FP_BITS = 32  # the W/A shown on the FP row

# Size of the evaluation set the papers use, per task: fewer images means our absolute numbers
# are not comparable with theirs.
FULL_EVAL_IMAGES: dict[str, tuple[int, str]] = {
    "classification": (50_000, "ImageNet validation images"),
    "detection": (5_000, "COCO val2017 images"),
}


@dataclass(frozen=True)
class Metric:
    """A metric of the tables: where a record keeps it and how the papers print it."""

    name: str                    # column of the tidy frame
    task: str                    # config.task.name of the records that have it
    record_key: str              # key in record["metrics"]; the FP baseline is "fp_" + record_key
    label: str                   # Markdown / CSV header
    latex: str                   # LaTeX header
    scale: float = 1.0           # record value * scale = printed value (mmdet's AP is a fraction)
    decimals: int = 2
    reference: Optional[tuple[str, str]] = None  # (CSV file, column) of the published numbers


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("top1", "classification", "top1", "Top-1", "Top-1", reference=("imagenet_top1.csv", "value")),
    Metric("top5", "classification", "top5", "Top-5", "Top-5"),
    Metric("box_ap", "detection", "coco/bbox_mAP", "box AP", r"AP$^{\mathrm{box}}$", scale=100.0, decimals=1,
           reference=("coco_ap.csv", "box_ap")),
    Metric("mask_ap", "detection", "coco/segm_mAP", "mask AP", r"AP$^{\mathrm{mask}}$", scale=100.0, decimals=1,
           reference=("coco_ap.csv", "mask_ap")),
    Metric("box_ap50", "detection", "coco/bbox_mAP_50", "box AP50", r"AP$^{\mathrm{box}}_{50}$", scale=100.0,
           decimals=1),
)}

# What a table shows when no metric is asked for.
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1",),
    "detection": ("box_ap", "mask_ap"),
}


def model_label(name: str) -> str:
    return MODELS.get(name, name)


def method_label(name: str) -> str:
    return METHODS.get(name, name)


def bits_label(w: int, a: int) -> str:
    """`4/4`, as the papers' W/A column prints it."""
    return f"{w}/{a}"


def ordered(names: Iterable[str], order: Iterable[str]) -> list[str]:
    """`names` (deduplicated) in the order of `order`, unknown names after, alphabetically."""
    rank = {n: i for i, n in enumerate(order)}
    uniq = set(names)
    return sorted(uniq, key=lambda n: (rank.get(n, len(rank)), n))


def reference_model(name: str) -> str:
    return REFERENCE_MODELS.get(name, name)
