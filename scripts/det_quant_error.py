"""Relative error of a quantized detector's FPN levels and RPN outputs against the FP detector.

The measurement behind the numbers in docs/detection.md ("Window padding", "Measured"): a random
Mask R-CNN Swin-T (seed 0, score_thr 0), calibrated on 4 coco-tiny train2017 images at 256 x 160
(keep ratio), evaluated on 2 val2017 images at two input sizes: 256 x 160 keep-ratio, whose Swin
feature maps are padded to the window, and exactly 448 x 224, which pads nothing. Each line gives
the smallest and largest relative error over the FPN levels and over the RPN outputs.

    python scripts/det_quant_error.py padding   # repq, quantizers off after quantization
    python scripts/det_quant_error.py w8a8      # minmax vs repq (and its ablations), quantizers on

Needs the det extra and coco-tiny ($PTQBENCH_DATA/coco-tiny).
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

import torch
from mmengine.dataset import pseudo_collate
from torch import nn

from ptqbench.data.coco import build_dataset, calibration_batch, coco_dataset_cfg, test_pipeline
from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.models.detectors import build_detector, detector_entry, load_config, set_test_cfg
from ptqbench.paths import data_root
from ptqbench.quant.calibration import quant_disabled
from ptqbench.tasks.detection import DetectorForward

SIZES = {"256x160 keep ratio (pads)": ((256, 160), True), "448x224 exact (no padding)": ((448, 224), False)}
RUNS: dict[str, list[tuple[dict[str, Any], Bits, bool]]] = {
    "padding": [({"name": "repq", "exact_padding": ex}, bits, True)
                for bits in (Bits(8, 8), Bits(4, 4)) for ex in (False, True)],
    "w8a8": [(opts, Bits(8, 8), False) for opts in (
        {"name": "minmax"}, {"name": "repq"}, {"name": "repq", "reparam": False},
        {"name": "repq", "exact_padding": False})],
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(which: str) -> None:
    if which not in RUNS:
        raise SystemExit(f"usage: python scripts/det_quant_error.py {{{','.join(RUNS)}}}")
    root = data_root() / "coco-tiny"
    cfg = load_config(detector_entry("mask_rcnn_swin_t"))
    set_test_cfg(cfg, 0.0, 20)
    fp = build_detector("mask_rcnn_swin_t", cfg, None, False, False, 0)[0]
    calib, _ = calibration_batch(root, "train2017", test_pipeline(cfg, (256, 160), annotations=False), 4, 0)

    def batch(scale: tuple[int, int], keep_ratio: bool) -> dict[str, Any]:
        pipe = test_pipeline(cfg, scale, annotations=False)
        for step in pipe:
            if step["type"] == "Resize":
                step["keep_ratio"] = keep_ratio
        val = build_dataset(coco_dataset_cfg(root, "val2017", pipe))
        return pseudo_collate([val[0], val[1]])

    inputs = {k: batch(*v) for k, v in SIZES.items()}

    @torch.no_grad()
    def outputs(det: nn.Module, b: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
        feats = det.extract_feat(det.data_preprocessor(b, False)["inputs"])
        cls, reg = det.rpn_head(feats)
        return {"FPN": [f.clone() for f in feats], "RPN": [t.clone() for t in (*cls, *reg)]}

    ref = {k: outputs(fp, b) for k, b in inputs.items()}
    for opts, bits, off in RUNS[which]:
        t0 = time.perf_counter()
        det = copy.deepcopy(fp)
        method = build_method(opts, bits)
        method.quantize(make_quantizable(DetectorForward(det), method.plan()), calib)
        print(f"{opts} {bits.name}, quantizers {'off' if off else 'on'} ({time.perf_counter() - t0:.0f} s)")
        for k, b in inputs.items():
            if off:
                with quant_disabled(det):
                    out = outputs(det, b)
            else:
                out = outputs(det, b)
            errs = {part: [_rel(a, r) for a, r in zip(out[part], ref[k][part])] for part in out}
            print(f"    {k}: " + "; ".join(f"{p} {min(e):.3g}-{max(e):.3g}" for p, e in errs.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
