"""Every name the report prints, in one place: models and methods (display name and order),
metrics (where a record keeps them, their scale, their reference column), and the mapping from
our short names to the reference CSVs' names.

A method's display name, BibTeX key and own-paper source name live with the method
(`@register_method`, ptqbench.methods); this module reads them from the registry and adds the
methods known only from the papers (the published rows). Methods in neither show up under their
short name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ptqbench.methods import METHODS as METHOD_REGISTRY

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

# Methods we only know from the papers (the published rows, `--with-published`): display name and
# the authorYEARword BibTeX key Google Scholar exports. Once one is registered (implemented), its
# own `@register_method` entry is used instead.
PUBLISHED_ONLY: dict[str, tuple[str, str]] = {
    "adaround": ("AdaRound", "nagel2020adaround"),
    "brecq": ("BRECQ", "li2021brecq"),
    "qdrop": ("QDrop", "wei2022qdrop"),
    "fq_vit": ("FQ-ViT", "lin2022fqvit"),
    "apq_vit": ("APQ-ViT", "ding2022apqvit"),
    "pd_quant": ("PD-Quant", "liu2023pdquant"),
    "erq_icml": ("ERQ (ICML)", "zhong2024erq"),
    "oas_vit": ("OAS-ViT", "ma2024oasvit"),
    "oasq": ("OASQ", ""),
    "igq_vit": ("IGQ-ViT", "moon2024igqvit"),
    "adalog": ("AdaLog", "wu2024adalog"),
    "mptq_vit": ("MPTQ-ViT", "tai2024mptq"),
    "aphq": ("APHQ-ViT", "wu2025aphqvit"),
    "fimaq": ("FIMA-Q", "wu2025fimaq"),
}

# Row order within a bit-width group: baselines first, then by publication. Registered methods
# not listed here come after these, alphabetically (`ordered`).
ROW_ORDER: tuple[str, ...] = (
    "fp", "minmax", "percentile", "adaround", "brecq", "qdrop", "fq_vit", "ptq4vit", "apq_vit", "pd_quant",
    "repq", "gptq", "ias", "erq_icml", "erq", "oas_vit", "oasq", "igq_vit", "adalog", "mptq_vit", "dopq",
    "aiq", "aphq", "fimaq", "tsptq",
)


def _method_tables() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(display names in row order, BibTeX keys, own-paper source names) of every method, from
    the registry and PUBLISHED_ONLY."""
    registry = {name: cls.info for name, cls in METHOD_REGISTRY.items()}
    # a method implemented later (registered) is described by its own file, not by this list
    known = {**{n: (d, c) for n, (d, c) in PUBLISHED_ONLY.items()},
             **{n: (i.display, i.cite) for n, i in registry.items()}}
    order = [n for n in ROW_ORDER if n in known] + sorted(set(known) - set(ROW_ORDER))
    methods = {n: known[n][0] for n in order}
    citations = {n: known[n][1] for n in order if known[n][1]}
    own_paper = {n: i.paper for n, i in registry.items() if i.paper is not None}
    return methods, citations, own_paper


# Display names in row order; BibTeX keys the LaTeX table cites after a method's name
# (`RepQ-ViT~\cite{li2023repq}`; override per method with `cite: {repq: mykey}` / `--cite
# repq=mykey`, an empty key drops the citation; baselines have none); and the reference rows from
# a method's own paper: their `source` starts with this name.
METHODS, CITATIONS, OWN_PAPER = _method_tables()

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
