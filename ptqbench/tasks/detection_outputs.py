"""A quantized detector's distance to the FP detector, part by part, on inputs fixed by the FP one.

With random weights (no detector checkpoint offline) the final detections are unstable: a tiny
change of a score reorders the boxes, NMS keeps others, and matched-detection distances mean
little. What is stable is each part's output on the same input: the FPN levels and the RPN maps of
the same image, and the RoI box and mask heads on the *FP detector's* proposals (so both detectors
score the same regions). `distances` compares those; tests and scripts/det_methods.py use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PARTS = ("fpn", "rpn", "roi_box", "roi_mask")


def fixed_rois(fp_detector: nn.Module, batch: dict[str, Any], per_image: int) -> torch.Tensor:
    """The FP detector's top `per_image` RPN proposals of each image, as RoIs [n, 5]."""
    from mmdet.structures.bbox import bbox2roi

    with torch.no_grad():
        data = fp_detector.data_preprocessor(batch, False)
        feats = fp_detector.extract_feat(data["inputs"])
        proposals = fp_detector.rpn_head.predict(feats, data["data_samples"], rescale=False)
    return bbox2roi([p.bboxes[:per_image] for p in proposals])


@torch.no_grad()
def part_outputs(detector: nn.Module, batch: dict[str, Any], rois: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """FPN levels, RPN objectness and box maps, and the RoI heads' class scores, box deltas and
    mask logits on `rois` (Mask R-CNN's single-stage RoI head; Cascade's first stage)."""
    data = detector.data_preprocessor(batch, False)
    feats = detector.extract_feat(data["inputs"])
    cls, reg = detector.rpn_head(feats)
    head = detector.roi_head
    stage = {"stage": 0} if hasattr(head, "num_stages") else {}  # CascadeRoIHead takes the stage index
    box = head._bbox_forward(**stage, x=feats, rois=rois)
    mask = head._mask_forward(**stage, x=feats, rois=rois)
    return {"fpn": [f.clone() for f in feats], "rpn": [t.clone() for t in (*cls, *reg)],
            "roi_box": [box["cls_score"].clone(), box["bbox_pred"].clone()], "roi_mask": [mask["mask_preds"].clone()]}


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of `out` against `ref`, in dB (higher = closer)."""
    noise = (out - ref).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def distances(q: dict[str, list[torch.Tensor]], fp: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Per part, the worst (lowest) SQNR in dB over its tensors."""
    return {part: min(sqnr_db(a, b) for a, b in zip(q[part], fp[part])) for part in PARTS}
