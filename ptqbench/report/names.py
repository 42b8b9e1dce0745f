"""Every name the report prints, in one place: models and methods (display name and order),
metrics (where a record keeps them, their scale, their reference column), and the mapping from
our short names to the reference CSVs' names.

The report reads run records only; it never imports the method registry, so methods that other
issues add later show up under their short name until they get an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

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

# Row order within a bit-width group: baselines first, then by publication. Methods we only know
# from the papers (the published rows, `--with-published`) are here too, for their display names.
METHODS: dict[str, str] = {
    "fp": "Full Prec.",
    "minmax": "Min-Max",
    "percentile": "Percentile",
    "adaround": "AdaRound",
    "brecq": "BRECQ",
    "qdrop": "QDrop",
    "fq_vit": "FQ-ViT",
    "ptq4vit": "PTQ4ViT",
    "apq_vit": "APQ-ViT",
    "pd_quant": "PD-Quant",
    "repq": "RepQ-ViT",
    "gptq": "GPTQ",
    "ias_vit": "I&S-ViT",
    "erq_icml": "ERQ (ICML)",
    "erq": "ERQ",
    "oas_vit": "OAS-ViT",
    "oasq": "OASQ",
    "igq_vit": "IGQ-ViT",
    "adalog": "AdaLog",
    "mptq_vit": "MPTQ-ViT",
    "dopq": "DopQ-ViT",
    "aiq": "AIQViT",
    "aphq_vit": "APHQ-ViT",
    "tsptq": "TSPTQ-ViT",
}

# BibTeX keys the LaTeX table cites after a method's name (`RepQ-ViT~\cite{li2023repq}`): the
# authorYEARword keys Google Scholar exports. Override per method with `cite: {repq: mykey}` /
# `--cite repq=mykey`; an empty key drops the citation. Baselines have none.
CITATIONS: dict[str, str] = {
    "adaround": "nagel2020adaround",
    "brecq": "li2021brecq",
    "qdrop": "wei2022qdrop",
    "fq_vit": "lin2022fqvit",
    "ptq4vit": "yuan2022ptq4vit",
    "apq_vit": "ding2022apqvit",
    "pd_quant": "liu2023pdquant",
    "repq": "li2023repq",
    "gptq": "frantar2023gptq",
    "ias_vit": "zhong2023isvit",
    "erq_icml": "zhong2024erq",
    "erq": "zhong2025erq",
    "oas_vit": "ma2024oasvit",
    "igq_vit": "moon2024igqvit",
    "adalog": "wu2024adalog",
    "mptq_vit": "tai2024mptq",
    "dopq": "yang2024dopq",
    "aiq": "jiang2025aiqvit",
    "aphq_vit": "wu2025aphqvit",
    "tsptq": "tai2023tsptq",
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


# One look per method in every plot: colour (Okabe-Ito, colour-blind safe), marker and line style,
# so a method is recognisable across figures and in grayscale (markers and dashes differ even where
# two colours print as the same gray). Methods without an entry get one from FALLBACK_STYLES.
STYLES: dict[str, tuple[str, str, Any]] = {
    "minmax": ("#999999", "v", ":"),
    "percentile": ("#56B4E9", "^", "-."),
    "ptq4vit": ("#009E73", "D", (0, (6, 1.5))),
    "repq": ("#0072B2", "o", "-"),
    "gptq": ("#E69F00", "s", "--"),
    "erq": ("#D55E00", "P", (0, (5, 1.5, 1, 1.5))),
    "dopq": ("#CC79A7", "X", (0, (1, 1))),
    "aiq": ("#000000", "*", (0, (6, 2, 1, 2, 1, 2))),
    "tsptq": ("#F0E442", "h", (0, (3, 3))),
}
FALLBACK_STYLES: tuple[tuple[str, str, Any], ...] = (
    ("#7f3b08", "<", "-"), ("#2d004b", ">", "--"), ("#543005", "p", "-."), ("#003c30", "d", ":"),
    ("#8c510a", "8", "-"), ("#40004b", "H", "--"),
)


def method_style(name: str) -> tuple[str, str, Any]:
    """(colour, marker, line style) of a method, the same in every plot and every run of the report."""
    if name in STYLES:
        return STYLES[name]
    return FALLBACK_STYLES[sum(name.encode()) % len(FALLBACK_STYLES)]


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
